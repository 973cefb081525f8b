"""Small synthetic datasets on disk, in every raw input format shardtune ingests.

Images are coloured shapes on a light background, so every answer is a checkable one-word fact.
With `defects=True` a dataset also holds the records its reader must reject (`SyntheticDataset.defects`,
record key -> expected reason code) and odd but valid records it must keep (`SyntheticDataset.unusual`).
The same arguments always give byte-identical files.

Record keys: the `id` field (llava, messages); the image file's stem (captions, manifest, classes);
`row{N:06d}` for the N-th data row (pairs); `img{id}` (coco); `line{N}` for a malformed JSONL line.
The unusual record that repeats an id with other content is listed under that id (the first record with it
is a good one); the build keeps it under a derived key.
"""
from __future__ import annotations

import csv
import functools
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import numpy as np
from PIL import ExifTags, Image, ImageDraw

from data_shards.sample import IMAGE_TOKEN

FORMATS = ("llava", "messages", "captions", "manifest", "classes", "pairs", "coco")
TASKS = ("color", "shape", "mixed")
SHAPES = ("circle", "square", "triangle", "cross")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 205, 30),
    "purple": (140, 60, 180),
    "orange": (245, 140, 30),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"white": (255, 255, 255), "light grey": (221, 221, 221)}
QUESTIONS = {"color": "What color is the shape?", "shape": "What shape is this?"}
TEXT_ONLY_EXCHANGE = ("Which color do you get by mixing blue and yellow?", "green")
SYSTEM_PROMPT = "You are a helpful assistant."
MIN_IMAGE_SIZE = 16
JPEG_QUALITY = 90
NOISE_AMPLITUDE = 6
BOMB_SIDE = 10000
OUTSIDE_IMAGE = "../outside.jpg"
MALFORMED_JSON_LINE = '{"id": "broken", "conversations": [{"from": "human", "value": '
CAPTION_EXTENSIONS = (".jpg", ".png", ".webp")
BROKEN_IMAGE_REASONS = ("zero_byte_image", "truncated_image", "unreadable_image", "image_too_large")
BENCHMARK_BASE_IMAGES = 128
BENCHMARK_STAMP_BITS = 24

T = TypeVar("T")


@dataclass
class SyntheticDataset:
    """Where a written dataset lies (`input`, `image_root` as the CLI takes them) and what it holds."""

    format: str
    input: Path
    image_root: Path | None
    num_records: int
    defects: dict[str, str]
    unusual: dict[str, str]


# --- drawing -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlacedShape:
    """A shape with its square bounding box: top-left corner (x, y) and side length, in pixels."""

    shape: str
    color: str
    x: int
    y: int
    extent: int

    @property
    def corners(self) -> tuple[int, int, int, int]:
        return (self.x, self.y, self.x + self.extent - 1, self.y + self.extent - 1)

    @property
    def bbox(self) -> list[int]:
        return [self.x, self.y, self.extent, self.extent]


def _fill_shape(draw: ImageDraw.ImageDraw, placed: PlacedShape) -> None:
    """Draws the shape so that it touches all four sides of its bounding box."""
    left, top, right, bottom = placed.corners
    fill = COLORS[placed.color]
    if placed.shape == "circle":
        draw.ellipse((left, top, right, bottom), fill=fill)
    elif placed.shape == "square":
        draw.rectangle((left, top, right, bottom), fill=fill)
    elif placed.shape == "triangle":
        draw.polygon([((left + right) / 2, top), (left, bottom), (right, bottom)], fill=fill)
    else:
        arm = max(1, placed.extent // 3)
        start = (placed.extent - arm) // 2
        draw.rectangle((left, top + start, right, top + start + arm - 1), fill=fill)
        draw.rectangle((left + start, top, left + start + arm - 1, bottom), fill=fill)


def _add_noise(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    pixels = np.asarray(image, dtype=np.int16)
    noise = rng.integers(-NOISE_AMPLITUDE, NOISE_AMPLITUDE + 1, size=pixels.shape, dtype=np.int16)
    return Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8))


def render(shapes: Sequence[PlacedShape], background: str, size: int, rng: np.random.Generator) -> Image.Image:
    """Draws the shapes on a plain square background, then adds mild per-pixel noise."""
    image = Image.new("RGB", (size, size), BACKGROUNDS[background])
    draw = ImageDraw.Draw(image)
    for placed in shapes:
        _fill_shape(draw, placed)
    return _add_noise(image, rng)


def _pick(rng: np.random.Generator, options: Sequence[T]) -> T:
    return options[int(rng.integers(len(options)))]


