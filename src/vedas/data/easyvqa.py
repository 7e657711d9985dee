"""easy-VQA: a small real VQA dataset that ships inside its PyPI package, usable offline.

Public id: the ``easy-vqa`` package on PyPI (``pip install easy-vqa==1.0``, a dev
dependency of vedas); 64x64 images of one coloured shape, 38,575 train / 9,673 test
questions over 4,000 / 1,000 images, 13 possible answers. Read through the package's own
API (``easy_vqa.get_test_questions()``, ``get_test_image_paths()``, ...)::

    vedas.data.load("easy_vqa", split="test", limit=100)

Schema: ``get_<split>_questions()`` returns three parallel lists (question texts, answers,
image ids); ``get_<split>_image_paths()`` maps image id -> PNG path. One row::

    ("what is the color of the triangle?", "red", 0)  +  {0: ".../easy_vqa/data/test/images/0.png"}

Mapping: open-ended (no choices); ``answer`` is one of the 13 words of
``easy_vqa.get_answers()``; ``id`` is ``<split>-<question number>``; the image id goes to
``meta["image_id"]``. Several questions share an image, which is decoded once and shared
between their records. No rationale.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from vedas.data.images import ImageReader
from vedas.data.record import Dataset, Record
from vedas.data.rows import Row, collect
from vedas.errors import UserError

PACKAGE = "easy-vqa"
SPLITS = ("train", "test")


def load(
    path: str | Path | None = None, split: str = "test", limit: int | None = None, skip_bad: bool = False
) -> Dataset:
    """Questions of one split from the installed ``easy_vqa`` package."""
    if path is not None:
        raise UserError("easy_vqa: the data ships inside the easy-vqa package; do not pass path=")
    if split not in SPLITS:
        raise UserError(f"easy_vqa: split must be one of {SPLITS}, got {split!r}")
    try:
        import easy_vqa
    except ImportError as exc:
        raise ImportError("easy_vqa: install the package with `pip install easy-vqa==1.0`") from exc
    if split == "test":
        texts, answers, image_ids = easy_vqa.get_test_questions()
        image_paths = easy_vqa.get_test_image_paths()
    else:
        texts, answers, image_ids = easy_vqa.get_train_questions()
        image_paths = easy_vqa.get_train_image_paths()
    reader = ImageReader()

    def rows() -> Iterator[Row]:
        for number, (text, answer, image_id) in enumerate(zip(texts, answers, image_ids)):
            data = {"question": text, "answer": answer, "image_id": image_id}
            yield Row(data, source="easy_vqa", where=f"{split} question {number}", row_id=f"{split}-{number}")

    def convert(row: Row) -> Record:
        image_id = row.get("image_id")
        image_path = image_paths.get(image_id)
        if image_path is None:
            raise row.error("missing_image", f"image id {image_id!r} has no file in the easy_vqa package")
        return Record(
            id=row.id,
            images=[reader(Path(image_path), row)],
            question=row.text("question"),
            answer=row.text("answer"),
            meta={"image_id": image_id},
            source=f"easy_vqa/{split}",
        )

    return collect("easy_vqa", split, rows(), convert, limit=limit, skip_bad=skip_bad, path=PACKAGE)
