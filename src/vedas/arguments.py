"""The checks at the door of ``VedasModel.generate`` and ``prepare``: the batch arguments' types and lengths.

    from vedas.arguments import check_batch
    check_batch(images, questions, choices, contexts)   # InputError naming the argument, or None

``generate`` takes a *batch*: ``questions`` a list of strings, and ``images``, ``choices`` and
``contexts`` one entry per question. Passing one question or one image bare is the usual
slip (``vm.generate([img], "How many?")``, ``vm.generate(img, ["How many?"])``); without these
checks it surfaced deep inside as "lengths differ (1 vs 9)" or "a PNG has no len()". Each
message says what was passed and what is expected, and how to wrap a single sample.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from PIL import Image

from vedas.errors import InputError

IMAGE_ENTRY = "a PIL image, a path, a list of them, or None"


def _kind(value: Any) -> str:
    if isinstance(value, Image.Image):
        return f"a PIL image ({value.width}×{value.height})"
    if isinstance(value, str):
        return f"a str ({value[:40]!r}{'…' if len(value) > 40 else ''})"
    return f"a {type(value).__name__}"


def _is_list(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes))


MAX_CHOICES = 26
"""Options are lettered A–Z (:data:`vedas.engine.prompts.LETTERS`)."""


def check_text(name: str, text: str, index: int | None = None) -> None:
    """An InputError naming ``name`` when ``text`` is not valid Unicode: a command-line argument in
    another encoding reaches Python as lone surrogates (PEP 383), which no tokenizer can encode."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        byte = ord(text[e.start]) - 0xDC00 if 0xDC80 <= ord(text[e.start]) <= 0xDCFF else None
        what = f"byte 0x{byte:02x}" if byte is not None else f"code point U+{ord(text[e.start]):04X}"
        raise InputError(
            f"{name}: not valid UTF-8 ({what} at character {e.start}); pass the text in UTF-8",
            index=index,
        ) from None


def check_questions(questions: Any) -> None:
    if not _is_list(questions):
        hint = f"; for one question pass [{questions!r}]" if isinstance(questions, str) else ""
        raise InputError(
            f"questions: expected a list of strings, one per sample; got {_kind(questions)}{hint}"
        )
    if not questions:
        raise InputError("questions: the batch is empty (expected at least one question)")
    for i, q in enumerate(questions):
        if not isinstance(q, str) or not q.strip():
            raise InputError(f"questions[{i}]: must be a non-empty string, got {q!r}", index=i)
        check_text(f"questions[{i}]", q, i)


def check_images(images: Any, n: int) -> None:
    if not _is_list(images):
        hint = "; for one sample pass [image]" if isinstance(images, (Image.Image, str, os.PathLike)) else ""
        raise InputError(
            f"images: expected a list with one entry per question ({IMAGE_ENTRY}); got {_kind(images)}{hint}"
        )
    if len(images) != n:
        raise InputError(
            f"images: {len(images)} entries for {n} questions; expected one entry per question ({IMAGE_ENTRY})"
        )
    for i, item in enumerate(images):
        for x in item if isinstance(item, (list, tuple)) else [item]:
            if x is not None and not isinstance(x, (Image.Image, str, os.PathLike)):
                raise InputError(f"images[{i}]: expected {IMAGE_ENTRY}; got {_kind(x)}", index=i)


def check_per_question(name: str, values: Any, n: int, entry: str, nested: bool) -> None:
    """``values`` (``choices`` or ``contexts``): None, or one entry per question, each None or ``entry``."""
    if values is None:
        return
    if not _is_list(values):
        raise InputError(
            f"{name}: expected None or a list with one entry per question ({entry} or None); got {_kind(values)}"
        )
    flat_strings = nested and values and all(isinstance(v, str) for v in values)
    if len(values) != n:
        hint = f"; for one question pass [{list(values)!r}]" if flat_strings and n == 1 else ""
        raise InputError(
            f"{name}: {len(values)} entries for {n} questions; expected one entry per question{hint}"
        )
    for i, v in enumerate(values):
        _check_entry(f"{name}[{i}]", v, i, entry, nested)


def _check_entry(where: str, v: Any, i: int, entry: str, nested: bool) -> None:
    """One entry of ``choices`` (a list of at most 26 strings) or ``contexts`` (a string), or None."""
    if v is None:
        return
    ok = _is_list(v) and all(isinstance(c, str) for c in v) if nested else isinstance(v, str)
    if not ok:
        raise InputError(f"{where}: expected {entry} or None; got {_kind(v)}", index=i)
    if nested and len(v) > MAX_CHOICES:
        raise InputError(f"{where}: {len(v)} options; at most {MAX_CHOICES} can be lettered (A–Z)", index=i)
    for text in v if nested else [v]:
        check_text(where, text, i)


def check_batch(images: Any, questions: Any, choices: Any = None, contexts: Any = None) -> None:
    """The batch arguments of ``generate``/``prepare``, checked; an InputError says what and where."""
    check_questions(questions)
    n = len(questions)
    check_images(images, n)
    check_per_question("choices", choices, n, "a list of option strings", nested=True)
    check_per_question("contexts", contexts, n, "a string", nested=False)


__all__ = ["MAX_CHOICES", "check_batch", "check_text"]
