"""Which characters of a rendered conversation are the assistant's answers, for any chat template.

For each assistant turn k the conversation is rendered up to it with the generation prompt (what the
model is given at inference) and up to and including it: the answer is what the second adds to the
first. Each answer then ends with a token the model emits to end its turn (`end_tokens`); when the
template writes none right after the answer text, the first of them is inserted there, so that a
model trained through the template learns to stop.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from trainer.chat.template import ChatRenderer

SUPERVISE = ("all", "last")


class TemplateError(ValueError):
    """The chat template cannot be split into prompt and answer."""


@dataclass
class Rendered:
    """A conversation as text, with the character spans [start, end) to supervise."""

    text: str
    spans: list[tuple[int, int]]


def assistant_turns(messages: list[dict[str, Any]]) -> list[int]:
    return [index for index, message in enumerate(messages) if message["role"] == "assistant"]


def answer_text(message: dict[str, Any]) -> str:
    """The assistant message's last text part, stripped (templates often trim it)."""
    content = message["content"]
    texts = [content] if isinstance(content, str) else [p["text"] for p in content if p.get("type") == "text"]
    return texts[-1].strip() if texts else ""


class AnswerFinder:
    def __init__(self, renderer: ChatRenderer, end_tokens: list[str], supervise: str = "all"):
        if not end_tokens:
            raise ValueError("end_tokens: at least one end-of-turn token is needed")
        if supervise not in SUPERVISE:
            raise ValueError(f"supervise={supervise!r}: expected one of {SUPERVISE}")
        self.renderer = renderer
        self.end_tokens = end_tokens
        self.supervise = supervise

    def __call__(self, messages: list[dict[str, Any]]) -> Rendered:
        text, spans = self.closed(messages)
        return Rendered(text, spans[-1:] if self.supervise == "last" else spans)

    def prompt(self, messages: list[dict[str, Any]]) -> str:
        """The text a model generates its next answer from: `messages` (ending with a user turn) as training renders
        them, earlier answers closed by their end-of-turn token, then the template's generation prompt."""
        text, _ = self.closed(messages)
        plain = self.renderer.render(messages)
        generation = self.renderer.render(messages, generation_prompt=True)
        if not generation.startswith(plain):
            raise TemplateError(
                f"{self.renderer.source}: the chat template's generation prompt does not extend the "
                f"conversation: it renders {divergence(plain, generation)}"
            )
        return text + generation[len(plain) :]

    def closed(self, messages: list[dict[str, Any]]) -> tuple[str, list[tuple[int, int]]]:
        """The rendered conversation with every answer closed by an end-of-turn token, and each answer's span."""
        text = full = self.renderer.render(messages)
        spans, inserted = [], 0
        for turn in assistant_turns(messages):
            start, end = self.raw_span(messages, turn, full)
            start, end = start + inserted, end + inserted
            text, end, added = self.close_answer(text, start, end, answer_text(messages[turn]))
            inserted += added
            spans.append((start, end))
        return text, spans

    def raw_span(self, messages: list[dict[str, Any]], turn: int, full: str) -> tuple[int, int]:
        prompt = self.renderer.render(messages[:turn], generation_prompt=True)
        upto = self.renderer.render(messages[: turn + 1])
        for shorter, longer, what in ((prompt, upto, "the generation prompt"), (upto, full, "this turn")):
            if not longer.startswith(shorter):
                raise TemplateError(
                    f"{self.renderer.source}: the chat template cannot be split into prompt and answer: up to "
                    f"assistant turn {turn}, {what} renders {divergence(shorter, longer)}; training on it would give "
                    "the model other prompt tokens than inference does (set model.chat_template to a template file "
                    "that renders the generation prompt as the start of the assistant turn)"
                )
        return len(prompt), len(upto)

    def close_answer(self, text: str, start: int, end: int, answer: str) -> tuple[str, int, int]:
        """(text, end of the supervised span, characters inserted): the span runs to the end-of-turn token after
        the answer, inserted there when the template leaves it out."""
        answer_end, token_end = self.locate(text[start:end], answer)
        if token_end is not None:
            return text, start + token_end, 0
        answer_end += start
        token = self.end_tokens[0]
        return text[:answer_end] + token + text[answer_end:], answer_end + len(token), len(token)

    def locate(self, chunk: str, answer: str) -> tuple[int, int | None]:
        """Where the answer text ends in `chunk` and where the end-of-turn token right after it ends (None: no such
        token). Of several occurrences of the answer, the first followed by an end-of-turn token wins."""
        ends = [match.start() + len(answer) for match in re.finditer(re.escape(answer), chunk)] if answer else [0]
        if not ends:
            raise TemplateError(
                f"{self.renderer.source}: the chat template does not write the answer "
                f"{answer[:40]!r} as given, so its tokens cannot be found"
            )
        for answer_end in ends:
            tail = chunk[answer_end:]
            stripped = tail.lstrip()
            for token in self.end_tokens:
                if stripped.startswith(token):
                    return answer_end, answer_end + len(tail) - len(stripped) + len(token)
        return ends[0], None


def divergence(shorter: str, longer: str) -> str:
    """Where two renderings part: the text each has from the first differing character."""
    index = next((i for i, (a, b) in enumerate(zip(shorter, longer)) if a != b), len(shorter))
    return f"{shorter[index : index + 24]!r} where the longer rendering has {longer[index : index + 24]!r}"
