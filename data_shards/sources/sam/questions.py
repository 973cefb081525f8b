"""Questions about a frame's masks from varied templates; every answer is computed from the masks.

Templates and the objects asked about are drawn with a seed taken from the annotations themselves, not
from the sample key: two frames with the same bytes and masks get the same conversation, so the build
drops the second as an exact duplicate instead of keeping it by chance of wording.
"""

from __future__ import annotations

import json
import zlib
from collections import Counter
from collections.abc import Callable

import numpy as np

from data_shards.sample import IMAGE_TOKEN, Turn
from data_shards.sources.sam.masks import MaskedObject

COUNT = (
    "How many objects are segmented in this {thing}?",
    "Count the annotated objects in this {thing}.",
    "How many masks does this {thing} have?",
)
KINDS = ("Which objects are in the {thing}?", "List the kinds of objects you see.", "What categories are annotated?")
VISIBLE = ("Which of the tracked objects are visible in this frame?", "Which objects can be seen in this frame?")
BOX = (
    "Give the bounding box of {name} as [x0, y0, x1, y1] fractions of the width and height.",
    "Where is {name}? Answer with a box [x0, y0, x1, y1] in fractions of the {thing}.",
)
REGION = ("In which part of the {thing} is {name}?", "Roughly where is {name}: upper left, center, lower right...?")
LARGEST = ("Which object covers the largest area?", "Which mask is the biggest?")
ROWS = ("upper", "middle", "lower")
COLUMNS = ("left", "center", "right")
EXTRA_QUESTIONS = 3


def region(obj: MaskedObject, width: int, height: int) -> str:
    """The cell of a 3x3 grid holding the mask's centre, e.g. 'upper left'; the middle cell is 'center'."""
    column = COLUMNS[min(2, int(3 * obj.centre[0] / width))]
    row = ROWS[min(2, int(3 * obj.centre[1] / height))]
    return "center" if (row, column) == ("middle", "center") else f"{row} {column}"


def box_text(obj: MaskedObject, width: int, height: int) -> str:
    x0, y0, x1, y1 = obj.box
    return "[" + ", ".join(f"{v:.2f}" for v in (x0 / width, y0 / height, x1 / width, y1 / height)) + "]"


def content_seed(objects: list[MaskedObject], width: int, height: int) -> int:
    facts = [width, height] + [[str(o.id), o.name, list(o.box), o.area] for o in objects]
    return zlib.crc32(json.dumps(facts).encode())


def conversation(objects: list[MaskedObject], width: int, height: int, thing: str, named: bool) -> list[Turn]:
    """A count first (with the image), then up to three of: the kinds of objects (named categories) or the
    visible tracked objects (video frames), a box, a region, the largest object. `named`: objects carry
    category names, so boxes and regions are asked only of a name that occurs once."""
    rng = np.random.default_rng(content_seed(objects, width, height))

    def pick(options):
        return options[int(rng.integers(len(options)))]

    turns = [Turn("user", f"{IMAGE_TOKEN}\n{pick(COUNT).format(thing=thing)}"), Turn("assistant", str(len(objects)))]
    counts = Counter(o.name for o in objects)
    askable = [o for o in objects if not named or counts[o.name] == 1]

    def refer(obj: MaskedObject) -> str:
        return f"the {obj.name}" if named else obj.name

    def kinds() -> tuple[str, str]:
        return pick(KINDS).format(thing=thing), ", ".join(sorted(counts)) or "none"

    def visible() -> tuple[str, str]:
        return pick(VISIBLE), ", ".join(o.name for o in objects) or "none"  # in masklet order

    def box() -> tuple[str, str]:
        obj = pick(askable)
        return pick(BOX).format(name=refer(obj), thing=thing), box_text(obj, width, height)

    def where() -> tuple[str, str]:
        obj = pick(askable)
        return pick(REGION).format(name=refer(obj), thing=thing), region(obj, width, height)

    def largest() -> tuple[str, str]:
        return pick(LARGEST), max(objects, key=lambda o: (o.area, str(o.id))).name

    asks: list[Callable[[], tuple[str, str]]] = [kinds] if named else [visible] if thing == "frame" else []
    asks += [box, where] if askable else []
    asks += [largest] if len(objects) > 1 else []
    for index in rng.permutation(len(asks))[:EXTRA_QUESTIONS]:
        question, answer = asks[index]()
        turns += [Turn("user", question), Turn("assistant", answer)]
    return turns
