"""MMVP ("CLIP-blind" image pairs), in its original and Hugging Face forms, and pair accuracy.

Public ids: the original release ``tsb0601/MMVP`` (``MMVP/MMVP`` on the hub): a
``Questions.csv`` next to a folder ``MMVP Images/<Index>.jpg``; and ``lmms-lab-eval/MMVP``
(what lmms-eval reads: the same columns plus an ``image`` cell, split ``train``). 300
questions = 150 pairs: rows ``2k-1`` and ``2k`` ask the same question about two images with
opposite answers. MMVP has one split; any ``split`` name loads it::

    vedas.data.load("mmvp", path="MMVP/")                # Questions.csv + "MMVP Images/"
    vedas.data.load("mmvp", path="mmvp_hf/")             # *.parquet

CSV schema: ``Index`` (1-based), ``Question``, ``Options`` (one string, ``"(a) Open (b)
Closed"``), ``Correct Answer`` (``"(a)"`` or ``"(b)"``). One row::

    Index,Question,Options,Correct Answer
    1,Are the butterfly's wings closer to being open or closed?,(a) Open (b) Closed,(a)

The HF form has the same fields (lmms-eval also accepts lower-case names: ``index``,
``question``, ``options``, ``answer``) and the image in ``image``.

Mapping: ``id`` is ``str(Index)``; options parsed from the ``(a) ... (b) ...`` string; the
answer ``(a)`` becomes ``A``. Two pairs of the original release carry swapped answers
(Index 99/100, 279/280; tsb0601/MMVP issue 30, fixed in lmms-eval); the fix is applied
here as in lmms-eval, and ``meta["original_answer"]`` keeps what the file says.
:func:`pair_accuracy` is MMVP's headline metric: a pair counts only if both questions are
answered correctly.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from vedas.data.images import ImageReader
from vedas.data.options import choice_answer, parse_options
from vedas.data.record import Dataset, Record
from vedas.data.rows import Row, collect
from vedas.data.sources import rows_of, split_files

HUB_ID = "lmms-lab-eval/MMVP"
IMAGE_FOLDER = "MMVP Images"
# Index -> corrected answer letter (visual check in tsb0601/MMVP issue 30).
ANSWER_FIXES = {99: "B", 100: "A", 279: "B", 280: "A"}


def load(path: str | Path, split: str = "test", limit: int | None = None, skip_bad: bool = False) -> Dataset:
    """All 300 questions from the original CSV release or the HF parquet form."""
    root = Path(path)
    files = (
        [root]
        if root.is_file()
        else split_files(root, ["Questions.csv", "*.csv", "*.parquet", "data/*.parquet"])
    )
    reader = ImageReader(bases=[files[0].parent])

    def rows() -> Iterator[Row]:
        for file in files:
            yield from rows_of(file, "mmvp", id_field="Index")

    def convert(row: Row) -> Record:
        index_text = row.text("Index", "index", "idx")
        if not index_text.isdigit():
            raise row.error("bad_field", f"field 'Index' must be a positive integer, got {index_text!r}")
        index = int(index_text)
        choices = parse_options(row.text("Options", "options"))
        if len(choices) < 2:
            raise row.error("bad_field", "field 'Options' must read '(a) ... (b) ...'")
        original, _ = choice_answer(
            row, row.text("Correct Answer", "answer"), choices, field="Correct Answer"
        )
        answer = ANSWER_FIXES.get(index, original)
        image = row.data.get("image")
        return Record(
            id=str(index),
            images=[reader(image if image is not None else f"{IMAGE_FOLDER}/{index}.jpg", row)],
            question=row.text("Question", "question"),
            choices=choices,
            answer=answer,
            answer_index=ord(answer) - ord("A"),
            meta={"index": index, "pair": (index - 1) // 2, "original_answer": original},
            source="mmvp",
        )

    return collect("mmvp", split, rows(), convert, limit=limit, skip_bad=skip_bad, path=str(root))


@dataclass(frozen=True)
class PairScore:
    """MMVP pair accuracy; ``incomplete`` pairs (one question missing) are not in ``pairs``."""

    accuracy: float
    pairs: int
    incomplete: int


def pair_accuracy(records: Sequence[Record], correct: Sequence[bool]) -> PairScore:
    """Share of pairs (``meta["pair"]``) whose two questions are both answered correctly."""
    if len(records) != len(correct):
        raise ValueError(f"got {len(records)} records but {len(correct)} correctness flags")
    by_pair: dict[int, list[bool]] = {}
    for record, ok in zip(records, correct):
        if "pair" not in record.meta:
            raise ValueError(f"record {record.id!r} has no meta['pair']: not an MMVP record")
        by_pair.setdefault(int(record.meta["pair"]), []).append(bool(ok))
    complete = [flags for flags in by_pair.values() if len(flags) == 2]
    accuracy = sum(all(flags) for flags in complete) / len(complete) if complete else 0.0
    return PairScore(accuracy=accuracy, pairs=len(complete), incomplete=len(by_pair) - len(complete))
