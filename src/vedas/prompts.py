"""The one prompt builder, used by training and inference alike.

The reference code formats the prompt one way in training (`(A).{...}`) and another at
inference (`A.{...}`); here a single function renders every question, so the two cannot
drift. The answer target is always ``Therefore, the answer is X.``

Example::

    >>> format_question("How many red squares?", ["2", "3"])
    'How many red squares?\\nOptions:\\n(A) 2\\n(B) 3'
"""

from __future__ import annotations

from collections.abc import Sequence

ANSWER_PREFIX = "Therefore, the answer is"
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def option_letter(index: int) -> str:
    """The option letter for a 0-based choice index (0 -> "A")."""
    if not 0 <= index < len(LETTERS):
        raise ValueError(f"choice index {index} out of range 0..{len(LETTERS) - 1}")
    return LETTERS[index]


def format_question(question: str, choices: Sequence[str] | None = None, context: str | None = None) -> str:
    """Render question, optional context and lettered options as the user text."""
    if not isinstance(question, str) or not question.strip():
        raise ValueError("question: must be a non-empty string")
    parts = []
    if context and context.strip():
        parts.append(f"Context: {context.strip()}")
    parts.append(question.strip())
    if choices:
        parts.append("Options:")
        parts.extend(f"({option_letter(i)}) {str(c).strip()}" for i, c in enumerate(choices))
    return "\n".join(parts)


def build_messages(
    question: str,
    choices: Sequence[str] | None = None,
    context: str | None = None,
    num_images: int = 1,
) -> list[dict]:
    """Chat messages for one sample: the image placeholders first, then the text (Qwen-VL order)."""
    content: list[dict] = [{"type": "image"} for _ in range(num_images)]
    content.append({"type": "text", "text": format_question(question, choices, context)})
    return [{"role": "user", "content": content}]


def answer_target(answer: str) -> str:
    """The supervised answer sentence: ``Therefore, the answer is X.``"""
    return f"{ANSWER_PREFIX} {str(answer).strip()}."
