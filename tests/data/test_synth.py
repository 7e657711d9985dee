"""The synthetic benchmark: determinism, balanced letters, schema, and images that match.

Run with ``.venv/bin/pytest -q tests/data/test_synth.py``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from vedas.data import load
from vedas.data.m3cot import META_FIELDS
from vedas.data.synth import COLORS, TEMPLATES, SynthConfig, make_sample, write

M3COT_FIELDS = [
    "id", "category", "image_id", "question", "choices", "context",
    "answer", "rationale", "split", "image", "domain", "topic",
]  # fmt: skip


def files_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_writes_identical_bytes(tmp_path: Path) -> None:
    write(tmp_path / "a", train=12, test=8, seed=7)
    write(tmp_path / "b", train=12, test=8, seed=7)
    a, b = files_of(tmp_path / "a"), files_of(tmp_path / "b")
    assert len(a) == 12 + 8 + 3  # images + train.jsonl + test.jsonl + synth_config.json
    assert a == b
    write(tmp_path / "c", train=12, test=8, seed=8)
    assert files_of(tmp_path / "c")["test.jsonl"] != a["test.jsonl"]


def test_test_split_does_not_depend_on_train_size(tmp_path: Path) -> None:
    write(tmp_path / "a", train=0, test=6, seed=1)
    write(tmp_path / "b", train=9, test=6, seed=1)
    assert (tmp_path / "a/test.jsonl").read_bytes() == (tmp_path / "b/test.jsonl").read_bytes()


@pytest.mark.parametrize("n", [200, 203])
def test_answer_letters_are_balanced_within_five_points(n: int) -> None:
    letters = [make_sample(i, "train", seed=3).row["answer"] for i in range(n)]
    shares = {c: letters.count(c) / n for c in "ABCD"}
    assert all(abs(share - 0.25) <= 0.05 for share in shares.values()), shares


def test_rows_follow_the_m3cot_schema_and_load_through_its_loader(tmp_path: Path) -> None:
    summary = write(tmp_path, train=4, test=40, seed=0)
    rows = [json.loads(line) for line in (tmp_path / "test.jsonl").read_text().splitlines()]
    assert all(list(r) == M3COT_FIELDS for r in rows)
    assert summary["splits"]["test"]["samples"] == 40
    ds = load("synthetic", path=tmp_path, split="test")
    assert ds.summary == {"read": 40, "loaded": 40}
    for row, record in zip(rows, ds):
        steps_needed = TEMPLATES[row["category"]][0]
        assert len(record.steps) == steps_needed, record.rationale
        assert len(record.choices) == 4 and len(set(record.choices)) == 4
        assert record.choices[record.answer_index] == record.choices["ABCD".index(row["answer"])]
        assert record.images[0].size == (112, 112) and record.source == "synthetic/test"
        assert set(record.meta) == set(META_FIELDS)


def test_the_arithmetic_step_gives_the_correct_option() -> None:
    for i in range(60):
        row = make_sample(i, "test", seed=5).row
        correct = row["choices"]["ABCD".index(row["answer"])]
        last = row["rationale"].split("\n\n")[-1]
        if row["category"] in ("sum", "diff", "net"):
            expression, result = last.rstrip(".").split(" = ")
            assert eval(expression) == int(result) == int(correct)  # only digits and + - here
        elif row["category"] == "most":
            assert correct in last
        else:
            assert last.endswith(f"is a {correct}.")


# ------------------------------------------------------------ the image shows what the rationale counts


def components(mask: np.ndarray) -> list[np.ndarray]:
    """Pixel coordinates of each 4-connected component of ``mask`` (shapes never touch)."""
    seen = np.zeros_like(mask, dtype=bool)
    out = []
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        stack, pixels = [start], []
        seen[start] = True
        while stack:
            y, x = stack.pop()
            pixels.append((y, x))
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        out.append(np.array(pixels))
    return out


def shape_of(pixels: np.ndarray) -> str:
    """Square fills its box; a circle most of it; a triangle is widest at the bottom."""
    ys, xs = pixels[:, 0], pixels[:, 1]
    fill = len(pixels) / ((np.ptp(ys) + 1) * (np.ptp(xs) + 1))
    if fill > 0.95:
        return "square"
    if fill > 0.7:
        return "circle"
    widths = [np.sum(ys == y) for y in range(ys.min(), ys.max() + 1)]
    return "triangle" if widths[-1] == max(widths) else "diamond"


def test_the_counts_in_the_rationale_are_what_the_image_shows() -> None:
    cfg = SynthConfig(shapes=4, colors=4)
    checked = 0
    for i in range(40):
        sample = make_sample(i, "test", seed=11, cfg=cfg)
        pixels = np.asarray(sample.image)
        drawn: dict[tuple[str, str], int] = {}
        for color, value in COLORS.items():
            for blob in components(np.all(pixels == value, axis=-1)):
                key = (color, shape_of(blob))
                drawn[key] = drawn.get(key, 0) + 1
        for count, color, shape in re.findall(
            r"There (?:is|are) (no|\d+) (\w+) (\w+?)s?\.", sample.row["rationale"]
        ):
            assert drawn.get((color, shape), 0) == (0 if count == "no" else int(count)), (
                i,
                sample.row["rationale"],
            )
            checked += 1
    assert checked > 40


def test_knobs_are_validated_with_the_flag_name() -> None:
    with pytest.raises(ValueError, match="--max-objects: must be at least 3 x max-count = 12"):
        SynthConfig(max_objects=8)
    with pytest.raises(ValueError, match="--colors"):
        SynthConfig(colors=5)
    with pytest.raises(ValueError, match="--min-steps"):
        SynthConfig(min_steps=3, max_steps=2)
    SynthConfig(max_objects=8, max_steps=3)  # two kinds of 4 fit when no 4-step template is used


def test_knobs_change_the_output() -> None:
    cfg = SynthConfig(image_size=64, shape_size=5, max_objects=8, max_count=2, min_steps=4, max_steps=4)
    rows = [make_sample(i, "train", seed=0, cfg=cfg) for i in range(12)]
    assert {s.row["category"] for s in rows} <= {"most", "net"}
    assert all(s.image.size == (64, 64) for s in rows)
    two_step = [
        make_sample(i, "train", seed=0, cfg=SynthConfig(max_steps=2)).row["category"] for i in range(5)
    ]
    assert set(two_step) == {"locate"}


def test_the_options_alone_do_not_give_the_answer_away() -> None:
    # A model that skips the reasoning could pick the smallest number, or "there is a tie";
    # each must be right only about as often as chance.
    rows = [make_sample(i, "train", seed=4).row for i in range(800)]
    ranks, ties, most = [0, 0, 0, 0], 0, 0
    for row in rows:
        correct = row["choices"]["ABCD".index(row["answer"])]
        if row["category"] in ("sum", "diff", "net"):
            ranks[sorted(int(c) for c in row["choices"]).index(int(correct))] += 1
        elif row["category"] == "most":
            most += 1
            ties += correct == "there is a tie"
    shares = [r / sum(ranks) for r in ranks]
    assert all(abs(s - 0.25) < 0.06 for s in shares), shares
    assert abs(ties / most - 0.25) < 0.08, ties / most


def test_clean_images_keep_their_size_and_shapes() -> None:
    """noise=0 and clutter=0 once produced a 1x1 image; the shapes must still be drawn at full size."""
    cfg = SynthConfig(noise=0.0, clutter=0, shape_size=12)
    for i in range(4):
        image = make_sample(i, cfg=cfg).image
        assert image.size == (cfg.image_size, cfg.image_size)
        assert np.asarray(image).std() > 5


def test_template_choice_fixed_kinds_and_sorted_options() -> None:
    """The demo's easy-to-read variant: one template, always red vs blue, options 0..3 in order."""
    cfg = SynthConfig(
        colors=4, shapes=1, min_steps=3, max_steps=3, max_count=3, max_objects=8,
        templates="diff", fixed_kinds=True, sorted_options=True,
    )  # fmt: skip
    rows = [make_sample(i, "train", seed=3, cfg=cfg).row for i in range(80)]
    assert {r["category"] for r in rows} == {"diff"}
    assert {r["question"] for r in rows} == {
        "What is the difference between the number of red squares and the number of blue squares?"
    }
    assert all(r["choices"] == ["0", "1", "2", "3"] for r in rows)
    for r in rows:  # the letter is the value, and the rationale's last step computes it
        value = int(r["rationale"].rsplit(" = ", 1)[1].rstrip("."))
        assert "ABCD"[value] == r["answer"]
    counts = np.bincount(["ABCD".index(r["answer"]) for r in rows], minlength=4)
    assert counts.min() >= 10, counts  # balanced in expectation: the value is drawn uniformly
    mixed = SynthConfig(templates="sum,diff", fixed_kinds=True)
    assert {make_sample(i, "test", seed=0, cfg=mixed).row["category"] for i in range(20)} == {"sum", "diff"}
    with pytest.raises(ValueError, match="--templates: unknown"):
        SynthConfig(templates="diff,count")
    with pytest.raises(ValueError, match="--templates: no template fits"):
        SynthConfig(templates="most", max_steps=3)
    with pytest.raises(ValueError, match="--shapes: colours x shapes must give at least 4 kinds"):
        SynthConfig(colors=3, shapes=1)


