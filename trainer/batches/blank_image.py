"""One blank image for a micro-batch that has none, so that every rank runs the same modules in every step.

Under ZeRO-3 each module's parameters are all-gathered when it runs, and under ZeRO-2 every trainable
parameter's gradient is reduced: a rank whose micro-batch has no image would skip the vision tower and
projector while its peers run them, and the collectives would disagree (an error on gloo, a hang on NCCL).
The blank image's tokens go where nothing attends to them — padding columns (attention mask 0) of a padded
batch, or a block of its own in a packed row — and carry no label, so the loss and the gradients are what
they are without it, while the vision tower and projector run (and get zero gradients) on every rank.
Mllama's images enter through cross-attention: no real token's `cross_attention_mask` row sees the blank,
so those tokens pass the cross-attention layers unchanged (`trainer.models.mllama_fix`).
"""

from __future__ import annotations

import torch
from PIL import Image

from trainer.chat.tokens import IGNORE_INDEX

# cross_attention_mask: Mllama's (rows, tokens, images, tiles), the tiles each token sees; its images are per row
PER_TOKEN = (
    "input_ids",
    "attention_mask",
    "labels",
    "position_ids",
    "token_type_ids",
    "mm_token_type_ids",
    "cross_attention_mask",
)
BLANK_SIDE = 32  # the processor resizes it to its smallest valid input


class BlankImage:
    """The processor's inputs for one blank image, and where to put them in a batch."""

    def __init__(self, processor, image_text: str):
        blank = Image.new("RGB", (BLANK_SIDE, BLANK_SIDE))
        encoded = processor(text=[image_text], images=[[blank]], add_special_tokens=False, return_tensors="pt")
        self.input_ids = encoded["input_ids"][0]
        self.per_token = {k: v[0] for k, v in encoded.items() if is_per_token(k)}
        self.per_image = {k: v for k, v in encoded.items() if k not in self.per_token}
        self.pad_id = processor.tokenizer.pad_token_id

    def add(
        self, inputs: dict[str, torch.Tensor], packed: bool = False, left: bool | None = None
    ) -> dict[str, torch.Tensor]:
        """`inputs` (a batch without images) with the blank image added. `left`: the batch is left-padded (None: as
        its attention mask shows; InternVL's processor pads left by default)."""
        if any(key in inputs for key in self.per_image):
            raise ValueError("the batch already holds images")
        if packed:
            return {**self.append_block(inputs), **self.image_inputs(inputs["input_ids"].shape[-2], 0)}
        left = padded_left(inputs["attention_mask"]) if left is None else left
        out, row = self.into_padding(self.with_cross_attention(inputs), left)
        return {**out, **self.image_inputs(inputs["input_ids"].shape[0], row)}

    def with_cross_attention(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A batch without images has no cross-attention mask: one where no token sees an image."""
        if "cross_attention_mask" not in self.per_token:
            return inputs
        blank = self.per_token["cross_attention_mask"]
        rows, width = inputs["input_ids"].shape
        return {**inputs, "cross_attention_mask": torch.zeros((rows, width, *blank.shape[1:]), dtype=blank.dtype)}

    def image_inputs(self, rows: int, row: int) -> dict[str, torch.Tensor]:
        """The blank image's per-image inputs; per-row ones (LLaVA-OneVision's images per row) count it in `row`;
        Mllama's are all per row."""
        out = dict(self.per_image)
        if "cross_attention_mask" in self.per_token:  # Mllama: (rows, images, ...); the blank in every row's slot
            out = {key: value.expand(rows, *value.shape[1:]).clone() for key, value in out.items()}
        if "batch_num_images" in out:
            out["batch_num_images"] = torch.zeros(rows, dtype=out["batch_num_images"].dtype)
            out["batch_num_images"][row] = 1
        return out

    def into_padding(self, inputs: dict[str, torch.Tensor], left: bool) -> tuple[dict[str, torch.Tensor], int]:
        """Into the padding of the row with the most of it (right padding: after its tokens; left: at its start),
        widening the batch where no row has enough."""
        mask = inputs["attention_mask"]
        size = len(self.input_ids)
        free = (mask == 0).sum(dim=1)
        row = int(free.argmax())
        widen = max(0, size - int(free[row]))
        start = 0 if left else mask.shape[1] - int(free[row])
        out = {k: pad_columns(v, widen, self.fill(k), left, dim=1) if is_per_token(k) else v for k, v in inputs.items()}
        for key, value in out.items():
            if is_per_token(key):
                value[row, start : start + size] = self.token_values(key, value)
        return out, row

    def append_block(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A packed batch (no attention mask): a block of its own at the end of the first row, its position ids
        restarting, so the block-diagonal attention keeps it apart from every sample."""
        size = len(self.input_ids)
        out = {k: pad_columns(v, size, self.fill(k), left=False) if is_per_token(k) else v for k, v in inputs.items()}
        width = out["input_ids"].shape[-1]
        for key, value in out.items():
            if is_per_token(key):
                value[..., 0, width - size :] = self.token_values(key, value)
        return out

    def token_values(self, key: str, like: torch.Tensor) -> torch.Tensor:
        if key == "input_ids":
            return self.input_ids
        if key == "position_ids":
            return torch.arange(len(self.input_ids), dtype=like.dtype)
        if key in self.per_token and key != "attention_mask":
            return self.per_token[key].to(like.dtype)
        return torch.full((len(self.input_ids),), self.fill(key), dtype=like.dtype)

    def fill(self, key: str) -> int:
        return {"input_ids": self.pad_id, "labels": IGNORE_INDEX}.get(key, 0)


def padded_left(mask: torch.Tensor) -> bool:
    """Whether a padded batch is padded on the left: a row starts with padding (every row has a token)."""
    return bool((mask[:, 0] == 0).any())


def is_per_token(key: str) -> bool:
    return key in PER_TOKEN


def pad_columns(value: torch.Tensor, count: int, fill: int, left: bool, dim: int = -1) -> torch.Tensor:
    """`count` more positions along the token dimension `dim`, filled with `fill`."""
    if not count:
        return value.clone()
    shape = list(value.shape)
    shape[dim] = count
    padding = torch.full(shape, fill, dtype=value.dtype)
    return torch.cat([padding, value] if left else [value, padding], dim=dim)
