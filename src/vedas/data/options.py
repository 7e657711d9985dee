"""Answer options written inside the question text, and option labels on choice strings.

Several benchmarks do not store choices as a list:

- MMStar: ``"Which ...?\\nOptions: A: The suitcase is on the book., B: The book is ..., C: ..."``
- MMVP (``Questions.csv``): an ``Options`` cell ``"(a) Open (b) Closed"``
- OneThinker / EasyR1: options appended under ``"Options:"``, one ``"A. ..."`` per line.

:func:`parse_options` reads all three: labels ``A:``, ``A.``, ``A)`` or ``(A)``, in either
case (fixed by the first label), must appear in order A, B, C, ... each at the start of the
text or after whitespace, a comma or a semicolon.
"""

from __future__ import annotations

import re

from vedas.data.rows import Row
from vedas.prompts import LETTERS, option_letter

_OPTIONS_MARKER = re.compile(r"\boptions?\s*:", re.IGNORECASE)


def _label(letter: str) -> re.Pattern[str]:
    # A label is "(A)" or "A" + one of ".:)", followed by whitespace or the end.
    return re.compile(rf"(?:^|(?<=[\s,;]))(?:\({letter}\)|{letter}[.:)])(?=\s|$)")


_LABELS = {c: _label(c) for c in LETTERS + LETTERS.lower()}
_LEADING_LABEL = re.compile(r"^\s*(?:\(([A-Za-z])\)|([A-Za-z])[.:)])\s+")


def parse_options(text: str) -> list[str]:
    """The option texts of a labelled list (module docstring); [] if fewer than two labels."""
    for alphabet in (LETTERS, LETTERS.lower()):
        spans: list[tuple[int, int]] = []
        pos = 0
        for letter in alphabet:
            match = _LABELS[letter].search(text, pos)
            if match is None:
                break
            spans.append((match.start(), match.end()))
            pos = match.end()
        if len(spans) >= 2:
            break
    else:
        return []
    # Options one per line: the last one ends at its line break (an instruction may follow).
    one_per_line = all("\n" in text[spans[i][1] : spans[i + 1][0]] for i in range(len(spans) - 1))
    options = []
    for i, (_, end) in enumerate(spans):
        stop = spans[i + 1][0] if i + 1 < len(spans) else len(text)
        chunk = text[end:stop]
        if one_per_line and i + 1 == len(spans):
            chunk = chunk.split("\n", 1)[0]
        options.append(chunk.strip().rstrip(",;").strip())
    return options


def split_question(text: str) -> tuple[str, list[str]]:
    """Split ``"question ... Options: A: x, B: y"`` into the question and its option texts.

    Without an ``Options:`` marker, or without at least two labels after it, the text is
    returned unchanged with no options.
    """
    markers = list(_OPTIONS_MARKER.finditer(text))
    if not markers:
        return text.strip(), []
    marker = markers[-1]
    options = parse_options(text[marker.end() :])
    if not options:
        return text.strip(), []
    return text[: marker.start()].strip(), options


def strip_label(option: str) -> tuple[str | None, str]:
    """``"B. red"`` -> ``("B", "red")``; an option without a label -> ``(None, text)``."""
    match = _LEADING_LABEL.match(option)
    if match is None:
        return None, option.strip()
    return (match.group(1) or match.group(2)).upper(), option[match.end() :].strip()


def answer_index(value: object, choices: list[str]) -> int | None:
    """The 0-based option an answer cell names, or None if it names none.

    Accepted forms, as the datasets write them: an option letter in either case (M3CoT,
    MMStar), ``"(a)"`` (MMVP), an integer index (ScienceQA), ``"B. red"``, or the exact
    text of one option (OneThinker answers).
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 <= value < len(choices) else None
    if not isinstance(value, str):
        return None
    text = value.strip()
    if len(text) == 1 and text.upper() in LETTERS:
        index = LETTERS.index(text.upper())
        return index if index < len(choices) else None
    # The label pattern wants whitespace after "(a)", hence the added space.
    letter, rest = strip_label(text + " ")
    if letter is not None:
        index = LETTERS.index(letter)
        if index < len(choices) and (not rest or rest.lower() == choices[index].strip().lower()):
            return index
        return None
    lowered = [c.strip().lower() for c in choices]
    return lowered.index(text.lower()) if lowered.count(text.lower()) == 1 else None


def choice_answer(row: Row, value: object, choices: list[str], field: str = "answer") -> tuple[str, int]:
    """``(letter, index)`` of the option ``value`` names; a DataError naming the row if none."""
    index = answer_index(value, choices)
    if index is None:
        raise row.error(
            "bad_field", f"{field} {value!r} names none of the {len(choices)} choices {choices!r}"
        )
    return option_letter(index), index
