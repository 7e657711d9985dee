"""``--jobs``: trainings side by side in worker processes give what the same trainings give in order."""

from __future__ import annotations

import dataclasses
import math
import operator
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vedas.experiments import demo
from vedas.experiments.jobs import run_graph

ROOTS = [("a", operator.add, (1, 2)), ("b", operator.mul, (3, 4))]


def children(key, result):
    # a's result releases one job; that job releases none
    return [("a2", operator.mul, (result, 10))] if key == "a" else []


def test_run_graph_runs_released_jobs_in_order_alone_and_all_of_them_in_workers() -> None:
    assert list(run_graph(ROOTS, children, jobs=1)) == [("a", 3), ("a2", 30), ("b", 12)]  # depth first
    assert dict(run_graph(ROOTS, children, jobs=2)) == {"a": 3, "a2": 30, "b": 12}


def stamp(seconds: float) -> float:
    """A worker job: when it started (CLOCK_MONOTONIC, shared by the machine's processes)."""
    start = time.monotonic()
    time.sleep(seconds)
    return start


def test_run_graph_starts_the_lowest_priority_first_when_a_worker_frees() -> None:
    """Two workers, three jobs released together: the one of higher ``priority`` value starts only
    after a more urgent one has finished, though it was released first."""
    jobs = [(k, stamp, (0.3,)) for k in ("later", "first", "second")]
    started = dict(run_graph(jobs, lambda k, r: [], jobs=2, priority=lambda k: k == "later"))
    assert started["later"] >= min(started["first"], started["second"]) + 0.3
    fifo = dict(run_graph(jobs, lambda k, r: [], jobs=2))  # the same jobs in release order
    assert fifo["later"] < max(fifo["first"], fifo["second"])


def test_a_failing_worker_job_is_raised_and_nothing_waits_on_it() -> None:
    jobs = [("ok", operator.add, (1, 1)), ("bad", math.sqrt, (-1.0,))]
    with pytest.raises(ValueError, match="math domain error"):
        dict(run_graph(jobs, lambda k, r: [], jobs=2))
    with pytest.raises(ValueError, match="--jobs: must be at least 1, got 0"):
        list(run_graph(jobs, lambda k, r: [], jobs=0))


def _weights(out: Path, method: str) -> dict[str, torch.Tensor]:
    files = sorted((out / method / "final").rglob("*.safetensors"))
    assert files, f"no safetensors under {out / method / 'final'}"
    return {f"{f.name}:{k}": v for f in files for k, v in load_file(f).items()}


@pytest.mark.slow
def test_demo_jobs_2_trains_the_same_models_as_one_after_the_other(tmp_path: Path) -> None:
    """cot and no_cot side by side, then latent from cot, in 2 workers of 1 thread each: the checkpoints
    and predictions are bit for bit those of the in-process run at 1 thread."""
    size = dataclasses.replace(demo.QUICK, train=32, test=8, epochs=1, latent_epochs=3, max_new_tokens=8)
    methods = ["no_cot", "cot", "latent"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        alone = demo.run_seed(0, size, methods, tmp_path / "alone", jobs=1)
    finally:
        torch.set_num_threads(threads)
    torch.set_num_threads(2)  # each of the 2 workers gets 2 // 2 = 1 thread, as the run above had
    try:
        side = demo.run_seed(0, size, methods, tmp_path / "side", jobs=2)
    finally:
        torch.set_num_threads(threads)
    assert list(side) == methods
    for m in methods:
        a, b = _weights(tmp_path / "alone", m), _weights(tmp_path / "side", m)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), m
        assert [s["prediction"] for s in alone[m]["per_sample"]] == [
            s["prediction"] for s in side[m]["per_sample"]
        ]
    assert side["latent"]["initialised_from"] == str(tmp_path / "side" / "cot" / "final")
    # every latent method's report carries its latent-use probe (conditions, replay off, sweep)
    use = side["latent"]["latent_use"]
    assert set(use["conditions"]) == {
        "trained",
        "zeros",
        "noise",
        "shuffled",
        "replay_off",
        "replay_placeholder",
        "replay_oracle",  # the demo's data is synthetic: its layout says which cells are relevant
        "replay_anti",
    }
    assert [p["latents"] for p in use["sweep"]] == list(range(2 * size.latents + 1))
    assert "latent_use" not in side["cot"] and "latent_use" not in side["no_cot"]
