"""The words and values synthetic records are made of: formats, tasks, shapes, colours, questions, foreign texts."""

from __future__ import annotations

from typing import NamedTuple

FORMATS = ("llava", "messages", "captions", "manifest", "classes", "pairs", "coco", "sam")
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
            "red": "أحمر",
            "green": "أخضر",
            "blue": "أزرق",
            "yellow": "أصفر",
            "purple": "بنفسجي",
            "orange": "برتقالي",
        },
    ),
    "emoji": _ForeignText(
        "🎨 What color is the shape? 🤔",
        "a {word} {shape} ✨",
        {"red": "🔴", "green": "🟢", "blue": "🔵", "yellow": "🟡", "purple": "🟣", "orange": "🟠"},
    ),
}
