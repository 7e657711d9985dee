"""ScienceQA, in its Hugging Face form.

Public id: ``derek-thomas/ScienceQA`` (what Vedas and IVT-LR load; parquet, splits train
12,726 / validation 4,241 / test 4,241), laid out as ``data/<split>-*.parquet``::

    vedas.data.load("scienceqa", path="ScienceQA/", split="test")

Schema: ``image`` (HF ``Image`` cell, **None for text-only questions**), ``question``,
``choices`` (2-5 strings), ``answer`` (int8 index), ``hint`` (context, may be empty),
``task``, ``grade``, ``subject``, ``topic``, ``category``, ``skill``, ``lecture``,
``solution``. There is no id column. One row::

    {"image": {"bytes": b"\\x89PNG...", "path": None}, "question": "Which of these states is
     farthest north?", "choices": ["West Virginia", "Louisiana", "Arizona", "Oklahoma"],
     "answer": 0, "hint": "", "task": "closed choice", "grade": "grade2",
     "subject": "social science", "topic": "geography", "category": "Geography",
     "skill": "Read a map: cardinal directions", "lecture": "Maps have four cardinal
     directions ...", "solution": "To find the answer, look at the compass rose. ..."}

Mapping: rows without an image are skipped and counted under ``no_image`` (the reference
code keeps only image questions, i.e. the IMG subset); ``id`` is ``<split>-<row number>``
counted over the split's shards in order; ``answer`` becomes the option letter; ``context``
is the hint; ``rationale`` is the lecture and the solution joined by a blank line (either
alone when the other is empty), so the lecture and the solution become separate steps;
the remaining columns go to ``meta``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from vedas.data.images import ImageReader
from vedas.data.options import choice_answer
from vedas.data.record import Dataset, Record, SkipRow
from vedas.data.rows import Row, collect
from vedas.data.sources import rows_of, split_files
from vedas.data.steps import split_steps

HUB_ID = "derek-thomas/ScienceQA"
META_FIELDS = ("task", "grade", "subject", "topic", "category", "skill")


def load(path: str | Path, split: str = "test", limit: int | None = None, skip_bad: bool = False) -> Dataset:
    """Image questions of one split from an HF snapshot folder or one parquet file."""
    root = Path(path)
    files = [root] if root.is_file() else split_files(root, [f"data/{split}-*.parquet", f"{split}-*.parquet"])
    reader = ImageReader(bases=[files[0].parent])

    def rows() -> Iterator[Row]:
        number = 0
        for file in files:
            for row in rows_of(file, "scienceqa"):
                row.id = f"{split}-{number}"
                number += 1
                yield row

    def convert(row: Row) -> Record:
        image = row.data.get("image")
        if image is None or (isinstance(image, dict) and not image.get("bytes") and not image.get("path")):
            raise SkipRow("no_image")
        choices = row.strings("choices")
        answer, index = choice_answer(row, row.get("answer"), choices)
        parts = [row.text("lecture", required=False), row.text("solution", required=False)]
        rationale = "\n\n".join(p for p in parts if p)
        return Record(
            id=row.id,
            images=[reader(image, row)],
            question=row.text("question"),
            choices=choices,
            answer=answer,
            answer_index=index,
            context=row.text("hint", required=False),
            rationale=rationale,
            steps=split_steps(rationale),
            meta={k: row.data[k] for k in META_FIELDS if row.data.get(k) not in (None, "")},
            source=f"scienceqa/{split}",
        )

    return collect("scienceqa", split, rows(), convert, limit=limit, skip_bad=skip_bad, path=str(root))
