"""`inspect`: counts per split, a few samples, and optionally a contact-sheet PNG of the first images."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageOps

from data_shards.index import INDEX_NAME, load_index
from data_shards.sample import Sample
from data_shards.stream import ShardStream, StreamConfig

THUMB = 128
CAPTION_HEIGHT = 28


def split_dirs(path: Path) -> list[Path]:
    if (path / INDEX_NAME).is_file():
        return [path]
    found = sorted(p for p in path.iterdir() if (p / INDEX_NAME).is_file()) if path.is_dir() else []
    if not found:
        raise FileNotFoundError(f"{path}: no {INDEX_NAME} here or in its sub-folders (is it a build output?)")
    return found


def first_samples(split_dir: Path, count: int) -> list[Sample]:
    stream = ShardStream(
        split_dir, config=StreamConfig(shuffle=False, decode=False, on_corrupt="fail"), rank=0, world_size=1
    )
    samples = []
    for sample in stream:
        if len(samples) >= count:
            break
        samples.append(sample)
    return samples


def describe(sample: Sample) -> str:
    turns = " | ".join(f"{t.role}: {t.text}".replace("\n", " ") for t in sample.turns)
    label = f" label={sample.label}" if sample.label is not None else ""
    return f"  [{sample.key}]{label} images={len(sample.images)} {turns[:160]}"


def inspect_shards(path: Path, samples: int = 3, contact_sheet: Path | None = None) -> str:
    lines, shown = [], []
    for split_dir in split_dirs(path):
        index = load_index(split_dir / INDEX_NAME)
        lines.append(
            f"{split_dir.name}: {index['num_samples']} samples, {len(index['shards'])} shards, "
            f"{index['num_bytes'] / 1e6:.1f} MB, source {index['source']['format']}"
        )
        head = first_samples(split_dir, max(samples, 16 if contact_sheet else 0))
        lines += [describe(sample) for sample in head[:samples]]
        shown += head
    if contact_sheet is not None:
        write_contact_sheet(shown, contact_sheet)
        lines.append(f"contact sheet: {contact_sheet}")
    return "\n".join(lines)


def write_contact_sheet(samples: list[Sample], path: Path, columns: int = 8) -> None:
    tiles = [
        (image.decode(), sample.answers()[0] if sample.answers() else "")
        for sample in samples
        for image in sample.images
    ]
    tiles = tiles[:64] or [(Image.new("RGB", (THUMB, THUMB), "white"), "no images")]
    rows = -(-len(tiles) // columns)
    sheet = Image.new("RGB", (columns * THUMB, rows * (THUMB + CAPTION_HEIGHT)), "white")
    draw = ImageDraw.Draw(sheet)
    for number, (image, caption) in enumerate(tiles):
        x, y = number % columns * THUMB, number // columns * (THUMB + CAPTION_HEIGHT)
        thumb = ImageOps.contain(image, (THUMB, THUMB), Image.Resampling.NEAREST)
        sheet.paste(thumb, (x + (THUMB - thumb.width) // 2, y + (THUMB - thumb.height) // 2))
        draw.text((x + 2, y + THUMB + 2), caption[:20], fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
