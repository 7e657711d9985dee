"""Cutting a rationale into curriculum steps (docs/design.md#curriculum), the one splitter every loader uses.

Rule:

1. Split on blank lines (``"\\n\\n"``, whitespace-only lines count as blank).
2. If that gives a single piece, fall back to sentences: newlines become spaces (as the
   reference code does) and the text is split after each period followed by a space.
   Unlike the reference code, the period stays on its sentence, so steps read as text.
3. Regroup the contiguous pieces into at most ``max_steps`` groups of near-equal size;
   the first ``n % max_steps`` groups get one extra piece (7 pieces -> 2, 2, 2, 1 for
   ``max_steps=4`` and 3, 2, 2 for ``max_steps=3``). Pieces of a group are re-joined with
   the separator they were split on.

An empty or whitespace-only rationale has no steps.

Example::

    >>> split_steps("There are 3 red squares.\\n\\nThere are 5 blue circles.\\n\\n5 - 3 = 2.")
    ['There are 3 red squares.', 'There are 5 blue circles.', '5 - 3 = 2.']
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_BLANK_LINE = re.compile(r"\n[ \t]*\n")
_SENTENCE_END = re.compile(r"(?<=\.) +")


def split_steps(text: str | None, max_steps: int = 4) -> list[str]:
    """At most ``max_steps`` contiguous steps of ``text`` (rule in the module docstring)."""
    if max_steps < 1:
        raise ValueError(f"max_steps must be at least 1, got {max_steps}")
    if text is None or not text.strip():
        return []
    text = text.replace("\r\n", "\n")
    pieces = [p.strip() for p in _BLANK_LINE.split(text) if p.strip()]
    separator = "\n\n"
    if len(pieces) == 1:
        flat = " ".join(pieces[0].split())
        pieces = [p.strip() for p in _SENTENCE_END.split(flat) if p.strip()]
        separator = " "
    return [separator.join(group) for group in regroup(pieces, max_steps)]


def regroup(pieces: Sequence[str], max_steps: int) -> list[list[str]]:
    """Contiguous groups of near-equal size, at most ``max_steps``, the first ones larger."""
    if max_steps < 1:
        raise ValueError(f"max_steps must be at least 1, got {max_steps}")
    count = min(len(pieces), max_steps)
    if count == 0:
        return []
    base, extra = divmod(len(pieces), count)
    groups, start = [], 0
    for i in range(count):
        size = base + (1 if i < extra else 0)
        groups.append(list(pieces[start : start + size]))
        start += size
    return groups
