"""GQA (compositional questions over real images), in its Hugging Face and raw forms.

Public ids: ``lmms-lab/GQA`` on the hub (what lmms-eval reads): paired configs
``<split>_instructions`` (questions) and ``<split>_images`` (``id``, ``image``), joined on
``imageId``; and the raw GQA 1.2 release: ``questions1.2/<split>_questions.json``, a JSON
object keyed by question id, with images in ``images/<imageId>.jpg``. The evaluation split
is ``testdev_balanced`` (12,578 questions); ``split="test"`` means that split here, and
``train``/``validation`` mean ``train_balanced``/``val_balanced``::

    vedas.data.load("gqa", path="GQA/")           # testdev_balanced_{instructions,images}/*.parquet
    vedas.data.load("gqa", path="gqa_raw/")       # questions1.2/testdev_balanced_questions.json
    vedas.data.load("gqa", path="gqa_raw/questions1.2/testdev_balanced_questions.json")

Question schema: ``id``, ``imageId``, ``question``, ``answer`` (short, lower case),
``fullAnswer``, ``isBalanced``, ``groups`` {global, local}, ``entailed``, ``equivalent``,
``types`` {structural, semantic, detailed}, ``annotations``, ``semantic`` (the program as a
list of {operation, dependencies, argument}) and ``semanticStr``. One raw entry::

    "20968379": {"imageId": "n288870", "question": "Is the bed to the left of a pillow?",
                 "answer": "no", "fullAnswer": "No, the bed is to the right of a pillow.",
                 "semanticStr": "select: bed (20)->relate: pillow,to the left of,s (22)->exist: ? [1]",
                 "types": {"structural": "verify", "semantic": "rel", "detailed": "relVerify"}, ...}

Mapping: open-ended (no choices); ``answer`` is the short answer (what the GQA metrics
compare), ``fullAnswer`` goes to ``meta["full_answer"]``. GQA has no written chain of
thought: the program steps of ``semanticStr`` (split on ``->``) are the rationale, one per
paragraph, so :func:`~vedas.data.steps.split_steps` regroups them like any other rationale.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from PIL import Image

from vedas.data.images import ImageReader
from vedas.data.record import DataError, Dataset, Record
from vedas.data.rows import Row, collect
from vedas.data.sources import read_json, rows_of, split_files
from vedas.data.steps import split_steps

HUB_ID = "lmms-lab/GQA"
SPLIT_ALIASES = {"test": "testdev_balanced", "train": "train_balanced", "validation": "val_balanced"}
SPLIT_ALIASES["val"] = SPLIT_ALIASES["validation"]
META_FIELDS = ("imageId", "isBalanced", "types", "groups", "semanticStr")


def program_steps(semantic_str: str) -> list[str]:
    """``"select: bed (20)->exist: ? [1]"`` -> ``["select: bed (20)", "exist: ? [1]"]``."""
    return [op.strip() for op in semantic_str.split("->") if op.strip()]


class _ImageTable:
    """The ``<split>_images`` parquet table, read one row group at a time by image id.

    Only the ``id`` column is read up front: the train tables hold ~150k images, and a load
    with ``limit`` should not read them all.
    """

    def __init__(self, files: list[Path]) -> None:
        import pyarrow.parquet as pq

        self._files = [pq.ParquetFile(f) for f in files]
        self._where: dict[str, tuple[int, int, int]] = {}
        for f, parquet in enumerate(self._files):
            for group in range(parquet.num_row_groups):
                ids = parquet.read_row_group(group, columns=["id"]).column("id").to_pylist()
                for offset, image_id in enumerate(ids):
                    self._where[str(image_id)] = (f, group, offset)
        self._group_key: tuple[int, int] | None = None
        self._group: Any = None

    def cell(self, image_id: str) -> Any:
        """The HF ``Image`` cell of one image, or None if the table has no such id."""
        where = self._where.get(image_id)
        if where is None:
            return None
        f, group, offset = where
        if self._group_key != (f, group):
            self._group = self._files[f].read_row_group(group, columns=["image"]).column("image")
            self._group_key = (f, group)
        return self._group[offset].as_py()


def load(path: str | Path, split: str = "test", limit: int | None = None, skip_bad: bool = False) -> Dataset:
    """Questions of one split, with their images, from either form (module docstring)."""
    root = Path(path)
    split_name = SPLIT_ALIASES.get(split, split)
    if root.is_file() or not (root / f"{split_name}_instructions").is_dir():
        return _load_raw(root, split_name, limit, skip_bad)
    questions = split_files(root, [f"{split_name}_instructions/*.parquet"])
    table = _ImageTable(split_files(root, [f"{split_name}_images/*.parquet"]))
    reader = ImageReader()

    def image(row: Row, image_id: str) -> Image.Image:
        cell = table.cell(image_id)
        if cell is None:
            raise row.error("missing_image", f"imageId {image_id!r} is not in {split_name}_images")
        return reader(cell, row, field=f"{split_name}_images[{image_id}]", key=image_id)

    def rows() -> Iterator[Row]:
        for file in questions:
            yield from rows_of(file, "gqa")

    return collect(
        "gqa",
        split_name,
        rows(),
        _converter(image, split_name),
        limit=limit,
        skip_bad=skip_bad,
        path=str(root),
    )


def _load_raw(root: Path, split_name: str, limit: int | None, skip_bad: bool) -> Dataset:
    patterns = [f"{split_name}_questions.json", f"questions1.2/{split_name}_questions.json"]
    file = root if root.is_file() else split_files(root, patterns)[0]
    # questions1.2/ and images/ are siblings in the release.
    reader = ImageReader(bases=[file.parent, file.parent.parent])
    data = read_json(file, "gqa")

    def image(row: Row, image_id: str) -> Image.Image:
        return reader(f"images/{image_id}.jpg", row, field="imageId")

    def rows() -> Iterator[Row]:
        if isinstance(data, dict):
            for key, entry in data.items():
                yield Row(
                    entry if isinstance(entry, dict) else {},
                    source="gqa",
                    where=f"{file.name}[{key!r}]",
                    row_id=key,
                )
        elif isinstance(data, list):
            for index, entry in enumerate(data):
                yield Row(
                    entry if isinstance(entry, dict) else {}, source="gqa", where=f"{file.name}[{index}]"
                )
        else:
            raise DataError("bad_json", f"gqa: {file} must hold an object keyed by question id or a list")

    return collect(
        "gqa",
        split_name,
        rows(),
        _converter(image, split_name),
        limit=limit,
        skip_bad=skip_bad,
        path=str(root),
    )


def _converter(image: Callable[[Row, str], Image.Image], split_name: str) -> Callable[[Row], Record]:
    """Row -> Record for both forms; ``image(row, image_id)`` is the form's image lookup."""

    def convert(row: Row) -> Record:
        image_id = row.text("imageId")
        semantic_str = row.text("semanticStr", required=False)
        rationale = "\n\n".join(program_steps(semantic_str))
        meta = {k: row.data[k] for k in META_FIELDS if row.data.get(k) not in (None, "")}
        meta["full_answer"] = row.text("fullAnswer", required=False)
        return Record(
            id=row.text("id") if row.data.get("id") is not None else row.id,
            images=[image(row, image_id)],
            question=row.text("question"),
            answer=row.text("answer"),
            rationale=rationale,
            steps=split_steps(rationale),
            meta=meta,
            source=f"gqa/{split_name}",
        )

    return convert