def test_verbose_rationales_enumerate_what_the_image_shows_and_name_the_letter() -> None:
    """``--rationale verbose`` changes the rationale only: each count is enumerated up to the count
    the image shows, the terse steps stay, and a last step names the correct letter."""
    for i in range(40):
        terse = make_sample(i, "test", seed=2, cfg=SynthConfig(shapes=4, colors=4)).row
        verbose = make_sample(i, "test", seed=2, cfg=SynthConfig(shapes=4, colors=4, rationale="verbose")).row
        assert {k: v for k, v in verbose.items() if k != "rationale"} == {
            k: v for k, v in terse.items() if k != "rationale"
        }
        short, long = terse["rationale"].split("\n\n"), verbose["rationale"].split("\n\n")
        assert len(long) == len(short) + 1
        assert (
            long[-1]
            == f"The answer {terse['choices']['ABCD'.index(terse['answer'])]} is option ({terse['answer']})."
        )
        for s, v in zip(short, long):
            assert v.endswith(s)  # the terse sentence closes the verbose step
            m = re.fullmatch(
                r"I look for the (\w+ \w+) and (?:find none|count them one by one: ([\d, ]+))\. (.*)", v
            )
            if m is None:
                assert v == s  # not a count step (arithmetic, comparison, locating)
                continue
            count = re.fullmatch(r"There (?:is|are) (no|\d+) .*", m[3])[1]
            n = 0 if count == "no" else int(count)
            assert (m[2] or "") == ", ".join(str(k) for k in range(1, n + 1))
    with pytest.raises(ValueError, match="--rationale: must be one of"):
        SynthConfig(rationale="long")


