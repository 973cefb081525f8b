"""The conversation formats, llava and messages: good, defective and unusual records, spelled either way."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from data_shards.sample import IMAGE_TOKEN
from data_shards.synthetic.files import (
    BROKEN_IMAGE_REASONS,
    json_line,
    write_broken_image,
    write_json,
    write_outside_image,
    write_text,
)
from data_shards.synthetic.plan import Plan, SyntheticDataset
from data_shards.synthetic.unusual import UNUSUAL_IMAGES, unusual_topic, write_unusual_image
from data_shards.synthetic.vocabulary import FOREIGN_TEXTS, QUESTIONS, SYSTEM_PROMPT, TEXT_ONLY_EXCHANGE

MALFORMED_JSON_LINE = '{"id": "broken", "conversations": [{"from": "human", "value": '

T = TypeVar("T")


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


@dataclass(frozen=True)
class Conversation:
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


def _shape_conversation(plan: Plan, key: str, index: int) -> Conversation:
    """A question about a fresh picture; every fifth record first asks about the other topic.

    The task's question always comes last, so the final answer (what evaluation scores) is the task's.
    """
    picture = plan.picture()
    topic = _topic(plan.task, index)
    exchanges = [(QUESTIONS[topic], picture.answer(topic))]
    if index % 5 == 4:
        other = _other_topic(topic)
        exchanges.insert(0, (QUESTIONS[other], picture.answer(other)))
    return Conversation(key, (plan.save(picture.image, key),), tuple(exchanges), variant=index)


def _good_conversations(plan: Plan) -> list[Conversation]:
    """n records; the last one is text-only when there are at least two."""
    with_image = plan.n - 1 if plan.n > 1 else plan.n
    records = [_shape_conversation(plan, f"s{index:06d}", index) for index in range(with_image)]
    if plan.n > 1:
        records.append(Conversation(f"s{with_image:06d}", (), (TEXT_ONLY_EXCHANGE,), variant=with_image))
    return records


def _broken_image_conversations(plan: Plan) -> list[tuple[Conversation, str]]:
    """Records whose image is missing, broken, too large or outside the image root."""
    refs = {"missing_image": "images/d_missing_image.jpg", "path_escapes_root": write_outside_image(plan.root)}
    for reason in BROKEN_IMAGE_REASONS:
        path = write_broken_image(reason, plan.images_dir, f"d_{reason}", plan.rng, plan.image_size)
        refs[reason] = plan.relative(path)
    question = (QUESTIONS["color"], "red")
    return [(Conversation(f"d_{reason}", (ref,), (question,)), reason) for reason, ref in refs.items()]


def _defect_conversations(plan: Plan, first: Conversation) -> list[tuple[Conversation, str]]:
    """Records the readers must reject, each with its reason code."""
    empty = _shape_conversation(plan, "d_empty_answer", 0)
    return _broken_image_conversations(plan) + [
        (replace(first, key="d_duplicate_sample"), "duplicate_sample"),
        (replace(empty, exchanges=((empty.exchanges[0][0], "  "),)), "empty_answer"),
        (replace(_shape_conversation(plan, "d_placeholder_mismatch", 0), placeholders=2), "placeholder_mismatch"),
    ]


def _unusual_image_conversations(plan: Plan) -> list[tuple[Conversation, str]]:
    records = []
    for kind, (_, _, note) in UNUSUAL_IMAGES.items():
        picture, key, topic = plan.picture(), f"u_{kind}", unusual_topic(kind)
        path = write_unusual_image(kind, picture.image, picture.background, plan.images_dir, key)
        exchange = (QUESTIONS[topic], picture.answer(topic))
        records.append((Conversation(key, (plan.relative(path),), (exchange,)), note))
    return records


def _shared_image_conversations(plan: Plan) -> list[tuple[Conversation, str]]:
    """Three records asking different questions about one file, and one record showing a file twice."""
    shared, twice = plan.picture(), plan.picture()
    shared_path, twice_path = plan.save(shared.image, "u_shared"), plan.save(twice.image, "u_twice")
    exchanges = [(QUESTIONS[t], shared.answer(t)) for t in ("color", "shape")] + [("How many shapes are there?", "one")]
    records = [
        (Conversation(f"u_shared{number}", (shared_path,), (exchange,)), "image shared by three records")
        for number, exchange in enumerate(exchanges, start=1)
    ]
    same_twice = (("Are these two images the same?", "yes"),)
    records.append((Conversation("u_twice", (twice_path, twice_path), same_twice), "one image referenced twice"))
    return records


def _foreign_conversations(plan: Plan) -> list[tuple[Conversation, str]]:
    records = []
    for language, text in FOREIGN_TEXTS.items():
        picture, key = plan.picture(), f"u_{language}"
        exchange = (text.question, text.words[picture.color])
        records.append((Conversation(key, (plan.save(picture.image, key),), (exchange,)), f"{language} text"))
    return records


def _unusual_conversations(plan: Plan, first: Conversation) -> list[tuple[Conversation, str]]:
    """Records the readers must keep although something about them is unusual."""
    repeated_id = (replace(_shape_conversation(plan, "u_repeated_id", 0), key=first.key), "id repeated, other content")
    return (
        _unusual_image_conversations(plan)
        + _shared_image_conversations(plan)
        + _foreign_conversations(plan)
        + [repeated_id]
    )


def llava_record(record: Conversation) -> dict[str, Any]:
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


def _messages_record(record: Conversation) -> dict[str, Any]:
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
    lines = [json_line(record) for record in records]
    malformed_line = None
    if malformed:
        lines.insert(len(lines) // 2, MALFORMED_JSON_LINE)
        malformed_line = len(records) // 2 + 1
    write_text(path, "\n".join(lines) + "\n")
    return malformed_line


def _conversation_dataset(plan: Plan, fmt: str, spell: Callable[[Conversation], dict[str, Any]]) -> SyntheticDataset:
    good = _good_conversations(plan)
    unusual = _unusual_conversations(plan, good[0]) if plan.unusual else []
    defects = _defect_conversations(plan, good[0]) if plan.defects else []
    records = [spell(record) for record in _interleave(good, [record for record, _ in unusual + defects])]
    if fmt == "llava" and not plan.jsonl:
        path, malformed_line = plan.root / "data.json", None
        write_json(path, records)
    else:
        path = plan.root / "data.jsonl"
        malformed_line = _write_jsonl(path, records, malformed=plan.defects)
    defect_reasons = {record.key: reason for record, reason in defects}
    if malformed_line is not None:
        defect_reasons[f"line{malformed_line}"] = "malformed_json"
    num_records = len(records) + (malformed_line is not None)
    notes = {record.key: note for record, note in unusual}
    return SyntheticDataset(fmt, path, plan.root, num_records, defect_reasons, notes)


def write_llava(plan: Plan) -> SyntheticDataset:
    return _conversation_dataset(plan, "llava", llava_record)


def write_messages(plan: Plan) -> SyntheticDataset:
    return _conversation_dataset(plan, "messages", _messages_record)
