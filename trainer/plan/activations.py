"""Activation memory of one micro batch, measured by running the model's own code on the meta device.

One decoder layer of the language model runs forward on a meta (batch, tokens, hidden) input under autograd's
saved-tensor hooks; what it saves for backward, parameters excluded and shared storage counted once, is that
layer's activation memory, exact for its architecture, attention implementation, LoRA adapters and dtype.
The other terms are counted from shapes:
- the head, which runs at supervised positions only (`trainer.train.objectives`): the fp32 log-softmax
  cross-entropy keeps (supervised tokens × vocab), and backward holds two more such gradients at its start,
  when every layer's activations are still alive;
- the embeddings, the image features merged into them and the final norm: four (tokens × hidden) tensors;
- backward's working set in a layer: the gradients of its MLP's down-projection input, activation output and
  gate/up outputs and of three hidden-sized tensors live at once, 3 × tokens × (intermediate + hidden);
- gradient checkpointing (non-reentrant, per decoder layer): each layer keeps its input, and backward
  recomputes one layer at a time.
On the meta device SDPA falls back to its math form, which keeps the (tokens x tokens) attention weights, while
real runs use a fused kernel (flash on CPU; flash or memory-efficient on GPUs) that keeps q, k, v, the output and
the log-sum-exp: the trace routes it to the fused CPU kernel's meta form (`FusedAttention`).
A frozen vision tower saves nothing for backward; a trained one is counted like a decoder layer of its own
width per image token (an estimate: its layers are not traced).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

FP32 = 4
HEAD_COPIES = 3  # the saved fp32 log-probabilities and, at backward's start, their gradient and the logits'
EDGE_TENSORS = 4  # token embeddings, the embeddings with image features merged, the final norm's input and output
BACKWARD_BUFFERS = 3  # gradient buffers of each width alive at once in a layer's backward (see the docstring)


@dataclass(frozen=True)
class Activations:
    per_layer: int
    layers: int
    head: int
    edges: int
    checkpointed_layer_input: int
    backward_working: int

    def total(self, checkpointing: bool) -> int:
        kept = self.layers * (self.checkpointed_layer_input if checkpointing else self.per_layer)
        recomputed = self.per_layer if checkpointing else 0
        return kept + recomputed + self.head + self.edges + self.backward_working


class FusedAttention(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        query, key, value = args[:3]
        output, _ = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            query,
            key,
            value,
            kwargs.get("dropout_p", 0.0),
            kwargs.get("is_causal", False),
            attn_mask=kwargs.get("attn_mask"),
            scale=kwargs.get("scale"),
        )
        return output


def decoder_layers(language_model: nn.Module) -> nn.ModuleList:
    for name in ("layers", "h", "blocks"):
        found = getattr(language_model, name, None)
        if isinstance(found, nn.ModuleList) and len(found):
            return found
    raise ValueError(f"{type(language_model).__name__}: no decoder layer list (layers / h / blocks) to trace")


def rotary_embeddings(language_model: nn.Module, hidden: torch.Tensor, batch: int, tokens: int):
    """(cos, sin) for a decoder layer, or None; 3-D positions for multimodal RoPE (Qwen2-VL's mrope)."""
    rotary = getattr(language_model, "rotary_emb", None)
    if rotary is None:
        return None, None
    positions = torch.arange(tokens, device="meta").expand(batch, tokens)
    try:
        return rotary(hidden, positions), positions
    except (RuntimeError, ValueError, IndexError):
        return rotary(hidden, positions.expand(3, batch, tokens)), positions


def saved_bytes(model: nn.Module, run) -> int:
    """Bytes autograd keeps for backward while `run()` executes, parameters excluded, each storage once."""
    parameters = {p.untyped_storage()._cdata for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage._cdata not in parameters:
            storages[storage._cdata] = max(storages.get(storage._cdata, 0), storage.nbytes())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        run()
    return sum(storages.values())


def layer_bytes(model: nn.Module, language_model: nn.Module, batch: int, tokens: int, hidden: int, dtype) -> int:
    layer = decoder_layers(language_model)[0]
    inputs = torch.empty(batch, tokens, hidden, device="meta", dtype=dtype, requires_grad=True)
    position_embeddings, positions = rotary_embeddings(language_model, inputs, batch, tokens)

    def forward():
        with FusedAttention():
            layer(inputs, attention_mask=None, position_embeddings=position_embeddings, position_ids=positions)

    return saved_bytes(model, forward)


def measure(
    model: nn.Module,
    language_model: nn.Module,
    batch: int,
    tokens: int,
    supervised: int,
    hidden: int,
    intermediate: int,
    vocab: int,
    dtype: torch.dtype,
) -> Activations:
    element = torch.empty((), dtype=dtype).element_size()
    per_token_hidden = batch * tokens * hidden * element
    return Activations(
        per_layer=layer_bytes(model, language_model, batch, tokens, hidden, dtype),
        layers=len(decoder_layers(language_model)),
        head=HEAD_COPIES * batch * supervised * vocab * FP32,
        edges=EDGE_TENSORS * per_token_hidden,
        checkpointed_layer_input=per_token_hidden,
        backward_working=BACKWARD_BUFFERS * batch * tokens * (intermediate + hidden) * element,
    )
