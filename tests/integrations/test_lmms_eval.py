"""lmms-eval (the real package) drives a tiny vedas checkpoint through the ``vedas`` model plugin.

lmms-eval finds the model through vedas' entry point (``lmms_eval.models``), runs the local
tasks of ``integrations/lmms_eval/tasks`` end to end, offline: the synthetic benchmark
(exported to parquet) and the shipped M3CoT fixture. Its per-sample answers and its
accuracy equal ``vedas eval`` on the same records and scoring rule.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import torchrun
import vedas
from vedas.config import LatentConfig
from vedas.data import load as load_data

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
TASKS = REPO / "integrations" / "lmms_eval" / "tasks"
FIXTURE = REPO / "tests" / "fixtures" / "m3cot" / "hf"
MAX_NEW = 12
sys.path.insert(0, str(REPO / "integrations" / "lmms_eval"))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model, processor = vedas.tiny_model("qwen2_vl", hidden=64, layers=2, heads=4, kv_heads=2, seed=0)
    vm = vedas.VedasModel(model, processor, LatentConfig(latents=3, replay_k=4, max_new_tokens=MAX_NEW))
    return vm.save(tmp_path_factory.mktemp("lmms") / "ckpt")


@pytest.fixture(scope="module")
def synth_dir(synth_data) -> Path:
    return synth_data(0, 10)


def _run_lmms(ckpt: Path, synth_dir: Path, tmp: Path, world: int = 1) -> dict[str, tuple[float, list[dict]]]:
    """One ``lmms-eval`` run of both tasks (``world`` > 1: under torchrun, gloo on loopback);
    returns {task: (accuracy, [per-sample rows as rank 0 wrote them])}."""
    from export_parquet import export

    parquet = export(list(load_data("synthetic", path=str(synth_dir), split="test")), tmp / "synth.parquet")
    tasks = tmp / "tasks"
    tasks.mkdir()
    # the shipped task files, the synthetic one pointed at this run's data
    (tasks / "synth.yaml").write_text(
        f"include: {TASKS / 'vedas_synth.yaml'}\ndataset_kwargs:\n  data_files:\n    test: {parquet}\n"
    )
    (tasks / "fixture.yaml").write_text(f"include: {TASKS / 'vedas_m3cot_fixture.yaml'}\n")
    out = tmp / "out"
    cmd = [
        *(torchrun.launch(world) if world > 1 else [sys.executable]),
        "-m",
        "lmms_eval",
        "--model",
        "vedas",
        "--model_args",
        # no max_new_tokens on either side: the defaults must agree (both the checkpoint's MAX_NEW)
        f"checkpoint={ckpt},mode=vedas,latents=2,batch_size=16,device=cpu",
        "--tasks",
        "vedas_synth,vedas_m3cot_fixture",
        "--include_path",
        str(tasks),
        "--output_path",
        str(out),
        "--log_samples",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp / "hf")}
    env |= {"OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=tmp)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert f"vedas: max_new_tokens={MAX_NEW} (from the checkpoint's config" in res.stderr
    results = json.loads(next(out.rglob("*_results.json")).read_text())["results"]
    runs = {}
    for task in ("vedas_synth", "vedas_m3cot_fixture"):
        samples = next(out.rglob(f"*_samples_{task}.jsonl")).read_text().splitlines()
        runs[task] = (results[task]["accuracy,none"], [json.loads(line) for line in samples])
    return runs


@pytest.fixture(scope="module")
def lmms_run(ckpt, synth_dir, tmp_path_factory):
    """{task: (accuracy, [per-sample rows, by doc id])} of one lmms-eval process."""
    runs = _run_lmms(ckpt, synth_dir, tmp_path_factory.mktemp("lmms_run"))
    return {t: (acc, sorted(rows, key=lambda r: r["doc_id"])) for t, (acc, rows) in runs.items()}


@pytest.mark.parametrize("first", ["lmms_eval.models", "vedas.integrations.lmms_eval"])
def test_lmms_eval_finds_the_vedas_model_through_the_entry_point(first):
    """Whichever is imported first (a fresh process each time: the registry is built once per process)."""
    code = (
        f"import {first}\n"
        "from lmms_eval.models import get_model\n"
        "from vedas.integrations.lmms_eval import VedasLMMS\n"
        "assert get_model('vedas') is VedasLMMS\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]


def _vedas_eval(ckpt: Path, data: str, scoring: str, out: Path) -> dict:
    cmd = [sys.executable, "-m", "vedas.cli", "eval", "--checkpoint", str(ckpt), "--data", data]
    cmd += ["--method", "vedas", "--latents", "2", "--batch-size", "16"]  # max_new_tokens: the default
    cmd += ["--scoring", scoring, "--device", "cpu", "--out", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(out.read_text())


def test_synthetic_task_equals_vedas_eval(lmms_run, ckpt, synth_dir, tmp_path):
    accuracy, rows = lmms_run["vedas_synth"]
    report = _vedas_eval(ckpt, f"synthetic:{synth_dir}", "vedas", tmp_path / "report.json")
    assert [r["filtered_resps"] for r in rows] == [s["prediction"] for s in report["per_sample"]]
    assert [r["accuracy"] for r in rows] == [float(s["correct"]) for s in report["per_sample"]]
    assert accuracy == pytest.approx(report["accuracy"]) and len(rows) == report["n"] == 10
    # the latent steps are reported as reasoning tokens, inside the output tokens
    counts = [r["token_counts"][0] for r in rows]
    assert all(
        c["reasoning_tokens"] == 2 and c["output_tokens"] > 2 and c["input_tokens"] > 0 for c in counts
    )


def test_m3cot_fixture_task_equals_vedas_eval_with_the_official_rule(lmms_run, ckpt, tmp_path):
    """The fixture's images are 4–8 px: ``vedas eval`` refuses them, the plugin enlarges them to one
    merged patch. So the reference is ``evaluate`` on the fixture's records with the same enlargement."""
    from vedas.evaluation.evaluate import evaluate
    from vedas.integrations.lmms_eval import enlarge

    accuracy, rows = lmms_run["vedas_m3cot_fixture"]
    vm = vedas.load(ckpt, device="cpu")
    records = list(load_data("m3cot", path=str(FIXTURE), split="test"))
    for r in records:
        r.images = [enlarge(im, 28) for im in r.images]
    report = evaluate(
        vm,
        records,
        "vedas",
        batch_size=16,
        scoring="m3cot",
        latents=2,
        progress=False,
    )
    assert [r["filtered_resps"] for r in rows] == [s["prediction"] for s in report["per_sample"]]
    assert accuracy == pytest.approx(report["accuracy"]) and len(rows) == 3


