"""Every dataset loader on its real-schema fixture, and ``vedas.data.load`` itself.

Run with ``.venv/bin/pytest -q tests/data/test_loaders.py``. The easy-vqa test reads the
real dataset from the installed ``easy_vqa`` package.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from vedas.data import Dataset, Record, load
from vedas.data.mmvp import pair_accuracy

RED, WHITE, PALETTE_BLUE, GREY = (200, 30, 30), (255, 255, 255), (0, 128, 255), (90, 90, 90)


def pixel(record: Record, xy: tuple[int, int] = (0, 0)) -> tuple[int, ...]:
    return record.images[0].getpixel(xy)


def check_accounting(ds: Dataset) -> None:
    """Nothing dropped without a count, and every image an RGB PIL image."""
    assert ds.summary["read"] == ds.summary["loaded"] + sum(ds.skip_counts.values())
    assert ds.summary["loaded"] == len(ds)
    assert all(im.mode == "RGB" for r in ds for im in r.images)


# --------------------------------------------------------------------------- M3CoT


def test_m3cot_parquet(fixtures: Path) -> None:
    ds = load("m3cot", path=fixtures / "m3cot/hf")
    check_accounting(ds)
    assert [r.id for r in ds] == ["physical-commonsense-1424", "geography-387", "math-algebra-52"]
    first = ds[0]
    assert first.choices == ["hammer", "saw", "drill", "wrench"]
    assert (first.answer, first.answer_index) == ("B", 1)
    assert first.source == "m3cot/test"
    assert first.meta == {
        "category": "physical-commonsense",
        "image_id": "physical-commonsense-1424",
        "split": "test",
        "domain": "commonsense",
        "topic": "physical-commonsense",
    }
    assert len(first.steps) == 4 and first.steps[-1] == "Only the saw cuts through wood."
    assert pixel(first) == RED
    # RGBA: the transparent right half lands on white, not on the black it stores.
    assert pixel(ds[1], (0, 0)) == (255, 0, 0) and pixel(ds[1], (3, 0)) == WHITE
    assert pixel(ds[2]) == PALETTE_BLUE
    assert ds[1].context == "The map shows the United States."
    assert ds[2].rationale == "" and ds[2].steps == []


def test_m3cot_raw_jsonl_matches_parquet(fixtures: Path) -> None:
    raw = load("m3cot", path=fixtures / "m3cot/raw")
    hf = load("m3cot", path=fixtures / "m3cot/hf")
    check_accounting(raw)
    for a, b in zip(raw, hf):
        assert (a.id, a.question, a.choices, a.answer, a.steps, a.meta) == (
            b.id,
            b.question,
            b.choices,
            b.answer,
            b.steps,
            b.meta,
        )
    # Row 2 stores its path with backslashes; row 3 is a grayscale PNG.
    assert pixel(raw[1], (3, 0)) == WHITE
    assert pixel(raw[2]) == GREY


def test_m3cot_raw_dev_split_and_single_file(fixtures: Path) -> None:
    dev = load("m3cot", path=fixtures / "m3cot/raw", split="validation")
    assert [r.id for r in dev] == ["physical-commonsense-77"] and dev[0].source == "m3cot/validation"
    single = load("m3cot", path=fixtures / "m3cot/raw/data/test.jsonl", limit=2)
    assert [r.id for r in single] == ["physical-commonsense-1424", "geography-387"]
    assert single.summary == {"read": 2, "loaded": 2}


# --------------------------------------------------------------------------- ScienceQA


def test_scienceqa_skips_and_counts_imageless_rows(fixtures: Path) -> None:
    ds = load("scienceqa", path=fixtures / "scienceqa")
    check_accounting(ds)
    assert ds.summary == {"read": 4, "loaded": 3, "no_image": 1}
    assert [r.id for r in ds] == ["test-0", "test-2", "test-3"]
    assert ds.skipped == [("no_image", "scienceqa row 'test-1': no_image")]
    first = ds[0]
    assert (first.answer, first.answer_index) == ("A", 0)
    assert first.context == "Look at the compass rose on the map."
    assert first.rationale.startswith("Maps have four cardinal directions")
    assert first.rationale.endswith("West Virginia is farthest north.")
    assert first.steps[1] == "To find the answer, look at the compass rose. West Virginia is farthest north."
    assert first.meta["skill"] == "Read a map: cardinal directions"
    # Empty lecture: the solution alone is the rationale (sentence fallback gives two steps).
    assert ds[1].rationale.startswith("The snowshoe hare") and len(ds[1].steps) == 2
    assert ds[2].context == "" and len(ds[2].steps) == 3
    assert pixel(ds[1]) == (60, 60, 60) and pixel(ds[2]) == PALETTE_BLUE


# --------------------------------------------------------------------------- GQA


@pytest.mark.parametrize("form", ["hf", "raw"])
def test_gqa_both_forms(fixtures: Path, form: str) -> None:
    ds = load("gqa", path=fixtures / "gqa" / form)
    check_accounting(ds)
    assert [r.id for r in ds] == ["20968379", "201640614", "20602535"]
    first = ds[0]
    assert first.choices == [] and first.answer_index is None
    assert first.answer == "no"
    assert first.meta["full_answer"] == "No, the bed is to the right of a pillow."
    assert first.meta["imageId"] == "n288870"
    assert first.steps == ["select: bed (20)", "relate: pillow,to the left of,s (22)", "exist: ? [1]"]
    assert first.source == "gqa/testdev_balanced"
    # Two questions on one image share one decoded image.
    assert ds[0].images[0] is ds[1].images[0]
    assert ds[2].images[0].size == (6, 6)


def test_gqa_raw_json_file_path(fixtures: Path) -> None:
    ds = load("gqa", path=fixtures / "gqa/raw/questions1.2/testdev_balanced_questions.json", limit=1)
    assert ds[0].question == "Is the bed to the left of a pillow?"


# --------------------------------------------------------------------------- MMStar


def test_mmstar_options_inside_the_question(fixtures: Path) -> None:
    ds = load("mmstar", path=fixtures / "mmstar")
    check_accounting(ds)
    first = ds[0]
    assert first.id == "0" and first.source == "mmstar/val"
    assert first.question == "Which option describe the object relationship in the image correctly?"
    assert first.choices == [
        "The suitcase is on the book.",
        "The suitcase is beneath the cat.",
        "The suitcase is beneath the bed.",
        "The suitcase is beneath the book.",
    ]
    assert first.answer == "A"
    assert ds[1].choices == ["1", "2", "3", "4"] and (ds[1].answer, ds[1].answer_index) == ("C", 2)
    assert ds[1].meta["l2_category"] == "object counting"
    assert ds[1].meta["meta_info"]["source"] == "SEEDBench_IMG"


# --------------------------------------------------------------------------- MMVP


def test_mmvp_csv_with_answer_fixes(fixtures: Path) -> None:
    ds = load("mmvp", path=fixtures / "mmvp")
    check_accounting(ds)
    assert [r.id for r in ds] == ["1", "2", "99", "100"]
    assert ds[0].choices == ["Open", "Closed"]
    assert [r.answer for r in ds] == ["A", "B", "B", "A"]  # 99/100 corrected
    assert [r.meta["original_answer"] for r in ds] == ["A", "B", "A", "B"]
    assert [r.meta["pair"] for r in ds] == [0, 0, 49, 49]
    assert ds[0].images[0].size == (8, 8)


def test_mmvp_hf_form(fixtures: Path) -> None:
    ds = load("mmvp", path=fixtures / "mmvp_hf")
    assert [(r.id, r.answer, r.choices) for r in ds] == [
        ("1", "A", ["Open", "Closed"]),
        ("2", "B", ["Open", "Closed"]),
    ]
    assert pixel(ds[1]) == (10, 10, 12)


def test_mmvp_pair_accuracy(fixtures: Path) -> None:
    ds = load("mmvp", path=fixtures / "mmvp")
    score = pair_accuracy(ds, [True, True, True, False])
    assert (score.accuracy, score.pairs, score.incomplete) == (0.5, 2, 0)
    partial = pair_accuracy(ds[:3], [True, True, True])
    assert (partial.accuracy, partial.pairs, partial.incomplete) == (1.0, 1, 1)
    with pytest.raises(ValueError, match="3 records but 2"):
        pair_accuracy(ds[:3], [True, True])


# --------------------------------------------------------------------------- OneThinker


def test_onethinker_sft(fixtures: Path) -> None:
    ds = load("onethinker", path=fixtures / "onethinker", split="train")
    check_accounting(ds)
    assert ds.summary == {"read": 4, "loaded": 2, "grounding": 1, "video": 1}
    mcq, numeric = ds
    assert mcq.id == "onethinker_sft_image-0"
    assert mcq.question == "How many apples are left after two are eaten?"
    assert mcq.choices == ["2", "3", "5"] and mcq.answer == "B"
    assert mcq.steps == [
        "There are 5 apples on the plate.",
        "Two of them are eaten.",
        "5 - 2 = 3, which is option B.",
    ]
    assert numeric.choices == [] and numeric.answer == "12"
    assert numeric.rationale == "The rod starts at 0 and ends at 12 on the ruler."
    assert pixel(numeric) == GREY


def test_onethinker_rl(fixtures: Path) -> None:
    ds = load("onethinker", path=fixtures / "onethinker/onethinker_rl_train.json")
    assert ds.summary == {"read": 4, "loaded": 2, "grounding": 1, "video": 1}
    mcq, numeric = ds
    assert mcq.choices == ["red", "blue", "green"] and mcq.answer == "B"
    assert mcq.question == "Which colour is the largest shape?"
    assert numeric.answer == "4" and numeric.meta == {"problem_type": "numerical", "data_type": "image"}


# --------------------------------------------------------------------------- easy-vqa (real data)


def test_easy_vqa_from_the_installed_package() -> None:
    import easy_vqa

    ds = load("easy-vqa", split="test", limit=5)
    check_accounting(ds)
    assert len(ds) == 5 and ds.summary == {"read": 5, "loaded": 5}
    texts, answers, image_ids = easy_vqa.get_test_questions()
    assert [r.question for r in ds] == texts[:5]
    assert [r.answer for r in ds] == answers[:5]
    assert all(r.answer in easy_vqa.get_answers() and r.choices == [] for r in ds)
    assert ds[0].images[0].size == (64, 64) and ds[0].meta["image_id"] == image_ids[0]
    train = load("easy_vqa", split="train", limit=2)
    assert [r.id for r in train] == ["train-0", "train-1"]


def test_easy_vqa_rejects_a_path_and_unknown_splits(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="path="):
        load("easy_vqa", path=tmp_path)
    with pytest.raises(ValueError, match="split must be one of"):
        load("easy_vqa", split="validation")


# --------------------------------------------------------------------------- load()


def test_unknown_dataset_lists_the_valid_names() -> None:
    with pytest.raises(ValueError, match=r"unknown dataset 'coco'.*m3cot.*synthetic"):
        load("coco")


def test_datasets_other_than_easy_vqa_need_a_path() -> None:
    with pytest.raises(ValueError, match=r"m3cot: pass path=.*LightChen2333/M3CoT"):
        load("m3cot")


@pytest.mark.parametrize("limit", [0, -1, 2.5, True])
def test_limit_must_be_a_positive_integer(fixtures: Path, limit: object) -> None:
    with pytest.raises(ValueError, match="limit"):
        load("m3cot", path=fixtures / "m3cot/raw", limit=limit)  # type: ignore[arg-type]


def test_missing_split_names_the_patterns_tried(fixtures: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"train\.jsonl"):
        load("m3cot", path=fixtures / "m3cot/raw", split="train")
