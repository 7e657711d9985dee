"""The canonical record every loader returns, and the list that says what was skipped.

Every dataset, whatever its raw format, becomes a list of :class:`Record`::

    Record(id="physical-commonsense-1424", images=[<PIL RGB image>],
           question="Which object is the heaviest?", choices=["a feather", "a brick"],
           answer="B", answer_index=1, context="", rationale="A brick is ...",
           steps=["A brick is ..."], meta={"domain": "commonsense", ...}, source="m3cot/test")

- ``answer`` is an option letter ("A", "B", ...) when ``choices`` is non-empty, and a short
  string (GQA, easy-vqa) otherwise; ``answer_index`` is the 0-based index of the letter, or
  None for open-ended questions.
- ``images`` are decoded and converted to RGB when the dataset is loaded, so a corrupt or
  missing file fails at load time, naming the file and the row (``vedas.data.images``).
- ``rationale`` is the raw chain of thought ("" where the dataset has none) and ``steps``
  the curriculum steps cut from it by :func:`vedas.data.steps.split_steps`.

A load returns a :class:`Dataset`: a plain list of records that also carries ``summary``
(rows read, records loaded, and one count per skip reason) so nothing is dropped without a
count. Bad rows raise :class:`DataError`; rows left out by design (a ScienceQA question
without an image, a OneThinker video) raise :class:`SkipRow` and are always counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from vedas.errors import UserError
from vedas.prompts import option_letter


class DataError(UserError):
    """A row that cannot become a record: missing field, bad value, unreadable image.

    ``kind`` is the short reason used as the skip counter's key when the load was asked to
    skip bad rows (``missing_field``, ``bad_field``, ``missing_image``, ``bad_image``, ...).
    """

    def __init__(self, kind: str, message: str, row_id: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.row_id = row_id


class SkipRow(Exception):
    """A row that is valid but left out by design; ``reason`` is its counter's key."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Record:
    """One question about one or more images, in the form every part of vedas reads."""

    id: str
    images: list[Image.Image]
    question: str
    choices: list[str] = field(default_factory=list)
    answer: str = ""
    answer_index: int | None = None
    context: str = ""
    rationale: str = ""
    steps: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    def __post_init__(self) -> None:
        # Loaders build records inside the row loop, so a violated invariant here surfaces
        # as a DataError naming the row, exactly like a missing field would.
        def bad(detail: str) -> DataError:
            return DataError("bad_field", f"{self.source or 'record'} row {self.id!r}: {detail}", self.id)

        if not isinstance(self.id, str) or not self.id:
            raise DataError("bad_field", f"{self.source or 'record'}: record id must be a non-empty string")
        if not isinstance(self.question, str) or not self.question.strip():
            raise bad("field 'question' is empty")
        if not isinstance(self.answer, str) or not self.answer.strip():
            raise bad("field 'answer' is empty")
        if not self.images:
            raise bad("no image")
        for image in self.images:
            if not isinstance(image, Image.Image) or image.mode != "RGB":
                raise bad(f"images must be RGB PIL images, got {image!r}")
        if self.choices:
            if len(self.choices) < 2:
                raise bad(f"a multiple-choice question needs at least 2 choices, got {self.choices!r}")
            letters = [option_letter(i) for i in range(len(self.choices))]
            if self.answer not in letters:
                raise bad(f"answer {self.answer!r} is not one of the option letters {letters}")
            if self.answer_index != letters.index(self.answer):
                raise bad(f"answer_index {self.answer_index} does not match answer {self.answer!r}")
        elif self.answer_index is not None:
            raise bad("answer_index is set but the question has no choices")

    @property
    def is_multiple_choice(self) -> bool:
        return bool(self.choices)


class Dataset(list[Record]):
    """The records of one load, plus what was read and skipped.

    ``summary`` always has ``read`` (raw rows looked at) and ``loaded`` (records returned);
    every other key is a skip reason with its count, so
    ``summary["read"] == summary["loaded"] + sum(skip counts)``. ``skipped_rows`` keeps one
    ``{"id", "reason", "message"}`` per skipped row for auditing (``id`` None when the row had
    none); ``skipped`` is the same as ``(reason, message)`` pairs.
    """

    def __init__(self, name: str, split: str, path: str | None = None) -> None:
        super().__init__()
        self.name = name
        self.split = split
        self.path = path
        self.summary: dict[str, int] = {"read": 0, "loaded": 0}
        self.skipped_rows: list[dict[str, str | None]] = []

    @property
    def skipped(self) -> list[tuple[str, str]]:
        return [(str(r["reason"]), str(r["message"])) for r in self.skipped_rows]

    def skip(self, reason: str, message: str, row_id: str | None) -> None:
        """Count one row left out (not loaded) under ``reason``."""
        self.summary[reason] = self.summary.get(reason, 0) + 1
        self.skipped_rows.append({"id": row_id, "reason": reason, "message": message})

    def drop(self, reasons: dict[str, tuple[str, str]]) -> None:
        """Take loaded records out, by id: ``reasons[id] = (reason, message)``; counted like load-time skips."""
        kept = [r for r in self if r.id not in reasons]
        for rid, (reason, message) in reasons.items():
            self.skip(reason, message, rid)
        self[:] = kept
        self.summary["loaded"] = len(self)

    @property
    def skip_counts(self) -> dict[str, int]:
        return {k: v for k, v in self.summary.items() if k not in ("read", "loaded")}

    def describe(self) -> str:
        """One line: what was loaded from where, and what was skipped and why."""
        skips = ", ".join(f"{k} {v}" for k, v in self.skip_counts.items()) or "none"
        where = f" from {self.path}" if self.path else ""
        return (
            f"{self.name} ({self.split}){where}: {self.summary['loaded']} loaded of "
            f"{self.summary['read']} rows read; skipped: {skips}"
        )
