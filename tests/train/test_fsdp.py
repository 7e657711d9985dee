"""FSDP2 training through accelerate (``run.fsdp``), on two real torchrun ranks over gloo on CPU:
one step's loss and whole gradients equal a one-process reference with the same global batch, and a
run killed between checkpoints resumes to the weights of the uninterrupted run."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import torchrun
from vedas.config import ConfigError
from vedas.train.config import load_config
from vedas.train.fsdp import load_settings

ROOT = Path(__file__).resolve().parents[2]
PROBE = Path(__file__).with_name("fsdp_probe.py")
FSDP = str(ROOT / "configs/fsdp/decoder_layers.yaml")
TINY = "{hidden: 64, layers: 2, heads: 4, kv_heads: 2, vision_depth: 1, vision_hidden: 32, max_pixels: 12544}"


@pytest.fixture(scope="module")
def synth_dir(synth_data) -> Path:
    return synth_data(16, 4)


def _args(synth_dir: Path, out: Path, **extra: object) -> list[str]:
    """``vedas`` with SCF-VR and routing on ``synthetic_tiny.yaml``'s tiny Qwen2-VL: 8 records, 2 per rank."""
    fields = {
        "data.path": synth_dir,
        "data.limit": 8,
        "model.tiny": TINY,
        "optim.batch_size": 2,
        "optim.epochs": 3,
        "optim.lr": 3e-3,
        "optim.warmup_ratio": 0.0,
        "run.output_dir": out,
        "run.progress": "false",
        "latent.latents": 2,
        "latent.replay_k": 4,
        "routing": "{layers: all, alpha: 4}",
        **extra,
    }
    return [str(ROOT / "configs/synthetic_tiny.yaml")] + [
        a for k, v in fields.items() for a in (f"--{k}", str(v))
    ]


def _run(*args: str, rerun: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """``args`` on two torchrun ranks, which must succeed (``rerun``: see :func:`torchrun.run`)."""
    res = torchrun.run([*torchrun.launch(2), *args], rerun)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def test_fsdp_settings_are_checked(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("reshard_after_forward: true\nshard_everything: true\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key 'shard_everything'"):
        load_settings(str(bad))
    bad.write_text("reshard_after_forward: 1\n")
    with pytest.raises(ConfigError, match=r"reshard_after_forward must be true or false, got 1"):
        load_settings(str(bad))
    with pytest.raises(ConfigError, match=r"run.fsdp: no such file"):
        load_settings(str(tmp_path / "missing.yaml"))
    assert load_settings(FSDP).reshard_after_forward is False
    with pytest.raises(ConfigError, match=r"run\.fsdp and run\.deepspeed exclude each other"):
        load_config(None, ["--run.fsdp", FSDP, "--run.deepspeed", "configs/deepspeed/zero2.json"])


@pytest.mark.slow
def test_fsdp2_step_equals_a_one_process_reference(synth_dir, tmp_path):
    """Stage 2 (both latent steps, replay, SCF-VR, routers): two FSDP2 ranks with 2 records each
    against one process taking the same 4 records as 2 accumulated micro-batches. Gloo's sharded
    gradients must be averaged over the ranks, not summed."""
    sharded, reference = tmp_path / "fsdp.safetensors", tmp_path / "one.safetensors"
    _run(str(PROBE), str(sharded), "2", *_args(synth_dir, tmp_path / "a", **{"run.fsdp": FSDP}))
    spec = importlib.util.spec_from_file_location("fsdp_probe", PROBE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config, *overrides = _args(synth_dir, tmp_path / "b", **{"optim.grad_accum": 2})
    module.main(str(reference), 2, config, overrides)
    a, b = load_file(str(sharded)), load_file(str(reference))
    assert a.keys() == b.keys()
    assert {"grad.objective.sr.net.weight", "grad.objective.routing.step_encodings.0"} <= a.keys()
    assert b["grad.objective.sr.net.weight"].abs().sum() > 0  # SCF-VR is in the loss
    torch.testing.assert_close(a["loss"], b["loss"], rtol=1e-6, atol=1e-6)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-7, msg=k)


@pytest.mark.slow
def test_fsdp2_resume_after_sigkill_equals_an_uninterrupted_run(synth_dir, tmp_path):
    """Four steps (stage 0, then the latent loop at stage 1) with a checkpoint after each; the cut
    run's ranks are killed (SIGKILL, the whole process group) once step-1 is written, mid-epoch, then
    resumed on two ranks: the final weights are bit-identical."""
    full, cut = tmp_path / "full", tmp_path / "cut"

    def train(out: Path, *extra: str) -> list[str]:
        return [
            "-m",
            "vedas.cli",
            "train",
            "--config",
            *_args(synth_dir, out, **{"run.fsdp": FSDP, "run.save_every": 1, "optim.epochs": 2}),
            *extra,
        ]

    res = _run(*train(full), rerun=("--run.overwrite", "true"))
    assert "distributed: FSDP, 2 processes" in res.stdout
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [*torchrun.launch(2), *train(cut)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 180
    while not (cut / "checkpoints" / "step-1").is_dir():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both ranks
    proc.wait()
    assert not (cut / "final").exists()
    assert not (cut / "checkpoints" / "step-4").exists()
    res = _run(*train(cut, "--run.resume", "true"))  # a retry resumes again
    assert "resumed from" in res.stdout, res.stdout[-2000:]
    for name in ("model/model.safetensors", "routing.safetensors"):
        a, b = load_file(str(full / "final" / name)), load_file(str(cut / "final" / name))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), k
