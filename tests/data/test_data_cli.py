"""``vedas data synth`` and ``vedas data show``, through the parser ``vedas`` mounts.

Run with ``.venv/bin/pytest -q tests/data/test_data_cli.py``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from vedas.data import cli as data_cli


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="vedas data", description=data_cli.__doc__)
    data_cli.add_arguments(parser)
    args = parser.parse_args(list(argv))
    return args.func(args)


def test_synth_then_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "synth"
    assert run("synth", "--out", str(out), "--train", "4", "--test", "8", "--seed", "2", "--no-progress") == 0
    printed = capsys.readouterr().out
    assert "test: 8 samples; answers A 2, B 2, C 2, D 2" in printed
    assert len(list((out / "images").glob("*.png"))) == 12
    assert run("show", f"synthetic:{out}", "--limit", "2") == 0
    shown = capsys.readouterr().out
    assert "synthetic (test) from" in shown and "2 loaded of 2 rows read; skipped: none" in shown
    assert "--- synth-test-000000" in shown and "target: Therefore, the answer is" in shown
    assert "step 1: " in shown


def test_synth_knob_flags(tmp_path: Path) -> None:
    out = tmp_path / "small"
    assert run("synth", "--out", str(out), "--train", "0", "--test", "2", "--image-size", "64",
               "--shape-size", "5", "--max-count", "2", "--max-objects", "8", "--no-progress") == 0  # fmt: skip
    from PIL import Image

    with Image.open(next((out / "images").glob("*.png"))) as image:
        assert image.size == (64, 64)


def test_bad_knob_and_bad_dataset_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("synth", "--out", str(tmp_path), "--max-objects", "3", "--no-progress") == 2
    assert "--max-objects" in capsys.readouterr().err
    assert run("show", "coco") == 2
    assert "valid names" in capsys.readouterr().err
    assert run("show", f"m3cot:{tmp_path}") == 2
    assert "no data file" in capsys.readouterr().err


def test_show_reports_skips(fixtures: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("show", f"scienceqa:{fixtures / 'scienceqa'}", "--limit", "5") == 0
    shown = capsys.readouterr().out
    assert "3 loaded of 4 rows read; skipped: no_image 1" in shown
    assert "skipped: scienceqa row 'test-1': no_image" in shown


def test_every_flag_has_help() -> None:
    parser = argparse.ArgumentParser()
    data_cli.add_arguments(parser)
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subparsers.choices.items():
        for action in sub._actions:
            assert action.help, f"vedas data {name}: {action.option_strings or action.dest} has no help"


def test_synth_preset_with_a_flag_on_top(tmp_path: Path) -> None:
    out = tmp_path / "fine"
    assert run("synth", "--out", str(out), "--train", "0", "--test", "2", "--preset", "fine",
               "--max-count", "2", "--no-progress") == 0  # fmt: skip
    config = __import__("json").loads((out / "synth_config.json").read_text())["config"]
    assert config["image_size"] == 168 and config["templates"] == "diff,net" and config["max_count"] == 2


def test_synth_far_preset_with_a_shorter_context(tmp_path: Path) -> None:
    out = tmp_path / "far"
    assert run("synth", "--out", str(out), "--train", "0", "--test", "2", "--preset", "far",
               "--context-sentences", "3", "--no-progress") == 0  # fmt: skip
    config = __import__("json").loads((out / "synth_config.json").read_text())["config"]
    assert (config["image_size"], config["input_size"], config["texture"], config["context_sentences"]) == (
        504, 168, 3, 3,
    )  # fmt: skip
    rows = [__import__("json").loads(line) for line in (out / "test.jsonl").read_text().splitlines()]
    assert [r["context"].count(". ") + 1 for r in rows] == [3, 3]
    assert "striped squares" in rows[0]["question"]
