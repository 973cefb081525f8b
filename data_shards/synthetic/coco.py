"""The coco format: scenes of one to three shapes with their bounding boxes in a COCO annotations file."""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from data_shards.synthetic.drawing import PlacedShape, pick, render
from data_shards.synthetic.files import write_json
from data_shards.synthetic.plan import Plan, SyntheticDataset
from data_shards.synthetic.unusual import UNUSUAL_IMAGES, write_unusual_image
from data_shards.synthetic.vocabulary import BACKGROUNDS, COLORS, SHAPES

COCO_UNUSUAL_KINDS = ("cmyk", "palette", "16bit", "rgba")


def _placed_in_cell(cell_index: int, cell: int, rng: np.random.Generator) -> PlacedShape:
    """A random shape inside one quadrant (cells never overlap, so boxes never do)."""
    extent = int(rng.integers(max(2, cell // 2), max(2, cell * 9 // 10) + 1))
    x = (cell_index % 2) * cell + int(rng.integers(0, cell - extent + 1))
    y = (cell_index // 2) * cell + int(rng.integers(0, cell - extent + 1))
    return PlacedShape(pick(rng, SHAPES), pick(rng, tuple(COLORS)), x, y, extent)


def _coco_scene(plan: Plan) -> tuple[Image.Image, str, list[PlacedShape]]:
    """One to three shapes in distinct quadrants; returns the image, its background and the shapes."""
    rng, size = plan.rng, plan.image_size
    cells = rng.permutation(4)[: int(rng.integers(1, 4))]
    placed = [_placed_in_cell(int(cell), size // 2, rng) for cell in cells]
    background = pick(rng, tuple(BACKGROUNDS))
    return render(placed, background, size, rng), background, placed


class _Coco:
    """Collects COCO images and annotations with running ids."""

    def __init__(self, image_size: int) -> None:
        self.image_size = image_size
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []

    @property
    def next_image_id(self) -> int:
        return len(self.images) + 1

    def add_image(self, file_name: str) -> int:
        image_id = self.next_image_id
        size = self.image_size
        self.images.append({"id": image_id, "file_name": file_name, "width": size, "height": size})
        return image_id

    def annotate(self, image_id: int, category: str, bbox: list[int]) -> None:
        self.annotations.append(
            {
                "id": len(self.annotations) + 1,
                "image_id": image_id,
                "category_id": SHAPES.index(category) + 1,
                "bbox": bbox,
                "area": float(bbox[2] * bbox[3]),
                "iscrowd": 0,
            }
        )

    def to_json(self) -> dict[str, Any]:
        categories = [{"id": number, "name": shape} for number, shape in enumerate(SHAPES, start=1)]
        return {"images": self.images, "annotations": self.annotations, "categories": categories}


def _add_coco_scene(plan: Plan, coco: _Coco, kind: str | None = None, write: bool = True) -> int:
    """Draws and annotates a scene; saves it as JPEG, in the unusual mode `kind`, or not at all (`write=False`)."""
    image, background, placed = _coco_scene(plan)
    stem = f"img{coco.next_image_id:06d}"
    if kind:
        path = write_unusual_image(kind, image, background, plan.images_dir, stem)
        file_name = plan.relative(path)
    else:
        file_name = plan.save(image, stem) if write else f"images/{stem}.jpg"
    image_id = coco.add_image(file_name)
    for shape in placed:
        coco.annotate(image_id, shape.shape, shape.bbox)
    return image_id


def write_coco(plan: Plan) -> SyntheticDataset:
    """Good images first, then unusual ones, then defects; exif rotation is left out as it would move the boxes."""
    coco = _Coco(plan.image_size)
    for _ in range(plan.n):
        _add_coco_scene(plan, coco)
    kinds = COCO_UNUSUAL_KINDS if plan.unusual else ()
    unusual = {f"img{_add_coco_scene(plan, coco, kind)}": UNUSUAL_IMAGES[kind][2] for kind in kinds}
    reasons = {}
    if plan.defects:
        reasons[f"img{_add_coco_scene(plan, coco, write=False)}"] = "missing_image"
        outside_id = _add_coco_scene(plan, coco)
        coco.annotate(outside_id, SHAPES[0], [plan.image_size + 4, 0, 4, 4])
        reasons[f"img{outside_id}"] = "malformed_record"
    path = plan.root / "annotations.json"
    write_json(path, coco.to_json())
    return SyntheticDataset("coco", path, plan.root, len(coco.images), reasons, unusual)
