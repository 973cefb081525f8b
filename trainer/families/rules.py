"""Per-family rules the trainer asks by model type; everything else is found from the model's structure."""
from __future__ import annotations

# Why a family's samples cannot be packed several to a row (its attention is not causal over one text, or its
# images enter through inputs that position ids cannot restart). Families not named here pack.
PACKING_REFUSED: dict[str, str] = {
    "llava_onevision": "an image is tiled (anyres) when it is alone in its row and not when it shares it "
                       "(batch_num_images), so its token count depends on the row it is packed into",
}


def packing_problem(model_type: str) -> str | None:
    reason = PACKING_REFUSED.get(model_type)
    return f"{model_type} cannot be packed: {reason}; set data.packing=false" if reason else None
