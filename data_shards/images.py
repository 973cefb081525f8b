"""Read, check and normalise one image file into bytes a shard can hold.

Clean RGB JPEG/PNG/WebP files pass through byte for byte. Anything merely unusual (CMYK, palette,
16-bit, alpha, grayscale, EXIF rotation, another container format) is normalised to RGB rather
than rejected, and the change is named so the report can count it. Broken files raise
`ImageRejected` with a reason code.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

PASSTHROUGH_FORMATS = {"JPEG": "jpeg", "PNG": "png", "WEBP": "webp"}
DEFAULT_MAX_PIXELS = 64_000_000  # 8000x8000; PIL itself only warns below 89M


class ImageRejected(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ImagePolicy:
    """How images are checked and (optionally) re-encoded at shard time."""

    max_pixels: int = DEFAULT_MAX_PIXELS
    max_side: int | None = None
    jpeg_quality: int = 90
    short_side: int | None = None  # what CLIP-style processors keep: shortest edge resized, then centre-cropped

    def __post_init__(self) -> None:
        if self.max_pixels <= 0:
            raise ValueError(f"max_pixels must be positive, got {self.max_pixels}")
        for name in ("max_side", "short_side"):
            if getattr(self, name) is not None and getattr(self, name) < 8:
                raise ValueError(f"{name} must be at least 8, got {getattr(self, name)}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in 1..100, got {self.jpeg_quality}")

    @property
    def reencodes(self) -> bool:
        return bool(self.max_side or self.short_side)

    def resized(self, width: int, height: int) -> tuple[int, int] | None:
        """The size to store, aspect kept: longest side at most `max_side`, shortest at most `short_side`;
        None when the image is within both (never enlarged)."""
        scale = min(
            1.0,
            self.max_side / max(width, height) if self.max_side else 1.0,
            self.short_side / min(width, height) if self.short_side else 1.0,
        )
        if scale == 1.0:
            return None
        return max(1, round(width * scale)), max(1, round(height * scale))


@dataclass
class PreparedImage:
    data: bytes
    format: str
    width: int
    height: int
    source_sha256: str
    source_format: str  # as PIL names it (JPEG, PNG, TIFF, ...), read from the header the check opens
    source_mode: str  # the source's PIL mode (RGB, L, CMYK, P, I;16, ...), before any normalisation
    changes: list[str] = field(default_factory=list)


def read_bytes(path: Path) -> bytes:
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        raise ImageRejected("missing_image", f"{path} does not exist") from None
    if size == 0:
        raise ImageRejected("zero_byte_image", f"{path} is empty")
    return path.read_bytes()


def prepare_image(path: Path, policy: ImagePolicy) -> PreparedImage:
    """Check and normalise one image; raises ImageRejected with a reason code when it is broken."""
    raw = read_bytes(path)
    image = open_checked(raw, path, policy)
    changes = normalisations_needed(image, policy)
    sha = hashlib.sha256(raw).hexdigest()
    source = (str(image.format), image.mode)
    if not changes:
        return PreparedImage(raw, PASSTHROUGH_FORMATS[image.format], image.width, image.height, sha, *source)
    rgb = to_rgb(image)
    size = policy.resized(*rgb.size)
    if size:
        rgb = rgb.resize(size, Image.Resampling.BICUBIC)
    data, fmt = encode(rgb, image.format, policy)
    return PreparedImage(data, fmt, rgb.width, rgb.height, sha, *source, changes)


def open_checked(raw: bytes, path: Path, policy: ImagePolicy) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw))
            pixels = image.width * image.height
            if pixels > policy.max_pixels:
                raise ImageRejected(
                    "image_too_large", f"{path} has {image.width}x{image.height} pixels > {policy.max_pixels}"
                )
            image.load()
    except ImageRejected:
        raise
    except Image.DecompressionBombError as error:
        raise ImageRejected("image_too_large", f"{path}: {error}") from None
    except OSError as error:
        reason = (
            "truncated_image" if "truncated" in str(error) or "broken data stream" in str(error) else "unreadable_image"
        )
        raise ImageRejected(reason, f"{path}: {error}") from None
    except (ValueError, SyntaxError) as error:
        raise ImageRejected("unreadable_image", f"{path}: {error}") from None
    return image


def normalisations_needed(image: Image.Image, policy: ImagePolicy) -> list[str]:
    changes = []
    if image.format not in PASSTHROUGH_FORMATS:
        changes.append(f"format_{str(image.format).lower()}")
    if image.mode != "RGB":
        changes.append(f"mode_{image.mode.lower().replace(';', '')}")
    if image.getexif().get(0x0112, 1) != 1:
        changes.append("exif_orientation")
    if policy.resized(*image.size):
        changes.append("resized")
    elif policy.reencodes and image.format != "JPEG":
        changes.append("reencoded")
    return changes


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB with EXIF orientation applied; alpha composited on white, 16-bit scaled to 8-bit."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.uint32 if image.mode == "I" else np.uint16)
        scale = 65535 if array.max(initial=0) > 255 else 255
        image = Image.fromarray((array.astype(np.float64) * 255 / scale).round().astype(np.uint8), "L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def encode(image: Image.Image, source_format: str | None, policy: ImagePolicy) -> tuple[bytes, str]:
    """JPEG when re-encoding is asked for or the source was a JPEG; lossless PNG otherwise."""
    buffer = io.BytesIO()
    if policy.reencodes or source_format == "JPEG":
        image.save(buffer, format="JPEG", quality=policy.jpeg_quality if policy.reencodes else 95)
        return buffer.getvalue(), "jpeg"
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue(), "png"
