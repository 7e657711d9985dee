"""Bad input: every failure names the file or field and the row, or is skipped and counted.

Run with ``.venv/bin/pytest -q tests/data/test_bad_input.py``. Each test breaks a private
copy of a real-schema fixture.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from vedas.data import DataError, Record, load
from vedas.data.images import to_rgb

Copy = Callable[[str], Path]


def rewrite_jsonl(path: Path, change: Callable[[list[dict]], None]) -> None:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    change(rows)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def assert_counted(ds: list[Record], summary: dict[str, int]) -> None:
    assert ds.summary == summary  # type: ignore[attr-defined]
    assert summary["read"] == summary["loaded"] + sum(
        v for k, v in summary.items() if k not in ("read", "loaded")
    )


# --------------------------------------------------------------------------- images


def test_corrupt_image_names_file_and_row(fixture_copy: Copy) -> None:
    root = fixture_copy("m3cot/raw")
    image = root / "data/images/geography-387.png"
    image.write_bytes(image.read_bytes()[:20])  # a truncated PNG
    with pytest.raises(DataError) as err:
        load("m3cot", path=root)
    assert err.value.kind == "bad_image"
    assert "geography-387" in str(err.value) and str(image) in str(err.value)

    ds = load("m3cot", path=root, skip_bad=True)
    assert [r.id for r in ds] == ["physical-commonsense-1424", "math-algebra-52"]
    assert_counted(ds, {"read": 3, "loaded": 2, "bad_image": 1})
    assert ds.skipped[0][0] == "bad_image" and "geography-387" in ds.skipped[0][1]


def test_missing_image_names_file_and_row(fixture_copy: Copy) -> None:
    root = fixture_copy("m3cot/raw")
    (root / "data/images/math-algebra-52.png").unlink()
    with pytest.raises(
        DataError, match=r"math-algebra-52.*image file not found: .*math-algebra-52\.png"
    ) as err:
        load("m3cot", path=root)
    assert err.value.kind == "missing_image" and err.value.row_id == "math-algebra-52"
    ds = load("m3cot", path=root, skip_bad=True)
    assert_counted(ds, {"read": 3, "loaded": 2, "missing_image": 1})


def test_corrupt_embedded_image_in_parquet(fixture_copy: Copy) -> None:
    root = fixture_copy("m3cot/hf")
    file = root / "data/test-00000-of-00001.parquet"
    table = pq.read_table(file)
    images = table.column("image").to_pylist()
    images[0] = {"bytes": b"\x89PNG\r\n\x1a\n broken", "path": images[0]["path"]}
    table = table.set_column(table.schema.get_field_index("image"), "image", [images])
    pq.write_table(table, file)
    with pytest.raises(
        DataError,
        match=r"physical-commonsense-1424.*cannot decode embedded image 'physical-commonsense-1424\.png'",
    ):
        load("m3cot", path=root)
    assert_counted(load("m3cot", path=root, skip_bad=True), {"read": 3, "loaded": 2, "bad_image": 1})


def test_gqa_image_id_missing_from_the_images_table(fixture_copy: Copy) -> None:
    root = fixture_copy("gqa/raw")
    (root / "images/n161313.jpg").unlink()
    with pytest.raises(DataError, match=r"'20602535'.*n161313\.jpg"):
        load("gqa", path=root)
    assert_counted(load("gqa", path=root, skip_bad=True), {"read": 3, "loaded": 2, "missing_image": 1})


@pytest.mark.parametrize(
    ("make", "corner"),
    [
        (lambda: Image.new("RGBA", (2, 2), (10, 20, 30, 0)), (255, 255, 255)),
        (lambda: Image.new("RGBA", (2, 2), (10, 20, 30, 255)), (10, 20, 30)),
        (lambda: Image.new("LA", (2, 2), (80, 0)), (255, 255, 255)),
        (lambda: Image.new("L", (2, 2), 80), (80, 80, 80)),
        (lambda: Image.new("1", (2, 2), 1), (255, 255, 255)),
        (lambda: Image.new("CMYK", (2, 2), (0, 0, 0, 0)), (255, 255, 255)),
    ],
)
def test_to_rgb_modes(make: Callable[[], Image.Image], corner: tuple[int, int, int]) -> None:
    out = to_rgb(make())
    assert out.mode == "RGB" and out.getpixel((0, 0)) == corner


def test_to_rgb_palette_with_transparency_goes_on_white() -> None:
    image = Image.new("P", (2, 2), 0)
    image.putpalette([0, 0, 0, 200, 0, 0] + [0] * 762)
    image.putpixel((1, 1), 1)
    image.info["transparency"] = 0
    out = to_rgb(image)
    assert out.getpixel((0, 0)) == (255, 255, 255) and out.getpixel((1, 1)) == (200, 0, 0)


# --------------------------------------------------------------------------- fields and rows


def test_missing_required_field_names_field_and_row(fixture_copy: Copy) -> None:
    root = fixture_copy("m3cot/raw")
    rewrite_jsonl(root / "data/test.jsonl", lambda rows: rows[1].pop("question"))
    with pytest.raises(
        DataError, match=r"m3cot row 'geography-387' \(test\.jsonl:2\): missing required field 'question'"
    ) as err:
        load("m3cot", path=root)
    assert err.value.kind == "missing_field"
    assert_counted(load("m3cot", path=root, skip_bad=True), {"read": 3, "loaded": 2, "missing_field": 1})


def test_missing_id_names_the_line(fixture_copy: Copy) -> None:
    root = fixture_copy("m3cot/raw")
    rewrite_jsonl(root / "data/test.jsonl", lambda rows: rows[2].pop("id"))
    with pytest.raises(DataError, match=r"row 'test\.jsonl:3': missing required field 'id'"):
        load("m3cot", path=root)


def test_answer_outside_the_options(fixture_copy: Copy) -> None:
    root = fixture_copy("m3cot/raw")
    rewrite_jsonl(root / "data/test.jsonl", lambda rows: rows[2].update(answer="E"))
    with pytest.raises(DataError, match=r"math-algebra-52.*answer 'E' names none of the 2 choices"):
        load("m3cot", path=root)


def test_bad_json_line_and_duplicate_id(fixture_copy: Copy) -> None:
    root = fixture_copy("m3cot/raw")
    file = root / "data/test.jsonl"
    lines = file.read_text().splitlines()
    file.write_text("\n".join([lines[0], "{not json", lines[0], lines[1]]) + "\n")
    with pytest.raises(DataError, match=r"test\.jsonl:2.*not valid JSON"):
        load("m3cot", path=root)
    ds = load("m3cot", path=root, skip_bad=True)
    assert [r.id for r in ds] == ["physical-commonsense-1424", "geography-387"]
    assert_counted(ds, {"read": 4, "loaded": 2, "bad_json": 1, "duplicate_id": 1})


def test_mmstar_question_without_options(fixture_copy: Copy) -> None:
    root = fixture_copy("mmstar")
    file = root / "mmstar.parquet"
    table = pq.read_table(file)
    questions = table.column("question").to_pylist()
    questions[1] = "How many apples are on the table?"
    table = table.set_column(table.schema.get_field_index("question"), "question", [questions])
    pq.write_table(table, file)
    with pytest.raises(DataError, match=r"mmstar row '1'.*no 'Options: A: \.\.\., B: \.\.\.' list"):
        load("mmstar", path=root)


def test_onethinker_reply_without_answer_tag(fixture_copy: Copy) -> None:
    root = fixture_copy("onethinker")
    file = root / "onethinker_sft_image.json"
    rows = json.loads(file.read_text())
    rows[1]["messages"][1]["content"] = "<think>The rod is 12 cm.</think> 12"
    file.write_text(json.dumps(rows))
    with pytest.raises(DataError, match=r"onethinker_sft_image-1.*no <answer>"):
        load("onethinker", path=root)
    ds = load("onethinker", path=root, skip_bad=True)
    assert_counted(ds, {"read": 4, "loaded": 1, "missing_field": 1, "grounding": 1, "video": 1})


def test_record_checks_its_own_invariants() -> None:
    image = Image.new("RGB", (2, 2))
    with pytest.raises(DataError, match="answer_index 0 does not match answer 'B'"):
        Record(id="x", images=[image], question="q?", choices=["a", "b"], answer="B", answer_index=0)
    with pytest.raises(DataError, match="RGB"):
        Record(id="x", images=[image.convert("L")], question="q?", answer="yes")
    with pytest.raises(DataError, match="no image"):
        Record(id="x", images=[], question="q?", answer="yes")
