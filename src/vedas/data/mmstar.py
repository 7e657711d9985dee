"""MMStar (vision-indispensable multiple choice), in its Hugging Face form.

Public id: ``Lin-Chen/MMStar``: one split, ``val``, 1,500 rows, one parquet file
(``mmstar.parquet``). ``split="test"`` (the default of :func:`vedas.data.load`) means
``val`` here, the only split there is::

    vedas.data.load("mmstar", path="MMStar/")
    vedas.data.load("mmstar", path="MMStar/mmstar.parquet")

Schema: ``index`` (int), ``question`` (str, the options are written **inside** it after
``Options:``), ``image`` (HF ``Image`` cell), ``answer`` (letter A-D), ``category`` (6 core
capabilities), ``l2_category`` (18 sub-axes), ``meta_info`` {source, split, image_path}.
One row::

    {"index": 0, "question": "Which option describe the object relationship in the image
     correctly?\\nOptions: A: The suitcase is on the book., B: The suitcase is beneath the
     cat., C: The suitcase is beneath the bed., D: The suitcase is beneath the book.",
     "image": {"bytes": b"\\xff\\xd8...", "path": None}, "answer": "A",
     "category": "coarse perception", "l2_category": "image scene and topic",
     "meta_info": {"source": "MMBench", "split": "val", "image_path": "images/0.jpg"}}

Mapping: ``id`` is ``str(index)``; the text before ``Options:`` is the question and the
labelled options after it are the choices (:func:`~vedas.data.options.split_question`);
``category``, ``l2_category`` and ``meta_info`` go to ``meta``. No rationale. The official
aggregate is a macro mean over ``l2_category`` means, so keep ``meta["l2_category"]``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from vedas.data.images import ImageReader
from vedas.data.options import choice_answer, split_question
from vedas.data.record import Dataset, Record
from vedas.data.rows import Row, collect
from vedas.data.sources import rows_of, split_files

HUB_ID = "Lin-Chen/MMStar"
META_FIELDS = ("category", "l2_category", "meta_info")


def load(path: str | Path, split: str = "test", limit: int | None = None, skip_bad: bool = False) -> Dataset:
    """The ``val`` split from an HF snapshot folder or the parquet file itself."""
    root = Path(path)
    split_name = "val" if split == "test" else split
    patterns = [f"{split_name}-*.parquet", f"data/{split_name}-*.parquet", "mmstar.parquet", "*.parquet"]
    files = [root] if root.is_file() else split_files(root, patterns)
    reader = ImageReader(bases=[files[0].parent])

    def rows() -> Iterator[Row]:
        for file in files:
            yield from rows_of(file, "mmstar", id_field="index")

    def convert(row: Row) -> Record:
        question, choices = split_question(row.text("question"))
        if not choices:
            raise row.error("missing_field", "field 'question' has no 'Options: A: ..., B: ...' list")
        answer, index = choice_answer(row, row.text("answer"), choices)
        return Record(
            id=row.text("index"),
            images=[reader(row.get("image"), row)],
            question=question,
            choices=choices,
            answer=answer,
            answer_index=index,
            meta={k: row.data[k] for k in META_FIELDS if row.data.get(k) not in (None, "")},
            source=f"mmstar/{split_name}",
        )

    return collect("mmstar", split_name, rows(), convert, limit=limit, skip_bad=skip_bad, path=str(root))
