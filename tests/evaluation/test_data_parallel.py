"""``vedas eval`` data parallel: real ``torchrun`` ranks on gloo (CPU, loopback) against one process.

The merged report has the one-process per-sample rows (same ids in order, same predictions, each
once) and records ``world_size``; a shard cut off after its first batch resumes from its own log and
runs only what it lacks.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

import torchrun
import vedas
from vedas.config import LatentConfig
from vedas.evaluation import shards

pytestmark = pytest.mark.slow
SAME = ("id", "prediction", "answer", "correct", "ar_steps", "category")
"""The per-sample fields that do not depend on timing."""


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model, processor = vedas.tiny_model("qwen2_vl", hidden=64, layers=2, heads=4, kv_heads=2, seed=0)
    vm = vedas.VedasModel(model, processor, LatentConfig(latents=2, replay_k=4, max_new_tokens=8))
    return vm.save(tmp_path_factory.mktemp("dp") / "ckpt")


def _args(ckpt: Path, data: Path, out: Path, *extra: str) -> list[str]:
    args = ["eval", "--checkpoint", str(ckpt), "--data", f"synthetic:{data}", "--batch-size", "3"]
    return [*args, "--device", "cpu", "--out", str(out), *extra]


def _torchrun(ckpt: Path, data: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    """``vedas eval`` on two torchrun ranks; a retry after the teardown abort (:mod:`torchrun`) resumes
    from the logs the aborted run finished."""
    cmd = [*torchrun.launch(2), "-m", "vedas.cli", *_args(ckpt, data, out, *extra)]
    res = torchrun.run(cmd, rerun=[] if "--resume" in extra else ["--resume"], timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    return res


def _rows(report: dict) -> list[tuple]:
    return [tuple(s[k] for k in SAME) for s in report["per_sample"]]


def test_shards_cover_every_batch_once_and_merge_back_in_order():
    records = list(range(10))
    parts = [shards.shard(records, 3, r, 2) for r in range(2)]
    assert parts == [[0, 1, 2, 6, 7, 8], [3, 4, 5, 9]]
    batches = [[{"batch": j, "rows": p[i : i + 3]} for j, i in enumerate(range(0, len(p), 3))] for p in parts]
    merged = shards.merge(batches)
    assert [b["batch"] for b in merged] == [0, 1, 2, 3]
    assert [x for b in merged for x in b["rows"]] == records
    assert shards.shard(records, 4, 2, 3) == [8, 9] and shards.shard(records, 8, 2, 3) == []
    with pytest.raises(ValueError, match="batch_size: must be ≥ 1, got 0"):
        shards.shard(records, 0, 0, 2)
    with pytest.raises(RuntimeError, match="gaps"):
        shards.merge([batches[0], []])


def test_rank_device_takes_the_local_rank(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert shards.rank_world() == (3, 1, 4)
    assert shards.rank_device("cpu", 1) == "cpu"
    # the GPU of local rank 1, wherever a GPU is visible (the process's own, not cuda:0)
    assert shards.rank_device("auto", 1) == ("cuda:1" if torch.cuda.is_available() else "cpu")
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ValueError, match="RANK=4, WORLD_SIZE=4"):
        shards.rank_world()


def test_two_ranks_equal_one_process_and_a_cut_shard_resumes(ckpt, synth_data, tmp_path):
    data = synth_data(0, 10)  # 10 records in batches of 3: rank 0 runs batches 0 and 2, rank 1 runs 1 and 3
    from vedas.cli import main

    # the one-process run in this process (the same CLI; saves an interpreter start)
    assert main(_args(ckpt, data, tmp_path / "one" / "report.json")) == 0
    one = json.loads((tmp_path / "one" / "report.json").read_text())
    out = tmp_path / "dp" / "report.json"
    _torchrun(ckpt, data, out)
    dp = json.loads(out.read_text())
    assert one["world_size"] == 1 and dp["world_size"] == 2
    assert _rows(dp) == _rows(one) and len({s["id"] for s in dp["per_sample"]}) == dp["n"] == 10
    for key in ("n", "accuracy", "ar_steps_mean", "latents", "per_category", "skipped", "batch_size"):
        assert dp[key] == one[key], key
    assert not (out.parent / "report.jsonl").exists()

    # rank 1 cut off after its first batch: its log keeps the header and that batch only
    log1 = shards.shard_log(out.with_suffix(".jsonl"), 1, 2)
    lines = log1.read_text().splitlines()
    assert json.loads(lines[-1]) == {"done": True} and len(lines) == 4  # header, 2 batches, done
    log1.write_text("\n".join(lines[:2]) + "\n")
    out.unlink()
    res = _torchrun(ckpt, data, out, "--resume")
    assert "resuming: 1 batches already" in res.stdout and "resuming: 2 batches already" in res.stdout
    resumed = json.loads(out.read_text())
    assert _rows(resumed) == _rows(one) and resumed["world_size"] == 2
    # a batch taken from a log keeps its recorded timings; only rank 1's last batch (3) ran again
    latency = [s["latency_ms"] for s in dp["per_sample"]], [s["latency_ms"] for s in resumed["per_sample"]]
    kept, rerun = list(range(9)), [9]
    assert [latency[0][i] for i in kept] == [latency[1][i] for i in kept]
    assert [latency[0][i] for i in rerun] != [latency[1][i] for i in rerun]