def _centered(shape: str, color: str, size: int, rng: np.random.Generator, extent: int | None = None) -> PlacedShape:
    """Places a shape near the centre: side 45-75% of the image unless given, shifted by up to 1/8."""
    if extent is None:
        extent = int(rng.integers(round(size * 0.45), round(size * 0.75) + 1))
    slack = size - extent
    shift = min(slack // 2, size // 8)
    x = slack // 2 + int(rng.integers(-shift, shift + 1))
    y = slack // 2 + int(rng.integers(-shift, shift + 1))
    return PlacedShape(shape, color, x, y, extent)


def _require(value: str, allowed: Sequence[str], what: str) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; expected one of {tuple(allowed)}")


def draw_shape(
    shape: str, color: str, size: int, rng: np.random.Generator, background: str | None = None
) -> Image.Image:
    """One shape in one colour on a white or light grey background (random unless given)."""
    _require(shape, SHAPES, "shape")
    _require(color, tuple(COLORS), "color")
    background = background or _pick(rng, tuple(BACKGROUNDS))
    return render([_centered(shape, color, size, rng)], background, size, rng)


@dataclass(frozen=True)
class _Picture:
    image: Image.Image
    shape: str
    color: str
    background: str

    def answer(self, topic: str) -> str:
        return self.color if topic == "color" else self.shape

    def caption(self) -> str:
        return f"a {self.color} {self.shape} on a {self.background} background"


def _random_picture(
    rng: np.random.Generator,
    size: int,
    *,
    shape: str | None = None,
    color: str | None = None,
    extent: int | None = None,
) -> _Picture:
    shape = shape or _pick(rng, SHAPES)
    color = color or _pick(rng, tuple(COLORS))
    background = _pick(rng, tuple(BACKGROUNDS))
    placed = _centered(shape, color, size, rng, extent)
    return _Picture(render([placed], background, size, rng), shape, color, background)


# --- files ---------------------------------------------------------------------------------------

_SAVE_FORMATS = {".jpg": "JPEG", ".png": "PNG", ".webp": "WEBP"}


def _save_image(image: Image.Image, path: Path) -> None:
    """Saves by extension with fixed settings; EXIF is written only when the image carries some."""
    image_format = _SAVE_FORMATS[path.suffix]
    options: dict[str, Any] = {"exif": image.info.get("exif", b"")}
    if image_format in ("JPEG", "WEBP"):
        options["quality"] = JPEG_QUALITY
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, image_format, **options)


def _jpeg_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _write_json(path: Path, value: Any) -> None:
    _write_text(path, json.dumps(value, ensure_ascii=False, sort_keys=True, indent=1) + "\n")


def _json_line(value: dict[str, Any]) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


@functools.cache
def _bomb_png() -> bytes:
    """A 6000x6000 one-colour PNG at one bit per pixel: about 4 KB on disk, 36 megapixels once decoded."""
    image = Image.new("P", (BOMB_SIDE, BOMB_SIDE), 0)
    image.putpalette([*COLORS["orange"], 0, 0, 0])
    buffer = io.BytesIO()
    image.save(buffer, "PNG", bits=1)
    return buffer.getvalue()