def test_fine_preset_makes_replay_choose_and_detail_matter() -> None:
    """The demo's ``fine`` preset by construction: 36 merged visual tokens per image through the tiny
    Qwen2-VL processor, T_r·K at most a quarter of them, every shape half a merged cell on a side and
    inside one merged cell (at most one shape per cell, so a cell's token holds one shape blurred with
    its background, and a 3-cell crop re-encoded at full size shows it 2x larger), 3-4-step questions,
    balanced letters."""
    import vedas
    from vedas.data.synth import MERGED_CELL_PX, PRESETS, merged_tokens, preset
    from vedas.experiments.demo import FULL, QUICK

    cfg = preset("fine")
    size = FULL.with_preset("fine")
    _, processor = vedas.tiny_model(
        "qwen2_vl", hidden=32, layers=1, max_pixels=size.tiny_model_args()["max_pixels"]
    )
    samples = [make_sample(i, "test", seed=0, cfg=cfg) for i in range(400)]
    grid = processor.image_processor(images=[s.image for s in samples[:4]], return_tensors="pt")[
        "image_grid_thw"
    ]
    assert [int(t * h * w) // 4 for t, h, w in grid.tolist()] == [36] * 4 == [merged_tokens(cfg)] * 4
    for sized in (size, QUICK.with_preset("fine")):
        assert sized.latents * sized.replay_k <= merged_tokens(cfg) / 4
    sides, cells = [], []
    for s in samples[:20]:
        pixels = np.asarray(s.image)
        seen = []
        for value in COLORS.values():
            for blob in components(np.all(pixels == value, axis=-1)):  # (pixels, 2) coordinates
                sides.append(int((blob.max(0) - blob.min(0)).max()) + 1)
                lo, hi = blob.min(0) // MERGED_CELL_PX, blob.max(0) // MERGED_CELL_PX
                assert (lo == hi).all(), f"{s.row['id']}: a shape spans two merged cells"
                seen.append(tuple(lo))
        assert len(seen) == len(set(seen)), f"{s.row['id']}: two shapes share a merged cell"
        cells.append(len(seen))
    assert len(sides) > 100 and max(sides) <= MERGED_CELL_PX / 2 + 1  # PIL draws both corners: 15 px
    assert max(cells) > size.latents * size.replay_k  # some images hold more shapes than replay can show
    assert {s.row["category"] for s in samples} == {"diff", "net"}
    assert {TEMPLATES[s.row["category"]][0] for s in samples} == {3, 4}
    share = np.bincount(["ABCD".index(s.row["answer"]) for s in samples], minlength=4) / len(samples)
    assert np.abs(share - 0.25).max() <= 0.05, share
    # the earlier demo benchmark stays available by name, with its old knobs
    assert preset("easy") == SynthConfig(**PRESETS["easy"]) and preset("easy").image_size == 112
    assert merged_tokens(preset("easy")) == 16
    with pytest.raises(ValueError, match="--preset: unknown 'hard'"):
        preset("hard")
