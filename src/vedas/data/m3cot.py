"""M3CoT (multi-domain multi-step multimodal chain of thought), and the synthetic benchmark.

Public id: ``LightChen2333/M3CoT`` on the Hugging Face hub (parquet, splits train 7,863 /
validation 1,108 / test 2,318), and the authors' raw release (a zip with
``data/{train,dev,test}.jsonl`` and ``data/images/``), which is what the Vedas reference
code reads. Both forms load here::

    vedas.data.load("m3cot", path="M3CoT/")                # HF snapshot: data/test-*.parquet
    vedas.data.load("m3cot", path="m3cot_raw/", split="dev")  # raw: data/dev.jsonl + images
    vedas.data.load("m3cot", path="m3cot_raw/data/test.jsonl")

Schema (12 fields; the raw JSONL stores ``image`` as a relative path, backslashes and
all, the parquet as an HF ``Image`` cell ``{"bytes", "path"}``). One raw row::

    {"id": "physical-commonsense-1424", "category": "physical-commonsense",
     "image_id": "physical-commonsense-1424", "question": "Which tool is used to ...?",
     "choices": ["hammer", "saw", "drill", "wrench"], "context": "", "answer": "B",
     "rationale": "The image shows a plank. A saw cuts wood. ...", "split": "test",
     "image": "data\\\\images\\\\physical-commonsense-1424.png", "domain": "commonsense",
     "topic": "physical-commonsense"}

Mapping: ``answer`` is the option letter; ``rationale`` is kept whole and cut into steps by
:func:`~vedas.data.steps.split_steps`; ``category``, ``image_id``, ``split``, ``domain``
and ``topic`` go to ``meta``. Split names: the raw release says ``dev`` where the hub says
``validation``; either name finds either file.

The synthetic benchmark (:mod:`vedas.data.synth`) is written in this raw schema and loads
through :func:`load` with ``name="synthetic"``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from vedas.data.images import ImageReader
from vedas.data.options import choice_answer
from vedas.data.record import Dataset, Record
from vedas.data.rows import Row, collect
from vedas.data.sources import rows_of, split_files
from vedas.data.steps import split_steps

HUB_ID = "LightChen2333/M3CoT"
META_FIELDS = ("category", "image_id", "split", "domain", "topic")
_SPLIT_ALIASES = {"validation": ("validation", "dev", "val"), "dev": ("dev", "validation", "val")}
_SPLIT_ALIASES["val"] = _SPLIT_ALIASES["validation"]


def patterns(split: str) -> list[str]:
    """Where a split's file may sit in a raw release or an HF snapshot."""
    out = []
    for name in _SPLIT_ALIASES.get(split, (split,)):
        out += [f"{name}.jsonl", f"data/{name}.jsonl", f"{name}-*.parquet", f"data/{name}-*.parquet"]
    return out


def load(
    path: str | Path,
    split: str = "test",
    limit: int | None = None,
    skip_bad: bool = False,
    name: str = "m3cot",
) -> Dataset:
    """Records of one split from a folder (raw release or HF snapshot) or one file."""
    root = Path(path)
    files = [root] if root.is_file() else split_files(root, patterns(split))
    # Raw paths are relative to the release root (data/images/...), one level above the JSONL.
    reader = ImageReader(bases=[files[0].parent, files[0].parent.parent])

    def rows() -> Iterator[Row]:
        for file in files:
            yield from rows_of(file, name)

    def convert(row: Row) -> Record:
        choices = row.strings("choices")
        answer, index = choice_answer(row, row.text("answer"), choices)
        rationale = row.text("rationale", required=False)
        return Record(
            id=row.text("id"),
            images=[reader(row.get("image"), row)],
            question=row.text("question"),
            choices=choices,
            answer=answer,
            answer_index=index,
            context=row.text("context", required=False),
            rationale=rationale,
            steps=split_steps(rationale),
            meta={k: row.data[k] for k in META_FIELDS if row.data.get(k) not in (None, "")},
            source=f"{name}/{split}",
        )

    return collect(name, split, rows(), convert, limit=limit, skip_bad=skip_bad, path=str(root))