def test_generation_limit_precedence():
    """model_args, then the task's generation_kwargs, then the checkpoint's (vedas eval's default)."""
    from vedas.integrations.lmms_eval import generation_limit

    assert generation_limit(None, {"temperature": 0}, 12) == (
        12,
        "the checkpoint's config, as vedas eval uses",
    )
    assert generation_limit(None, {"max_new_tokens": "40"}, 12)[0] == 40
    assert generation_limit(7, {"max_new_tokens": 40}, 12) == (7, "model_args max_new_tokens")
    with pytest.raises(ValueError, match=r"max_new_tokens .from the task's generation_kwargs.: must be ≥ 1"):
        generation_limit(None, {"max_new_tokens": 0}, 12)


def test_two_torchrun_ranks_give_the_one_process_samples(lmms_run, ckpt, synth_dir, tmp_path):
    """``torchrun --nproc_per_node 2 -m lmms_eval``: lmms-eval shards the docs by rank (the 3-doc
    fixture leaves rank 1 one short, so lmms-eval pads it with a duplicate request); the plugin runs
    each rank's requests on its own. The samples rank 0 gathers are the one-process samples, each
    doc once."""
    dp = _run_lmms(ckpt, synth_dir, tmp_path, world=2)
    for task, (accuracy, rows) in lmms_run.items():
        dp_accuracy, dp_rows = dp[task]
        ids = [r["doc_id"] for r in dp_rows]
        assert len(ids) == len(set(ids)) == len(rows), (task, ids)
        by_id = sorted(dp_rows, key=lambda r: r["doc_id"])
        keys = ("doc_id", "filtered_resps", "accuracy", "token_counts")
        assert [[r[k] for k in keys] for r in by_id] == [[r[k] for k in keys] for r in rows], task
        assert dp_accuracy == pytest.approx(accuracy)