def _broken_image_bytes(reason: str, rng: np.random.Generator, size: int) -> bytes:
    if reason == "zero_byte_image":
        return b""
    if reason == "unreadable_image":
        return rng.bytes(2048)
    if reason == "truncated_image":
        # At least 128 px so that half the file still holds every header and the cut falls in the scan data.
        data = _jpeg_bytes(_random_picture(rng, max(size, 128)).image)
        return data[: len(data) // 2]
    return _bomb_png()


def _write_broken_image(reason: str, folder: Path, stem: str, rng: np.random.Generator, size: int) -> Path:
    path = folder / (stem + (".png" if reason == "image_too_large" else ".jpg"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_broken_image_bytes(reason, rng, size))
    return path


def _write_outside_image(root: Path) -> str:
    """Writes the real file that `../outside.jpg` points to; its content does not depend on the dataset."""
    picture = _random_picture(np.random.default_rng(0), 32)
    _save_image(picture.image, root / OUTSIDE_IMAGE)
    return OUTSIDE_IMAGE


# --- unusual but valid images --------------------------------------------------------------------


def _as_cmyk(image: Image.Image, background: str) -> Image.Image:
    return image.convert("CMYK")


def _as_palette(image: Image.Image, background: str) -> Image.Image:
    return image.convert("P", palette=Image.Palette.ADAPTIVE, colors=32)


def _as_16bit_gray(image: Image.Image, background: str) -> Image.Image:
    gray = np.asarray(image.convert("L"), dtype=np.uint16) * 257
    return Image.fromarray(gray)


def _as_rgba(image: Image.Image, background: str) -> Image.Image:
    """Background pixels become fully transparent, the shape stays opaque."""
    pixels = np.asarray(image)
    distance = np.abs(pixels.astype(np.int16) - np.array(BACKGROUNDS[background])).max(axis=2)
    alpha = np.where(distance > 3 * NOISE_AMPLITUDE, 255, 0).astype(np.uint8)
    return Image.fromarray(np.dstack([pixels, alpha]))


def _as_exif_rotated(image: Image.Image, background: str) -> Image.Image:
    """A landscape picture stored turned a quarter left; EXIF orientation 6 tells readers to turn it back."""
    width, height = image.size
    upright = Image.new("RGB", (width + width // 2, height), BACKGROUNDS[background])
    upright.paste(image, (0, 0))
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    stored.info["exif"] = exif.tobytes()
    return stored


_Converter = Callable[[Image.Image, str], Image.Image]
UNUSUAL_IMAGES: dict[str, tuple[_Converter, str, str]] = {
    "cmyk": (_as_cmyk, ".jpg", "CMYK JPEG"),
    "palette": (_as_palette, ".png", "palette (P) PNG"),
    "16bit": (_as_16bit_gray, ".png", "16-bit grayscale (I;16) PNG"),
    "rgba": (_as_rgba, ".png", "RGBA PNG with a transparent background"),
    "exif": (_as_exif_rotated, ".jpg", "JPEG stored rotated, EXIF orientation 6"),
}


def _write_unusual_image(kind: str, image: Image.Image, background: str, folder: Path, stem: str) -> Path:
    convert, extension, _ = UNUSUAL_IMAGES[kind]
    path = folder / (stem + extension)
    _save_image(convert(image, background), path)
    return path


def _unusual_topic(kind: str) -> str:
    """A grayscale image has no colour to ask about."""
    return "shape" if kind == "16bit" else "color"


class _ForeignText(NamedTuple):
    question: str
    caption: str
    words: dict[str, str]


FOREIGN_TEXTS = {
    "zh": _ForeignText(
        "这个形状是什么颜色？",
        "一个{word}的形状",
        {"red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色", "purple": "紫色", "orange": "橙色"},
    ),
    "ar": _ForeignText(
        "ما لون الشكل؟",
        "شكل {word}",
        {
            "red": "أحمر", "green": "أخضر", "blue": "أزرق",
            "yellow": "أصفر", "purple": "بنفسجي", "orange": "برتقالي",
        },
    ),
    "emoji": _ForeignText(
        "🎨 What color is the shape? 🤔",
        "a {word} {shape} ✨",
        {"red": "🔴", "green": "🟢", "blue": "🔵", "yellow": "🟡", "purple": "🟣", "orange": "🟠"},
    ),
}


def _foreign_caption(language: str, picture: _Picture) -> str:
    text = FOREIGN_TEXTS[language]
    return text.caption.format(word=text.words[picture.color], shape=picture.shape)


# --- plan ----------------------------------------------------------------------------------------


@dataclass
class _Plan:
    root: Path
    rng: np.random.Generator
    n: int
    image_size: int
    task: str
    defects: bool
    unusual: bool
    jsonl: bool
    class_names: bool

    @property
    def images_dir(self) -> Path:
        return self.root / "images"

    def picture(self, **fixed: Any) -> _Picture:
        return _random_picture(self.rng, self.image_size, **fixed)

    def save(self, image: Image.Image, stem: str) -> str:
        """Saves a JPEG under images/ and returns its path relative to the root."""
        _save_image(image, self.images_dir / f"{stem}.jpg")
        return f"images/{stem}.jpg"

    def relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()


def _topic(task: str, index: int) -> str:
    if task == "mixed":
        return ("color", "shape")[index % 2]
    return task


def _other_topic(topic: str) -> str:
    return "shape" if topic == "color" else "color"


def _interleave(main: list[T], extras: list[T]) -> list[T]:
    """Spreads `extras` evenly through `main`, never before main's first item."""
    result: list[T] = []
    next_extra = 0
    for index, item in enumerate(main):
        result.append(item)
        while next_extra < len(extras) and next_extra * len(main) // len(extras) == index:
            result.append(extras[next_extra])
            next_extra += 1
    return result


# --- conversation formats: llava and messages ----------------------------------------------------


@dataclass(frozen=True)
class _Conversation:
    """A record of the conversation formats before it is spelled as llava or messages JSON.

    `variant` picks between equivalent spellings (an image path as a one-item list, user content as a
    plain string); `placeholders` is the number of <image> tokens, one per image unless given.
    """

    key: str
    images: tuple[str, ...]
    exchanges: tuple[tuple[str, str], ...]
    variant: int = 0
    placeholders: int | None = None

    @property
    def placeholder_count(self) -> int:
        return len(self.images) if self.placeholders is None else self.placeholders


def _shape_conversation(plan: _Plan, key: str, index: int) -> _Conversation:
    """A question about a fresh picture; every fifth record first asks about the other topic.

    The task's question always comes last, so the final answer (what evaluation scores) is the task's.
    """
    picture = plan.picture()
    topic = _topic(plan.task, index)
    exchanges = [(QUESTIONS[topic], picture.answer(topic))]
    if index % 5 == 4:
        other = _other_topic(topic)
        exchanges.insert(0, (QUESTIONS[other], picture.answer(other)))
    return _Conversation(key, (plan.save(picture.image, key),), tuple(exchanges), variant=index)


def _good_conversations(plan: _Plan) -> list[_Conversation]:
    """n records; the last one is text-only when there are at least two."""
    with_image = plan.n - 1 if plan.n > 1 else plan.n
    records = [_shape_conversation(plan, f"s{index:06d}", index) for index in range(with_image)]
    if plan.n > 1:
        records.append(_Conversation(f"s{with_image:06d}", (), (TEXT_ONLY_EXCHANGE,), variant=with_image))
    return records


def _broken_image_conversations(plan: _Plan) -> list[tuple[_Conversation, str]]:
    """Records whose image is missing, broken, too large or outside the image root."""
    refs = {"missing_image": "images/d_missing_image.jpg", "path_escapes_root": _write_outside_image(plan.root)}
    for reason in BROKEN_IMAGE_REASONS:
        path = _write_broken_image(reason, plan.images_dir, f"d_{reason}", plan.rng, plan.image_size)
        refs[reason] = plan.relative(path)
    question = (QUESTIONS["color"], "red")
    return [(_Conversation(f"d_{reason}", (ref,), (question,)), reason) for reason, ref in refs.items()]


def _defect_conversations(plan: _Plan, first: _Conversation) -> list[tuple[_Conversation, str]]:
    """Records the readers must reject, each with its reason code."""
    empty = _shape_conversation(plan, "d_empty_answer", 0)
    return _broken_image_conversations(plan) + [
        (replace(first, key="d_duplicate_sample"), "duplicate_sample"),
        (replace(empty, exchanges=((empty.exchanges[0][0], "  "),)), "empty_answer"),
        (replace(_shape_conversation(plan, "d_placeholder_mismatch", 0), placeholders=2), "placeholder_mismatch"),
    ]


def _unusual_image_conversations(plan: _Plan) -> list[tuple[_Conversation, str]]:
    records = []
    for kind, (_, _, note) in UNUSUAL_IMAGES.items():
        picture, key, topic = plan.picture(), f"u_{kind}", _unusual_topic(kind)
        path = _write_unusual_image(kind, picture.image, picture.background, plan.images_dir, key)
        exchange = (QUESTIONS[topic], picture.answer(topic))
        records.append((_Conversation(key, (plan.relative(path),), (exchange,)), note))
    return records


def _shared_image_conversations(plan: _Plan) -> list[tuple[_Conversation, str]]:
    """Three records asking different questions about one file, and one record showing a file twice."""
    shared, twice = plan.picture(), plan.picture()
    shared_path, twice_path = plan.save(shared.image, "u_shared"), plan.save(twice.image, "u_twice")
    exchanges = [(QUESTIONS[t], shared.answer(t)) for t in ("color", "shape")] + [("How many shapes are there?", "one")]
    records = [
        (_Conversation(f"u_shared{number}", (shared_path,), (exchange,)), "image shared by three records")
        for number, exchange in enumerate(exchanges, start=1)
    ]
    same_twice = (("Are these two images the same?", "yes"),)
    records.append((_Conversation("u_twice", (twice_path, twice_path), same_twice), "one image referenced twice"))
    return records


def _foreign_conversations(plan: _Plan) -> list[tuple[_Conversation, str]]:
    records = []
    for language, text in FOREIGN_TEXTS.items():
        picture, key = plan.picture(), f"u_{language}"
        exchange = (text.question, text.words[picture.color])
        records.append((_Conversation(key, (plan.save(picture.image, key),), (exchange,)), f"{language} text"))
    return records


def _unusual_conversations(plan: _Plan, first: _Conversation) -> list[tuple[_Conversation, str]]:
    """Records the readers must keep although something about them is unusual."""
    repeated_id = (replace(_shape_conversation(plan, "u_repeated_id", 0), key=first.key), "id repeated, other content")
    return (_unusual_image_conversations(plan) + _shared_image_conversations(plan) + _foreign_conversations(plan)
            + [repeated_id])


def _llava_record(record: _Conversation) -> dict[str, Any]:
    """LLaVA spelling; every tenth variant gives a single image as a one-item list."""
    turns = []
    for position, (question, answer) in enumerate(record.exchanges):
        prefix = f"{IMAGE_TOKEN}\n" * record.placeholder_count if position == 0 else ""
        turns += [{"from": "human", "value": prefix + question}, {"from": "gpt", "value": answer}]
    spelled: dict[str, Any] = {"id": record.key, "conversations": turns}
    if len(record.images) == 1 and record.variant % 10 != 9:
        spelled["image"] = record.images[0]
    elif record.images:
        spelled["image"] = list(record.images)
    return spelled


def _user_content(question: str, placeholders: int, plain: bool) -> str | list[dict[str, str]]:
    if plain:
        return IMAGE_TOKEN * placeholders + question
    return [{"type": "image"} for _ in range(placeholders)] + [{"type": "text", "text": question}]


def _messages_record(record: _Conversation) -> dict[str, Any]:
    """Chat-messages spelling; every third variant gives user content as a plain string."""
    plain = record.variant % 3 == 2
    messages: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM_PROMPT}]
    for position, (question, answer) in enumerate(record.exchanges):
        placeholders = record.placeholder_count if position == 0 else 0
        messages.append({"role": "user", "content": _user_content(question, placeholders, plain)})
        messages.append({"role": "assistant", "content": answer})
    spelled: dict[str, Any] = {"id": record.key, "messages": messages}
    if record.images:
        spelled["images"] = list(record.images)
    return spelled


def _write_jsonl(path: Path, records: list[dict[str, Any]], malformed: bool) -> int | None:
    """One record per line; with `malformed`, a broken line goes in the middle and its line number is returned."""
    lines = [_json_line(record) for record in records]
    malformed_line = None
    if malformed:
        lines.insert(len(lines) // 2, MALFORMED_JSON_LINE)
        malformed_line = len(records) // 2 + 1
    _write_text(path, "\n".join(lines) + "\n")
    return malformed_line


def _conversation_dataset(plan: _Plan, fmt: str, spell: Callable[[_Conversation], dict[str, Any]]) -> SyntheticDataset:
    good = _good_conversations(plan)
    unusual = _unusual_conversations(plan, good[0]) if plan.unusual else []
    defects = _defect_conversations(plan, good[0]) if plan.defects else []
    records = [spell(record) for record in _interleave(good, [record for record, _ in unusual + defects])]
    if fmt == "llava" and not plan.jsonl:
        path, malformed_line = plan.root / "data.json", None
        _write_json(path, records)
    else:
        path = plan.root / "data.jsonl"
        malformed_line = _write_jsonl(path, records, malformed=plan.defects)
    defect_reasons = {record.key: reason for record, reason in defects}
    if malformed_line is not None:
        defect_reasons[f"line{malformed_line}"] = "malformed_json"
    num_records = len(records) + (malformed_line is not None)
    notes = {record.key: note for record, note in unusual}
    return SyntheticDataset(fmt, path, plan.root, num_records, defect_reasons, notes)


def _write_llava(plan: _Plan) -> SyntheticDataset:
    return _conversation_dataset(plan, "llava", _llava_record)


def _write_messages(plan: _Plan) -> SyntheticDataset:
    return _conversation_dataset(plan, "messages", _messages_record)


# --- image-file formats: captions, manifest, classes ---------------------------------------------


class _ImageFile(NamedTuple):
    key: str
    path: Path
    text: str
    note: str


def _unusual_image_files(plan: _Plan, folder_for: Callable[[_Picture], Path]) -> list[_ImageFile]:
    files = []
    for kind, (_, _, note) in UNUSUAL_IMAGES.items():
        picture, key = plan.picture(), f"u_{kind}"
        path = _write_unusual_image(kind, picture.image, picture.background, folder_for(picture), key)
        files.append(_ImageFile(key, path, picture.caption(), note))
    return files


def _foreign_caption_files(plan: _Plan, folder: Path) -> list[_ImageFile]:
    files = []
    for language in FOREIGN_TEXTS:
        picture, key = plan.picture(), f"u_{language}"
        path = folder / f"{key}.jpg"
        _save_image(picture.image, path)
        files.append(_ImageFile(key, path, _foreign_caption(language, picture), f"{language} text"))
    return files


def _broken_image_files(plan: _Plan, folder: Path) -> list[_ImageFile]:
    files = []
    for reason in BROKEN_IMAGE_REASONS:
        key = f"d_{reason}"
        path = _write_broken_image(reason, folder, key, plan.rng, plan.image_size)
        files.append(_ImageFile(key, path, "a broken image", reason))
    return files


def _good_captioned_files(plan: _Plan, folder: Path, extensions: Sequence[str]) -> list[_ImageFile]:
    files = []
    for index in range(plan.n):
        picture, key = plan.picture(), f"s{index:06d}"
        path = folder / (key + extensions[index % len(extensions)])
        _save_image(picture.image, path)
        files.append(_ImageFile(key, path, picture.caption(), ""))
    return files


def _caption_defect_files(plan: _Plan, folder: Path) -> list[_ImageFile]:
    """Broken images with captions, plus a good image without a caption file and one with an empty caption."""
    files = _broken_image_files(plan, folder)
    for key, reason in (("d_missing_caption", "missing_caption"), ("d_empty_answer", "empty_answer")):
        path = folder / f"{key}.jpg"
        _save_image(plan.picture().image, path)
        files.append(_ImageFile(key, path, "", reason))
    return files


def _unusual_captioned_files(plan: _Plan, folder: Path) -> list[_ImageFile]:
    if not plan.unusual:
        return []
    return _unusual_image_files(plan, lambda _: folder) + _foreign_caption_files(plan, folder)


def _notes(files: list[_ImageFile]) -> dict[str, str]:
    return {file.key: file.note for file in files}


def _write_captions(plan: _Plan) -> SyntheticDataset:
    folder = plan.root / "captions"
    good = _good_captioned_files(plan, folder, CAPTION_EXTENSIONS)
    unusual = _unusual_captioned_files(plan, folder)
    defects = _caption_defect_files(plan, folder) if plan.defects else []
    for file in good + unusual + defects:
        if file.note != "missing_caption":
            _write_text(file.path.with_suffix(".txt"), file.text)
    num_records = len(good) + len(unusual) + len(defects)
    return SyntheticDataset("captions", folder, None, num_records, _notes(defects), _notes(unusual))


def _manifest_defect_entries(plan: _Plan) -> tuple[dict[str, str], dict[str, str]]:
    """Returns (manifest entries, record key -> reason); a record's key is its image file's stem."""
    files = _broken_image_files(plan, plan.images_dir)
    entries = {plan.relative(file.path): file.text for file in files}
    reasons = {file.key: file.note for file in files}
    entries["images/d_missing_image.jpg"] = "a red circle on a white background"
    entries[_write_outside_image(plan.root)] = "a shape outside the image root"
    entries[plan.save(plan.picture().image, "d_empty_answer")] = ""
    reasons.update(d_missing_image="missing_image", outside="path_escapes_root", d_empty_answer="empty_answer")
    return entries, reasons


def _write_manifest(plan: _Plan) -> SyntheticDataset:
    good = _good_captioned_files(plan, plan.images_dir, (".jpg",))
    unusual = _unusual_captioned_files(plan, plan.images_dir)
    entries = {plan.relative(file.path): file.text for file in good + unusual}
    defect_entries, reasons = _manifest_defect_entries(plan) if plan.defects else ({}, {})
    entries.update(defect_entries)
    path = plan.root / "manifest.json"
    _write_json(path, entries)
    return SyntheticDataset("manifest", path, plan.root, len(entries), reasons, _notes(unusual))


def _class_topic(task: str) -> str:
    """Classes are colours unless the task is "shape" ("mixed" has no single class per image)."""
    return "shape" if task == "shape" else "color"


def _good_class_files(plan: _Plan, folder: Path) -> None:
    """n images cycling through the classes, so that every class appears once n is large enough."""
    topic = _class_topic(plan.task)
    labels = SHAPES if topic == "shape" else tuple(COLORS)
    for index in range(plan.n):
        label = labels[index % len(labels)]
        picture = plan.picture(**{topic: label})
        _save_image(picture.image, folder / label / f"s{index:06d}.jpg")


def _write_class_names(plan: _Plan, folder: Path) -> None:
    labels = sorted(entry.name for entry in folder.iterdir() if entry.is_dir())
    _write_json(plan.root / "class_names.json", {label: label for label in labels})


def _write_classes(plan: _Plan) -> SyntheticDataset:
    folder = plan.root / "classes"
    topic = _class_topic(plan.task)
    _good_class_files(plan, folder)
    unusual = _unusual_image_files(plan, lambda picture: folder / picture.answer(topic)) if plan.unusual else []
    first_class = SHAPES[0] if topic == "shape" else next(iter(COLORS))
    defects = _broken_image_files(plan, folder / first_class) if plan.defects else []
    if plan.class_names:
        _write_class_names(plan, folder)
    num_records = plan.n + len(unusual) + len(defects)
    return SyntheticDataset("classes", folder, None, num_records, _notes(defects), _notes(unusual))


# --- pairs ---------------------------------------------------------------------------------------


class _PairRow(NamedTuple):
    img1: str
    img2: str
    label: str
    score1: int
    score2: int


def _pair_margin(image_size: int) -> int:
    return max(1, image_size // 16)


def pair_label(score1: int, score2: int, margin: int) -> str:
    if score1 > score2 + margin:
        return "First"
    if score2 > score1 + margin:
        return "Second"
    return "Similar"


def _pair_extents(image_size: int) -> range:
    """Shape sides a pair image may have: 30% to 80% of the image."""
    return range(round(image_size * 0.3), round(image_size * 0.8) + 1)


def _second_extent(plan: _Plan, first: int) -> int:
    """About one pair in five is Similar; the others differ by more than the margin, in either direction."""
    margin = _pair_margin(plan.image_size)
    similar = plan.rng.random() < 0.2
    extents = _pair_extents(plan.image_size)
    return _pick(plan.rng, [extent for extent in extents if (abs(extent - first) <= margin) == similar])


def _pair_image(plan: _Plan, stem: str, extent: int) -> tuple[str, int]:
    """A picture whose score is its shape's side in pixels."""
    return plan.save(plan.picture(extent=extent).image, stem), extent


def _good_pair_rows(plan: _Plan) -> list[_PairRow]:
    """n rows; every fourth row re-uses the previous row's second image as its first."""
    rows: list[_PairRow] = []
    margin = _pair_margin(plan.image_size)
    for number in range(1, plan.n + 1):
        stem = f"row{number:06d}"
        if number % 4 == 0:
            first = (rows[-1].img2, rows[-1].score2)
        else:
            first = _pair_image(plan, f"{stem}_a", _pick(plan.rng, _pair_extents(plan.image_size)))
        second = _pair_image(plan, f"{stem}_b", _second_extent(plan, first[1]))
        rows.append(_PairRow(first[0], second[0], pair_label(first[1], second[1], margin), first[1], second[1]))
    return rows


def _defect_pair_rows(first: _PairRow) -> list[tuple[_PairRow, str]]:
    return [
        (first._replace(img1="images/d_missing_image.jpg"), "missing_image"),
        (first._replace(label="Maybe"), "malformed_record"),
    ]


def _write_pairs(plan: _Plan) -> SyntheticDataset:
    """Defect rows come last so that every good row's images are named after its row number."""
    rows = _good_pair_rows(plan)
    defects = _defect_pair_rows(rows[0]) if plan.defects else []
    path = plan.root / "pairs.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(_PairRow._fields)
        writer.writerows(rows + [row for row, _ in defects])
    reasons = {f"row{len(rows) + offset:06d}": reason for offset, (_, reason) in enumerate(defects, start=1)}
    return SyntheticDataset("pairs", path, plan.root, len(rows) + len(defects), reasons, {})


# --- coco ----------------------------------------------------------------------------------------

COCO_UNUSUAL_KINDS = ("cmyk", "palette", "16bit", "rgba")


def _placed_in_cell(cell_index: int, cell: int, rng: np.random.Generator) -> PlacedShape:
    """A random shape inside one quadrant (cells never overlap, so boxes never do)."""
    extent = int(rng.integers(max(2, cell // 2), max(2, cell * 9 // 10) + 1))
    x = (cell_index % 2) * cell + int(rng.integers(0, cell - extent + 1))
    y = (cell_index // 2) * cell + int(rng.integers(0, cell - extent + 1))
    return PlacedShape(_pick(rng, SHAPES), _pick(rng, tuple(COLORS)), x, y, extent)


def _coco_scene(plan: _Plan) -> tuple[Image.Image, str, list[PlacedShape]]:
    """One to three shapes in distinct quadrants; returns the image, its background and the shapes."""
    rng, size = plan.rng, plan.image_size
    cells = rng.permutation(4)[: int(rng.integers(1, 4))]
    placed = [_placed_in_cell(int(cell), size // 2, rng) for cell in cells]
    background = _pick(rng, tuple(BACKGROUNDS))
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
        self.annotations.append({
            "id": len(self.annotations) + 1, "image_id": image_id, "category_id": SHAPES.index(category) + 1,
            "bbox": bbox, "area": float(bbox[2] * bbox[3]), "iscrowd": 0,
        })

    def to_json(self) -> dict[str, Any]:
        categories = [{"id": number, "name": shape} for number, shape in enumerate(SHAPES, start=1)]
        return {"images": self.images, "annotations": self.annotations, "categories": categories}


def _add_coco_scene(plan: _Plan, coco: _Coco, kind: str | None = None, write: bool = True) -> int:
    """Draws and annotates a scene; saves it as JPEG, in the unusual mode `kind`, or not at all (`write=False`)."""
    image, background, placed = _coco_scene(plan)
    stem = f"img{coco.next_image_id:06d}"
    if kind:
        path = _write_unusual_image(kind, image, background, plan.images_dir, stem)
        file_name = plan.relative(path)
    else:
        file_name = plan.save(image, stem) if write else f"images/{stem}.jpg"
    image_id = coco.add_image(file_name)
    for shape in placed:
        coco.annotate(image_id, shape.shape, shape.bbox)
    return image_id


def _write_coco(plan: _Plan) -> SyntheticDataset:
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
    _write_json(path, coco.to_json())
    return SyntheticDataset("coco", path, plan.root, len(coco.images), reasons, unusual)


# --- public entry points -------------------------------------------------------------------------

_WRITERS: dict[str, Callable[[_Plan], SyntheticDataset]] = {
    "llava": _write_llava,
    "messages": _write_messages,
    "captions": _write_captions,
    "manifest": _write_manifest,
    "classes": _write_classes,
    "pairs": _write_pairs,
    "coco": _write_coco,
}


def _check_arguments(fmt: str, n: int, image_size: int, task: str, jsonl: bool, class_names: bool) -> None:
    _require(fmt, FORMATS, "format")
    _require(task, TASKS, "task")
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be at least {MIN_IMAGE_SIZE}, got {image_size}")
    if jsonl and fmt != "llava":
        raise ValueError("jsonl=True applies to the llava format only")
    if class_names and fmt != "classes":
        raise ValueError("class_names=True applies to the classes format only")


def make_dataset(
    fmt: str,
    out: Path,
    n: int = 64,
    seed: int = 0,
    image_size: int = 32,
    defects: bool = False,
    task: str = "color",
    *,
    jsonl: bool = False,
    class_names: bool = False,
    unusual: bool | None = None,
) -> SyntheticDataset:
    """Writes n good records in format `fmt` under `out`, plus defective and unusual ones when asked.

    `unusual` defaults to `defects`. `jsonl` (llava only) writes data.jsonl instead of data.json;
    `class_names` (classes only) writes class_names.json. The `path_escapes_root` defect's target,
    `out/../outside.jpg`, is the one file written outside `out`.
    """
    _check_arguments(fmt, n, image_size, task, jsonl, class_names)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with_unusual = defects if unusual is None else unusual
    plan = _Plan(out, np.random.default_rng(seed), n, image_size, task, defects, with_unusual, jsonl, class_names)
    return _WRITERS[fmt](plan)


# --- benchmark set -------------------------------------------------------------------------------


def _jittered(bases: np.ndarray, index: int) -> np.ndarray:
    """A base picture shifted by up to 2 px, the index's bits stamped into its first pixels: no two files are equal."""
    variant = index // len(bases)
    pixels = np.roll(bases[index % len(bases)], (variant % 5 - 2, variant // 5 % 5 - 2), axis=(0, 1))
    bits = (index >> np.arange(BENCHMARK_STAMP_BITS)) & 1
    pixels.reshape(-1, 3)[:BENCHMARK_STAMP_BITS] = np.where(bits[:, None] == 1, 160, 250)
    return pixels


def make_loose_benchmark_set(out: Path, n: int, image_size: int, seed: int = 0) -> Path:
    """n single-turn colour questions as a LLaVA JSON list, one distinct JPEG each; returns the JSON path.

    The image root is `out`. Pictures are drawn once for a few base images and jittered per record.
    """
    if n < 1 or image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"need n >= 1 and image_size >= {MIN_IMAGE_SIZE}, got n={n}, image_size={image_size}")
    out = Path(out)
    images_dir = out / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pictures = [_random_picture(rng, image_size) for _ in range(min(n, BENCHMARK_BASE_IMAGES))]
    bases = np.stack([np.asarray(picture.image) for picture in pictures])
    for index in range(n):
        Image.fromarray(_jittered(bases, index)).save(images_dir / f"s{index:06d}.jpg", "JPEG", quality=JPEG_QUALITY)
    records = [
        _llava_record(_Conversation(
            f"s{index:06d}", (f"images/s{index:06d}.jpg",),
            ((QUESTIONS["color"], pictures[index % len(pictures)].color),),
        ))
        for index in range(n)
    ]
    path = out / "data.json"
    _write_json(path, records)
    return path
