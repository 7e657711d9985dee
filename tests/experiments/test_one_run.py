"""The demo trains one seed: its report says which method differences stand out of run-to-run variation."""

from __future__ import annotations

import json

from vedas.experiments import demo

SPREAD = {
    "preset": "fine",
    "source": "docs/results/ablation_fine.json",
    "comparisons": [
        {"a": "latent", "b": "vedas", "sd_run": 0.05, "within": 0.098, "runs": 6},
        {"a": "cot", "b": "vedas", "sd_run": 0.02, "within": 0.0392, "runs": 6},
        {"a": "no_replay", "b": "latent", "sd_run": 0.1, "within": 0.196, "runs": 6},  # not in the demo
    ],
}


def test_one_run_differences_are_judged_against_the_measured_spread() -> None:
    rows = [{"method": "cot", "accuracy": 0.90}, {"method": "latent", "accuracy": 0.80},
            {"method": "vedas", "accuracy": 0.85}]  # fmt: skip
    lines = demo.one_run_lines(rows, "fine", 1, SPREAD)
    table = [line for line in lines if line.startswith("| ") and "---" not in line][1:]
    assert table == [
        "| latent | vedas | +5.0 | 5.0 | yes |",  # 5 points inside ±9.8
        "| cot | vedas | -5.0 | 2.0 | no: beyond ±3.9 |",  # 5 points outside ±3.9
    ]
    assert "retrained these methods 6 times" in lines[1] and "docs/results/ablation_fine.json" in lines[1]


def test_without_a_measured_spread_the_report_says_so() -> None:
    assert "says nothing about the methods" in " ".join(demo.one_run_lines([], "easy", 1))


def test_the_committed_spread_is_the_ablation_s() -> None:
    """The package's run_to_run.json is what scripts/run_to_run.py copies from the committed report."""
    from importlib import resources
    from pathlib import Path

    shipped = json.loads((resources.files("vedas.experiments") / demo.RUN_TO_RUN).read_text())
    report = json.loads((Path(__file__).resolve().parents[2] / shipped["source"]).read_text())
    assert {k: v for k, v in shipped.items() if k not in ("source", "seeds")} == report["run_to_run"]
    assert demo.measured_spread(shipped["preset"]) == shipped
