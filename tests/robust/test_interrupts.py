"""Interrupts lose nothing: SIGINT/SIGTERM during training finish the step, save and print the resume
command; a resumed run (also after SIGKILL) logs every step exactly once, in metrics.jsonl and in
TensorBoard; an interrupted ``vedas eval`` continues with ``--resume`` to the same report.

Every signal here is a real one sent to a real ``vedas`` process."""

from __future__ import annotations

import json
import random
import re
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

RUN = {"optim.epochs": 6}  # 12 optimizer steps of 4 records


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _steps(out: Path) -> list[int]:
    return [r["step"] for r in _rows(out) if "event" not in r]


def _wait(proc: subprocess.Popen, ready, what: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not ready():
        assert proc.poll() is None, f"the process ended before {what}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _logged(out: Path, step: int):
    def ready() -> bool:
        try:
            return max(_steps(out), default=0) >= step
        except (OSError, json.JSONDecodeError):  # not written yet, or a line half written
            return False

    return ready


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "final" / "model" / "model.safetensors"))


def _same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def _deterministic(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "samples_per_s"} for r in rows]


@pytest.mark.slow
def test_sigint_at_a_random_step_then_resume_is_bit_identical_and_logs_each_step_once(
    vedas_cli, train_args, tmp_path
):
    """Item 9: SIGINT during training saved nothing and printed no resume hint."""
    full, cut = tmp_path / "full", tmp_path / "cut"
    done = vedas_cli.run(*train_args(full, **RUN))
    assert done.returncode == 0, done.stderr[-2000:]
    at = random.Random(14).randint(2, 9)  # seeded: the same step on every run of the suite
    proc = vedas_cli.popen(
        *train_args(cut, **RUN), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    _wait(proc, _logged(cut, at), f"step {at}")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-2000:]
    m = re.search(
        r"interrupted by SIGINT after optimizer step (\d+); saved (\S+)\. Resume with:\n  (.+)", err
    )
    assert m, err[-2000:]
    stopped = int(m[1])
    assert at <= stopped < 12 and Path(m[2]) == cut / "checkpoints" / f"step-{stopped}"
    assert (cut / "checkpoints" / f"step-{stopped}" / "state.json").is_file()
    assert not (cut / "final").exists()
    command = shlex.split(m[3])
    assert command[:2] == ["vedas", "train"] and command[-2:] == ["--run.resume", "true"]
    again = vedas_cli.run(*command[1:])
    assert again.returncode == 0, again.stderr[-2000:]
    _same_weights(full, cut)
    assert _steps(cut) == list(range(1, 13))
    assert _deterministic(_rows(cut)) == _deterministic(_rows(full))  # same losses, same stage events


def test_sigterm_saves_and_exits_143(vedas_cli, train_args, tmp_path):
    out = tmp_path / "run"
    proc = vedas_cli.popen(
        *train_args(out, **RUN), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    _wait(proc, _logged(out, 2), "step 2")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-2000:]
    m = re.search(r"interrupted by SIGTERM after optimizer step (\d+); saved (\S+)\.", err)
    assert m and (Path(m[2]) / "state.json").is_file()


@pytest.mark.slow
def test_after_sigkill_a_resume_logs_each_step_once_in_metrics_and_tensorboard(
    vedas_cli, train_args, tmp_path
):
    """Item 9: after a SIGKILL and resume, metrics.jsonl and TensorBoard repeated the redone steps."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    args = {**RUN, "run.save_every": 4}
    proc = vedas_cli.popen(*train_args(out, **args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait(proc, _logged(out, 6), "step 6")  # steps 5 and 6 are logged past checkpoint step-4
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 6 <= max(_steps(out)) < 8 and not (out / "checkpoints" / "step-8").exists()
    code, _, err = vedas_cli.main(*train_args(out, **{**args, "run.resume": "true"}))
    assert code == 0, err
    assert _steps(out) == list(range(1, 13))
    events = [r for r in _rows(out) if "event" in r]
    assert [e["epoch"] for e in events] == [0, 1, 2]  # T_r = 2: stages 0, 1, 2, each logged once
    tb = EventAccumulator(str(out / "tb"))
    tb.Reload()
    assert [e.step for e in tb.Scalars("loss")] == list(range(1, 13))


def _eval_args(ckpt, data, out) -> list[str]:
    return [
        "eval", "--checkpoint", str(ckpt), "--data", f"synthetic:{data}", "--batch-size", "1",
        "--max-new-tokens", "12", "--engine", "recompute", "--out", str(out),
    ]  # fmt: skip


def _without_latency(report: dict) -> dict:
    report = {k: v for k, v in report.items() if k != "latency_ms"}
    report["per_sample"] = [{k: v for k, v in s.items() if k != "latency_ms"} for s in report["per_sample"]]
    return report


@pytest.fixture(scope="module")
def eval_data(tmp_path_factory):
    from vedas.data import synth

    out = tmp_path_factory.mktemp("synth_eval")
    synth.write(out, train=0, test=24, seed=1, progress=False)
    return out


@pytest.mark.slow
def test_an_eval_interrupted_at_half_resumes_to_the_same_report(vedas_cli, ckpt, eval_data, tmp_path):
    """Item 9: vedas eval wrote nothing until it finished and could not resume."""
    full = vedas_cli.run(*_eval_args(ckpt, eval_data, tmp_path / "full" / "report.json"))
    assert full.returncode == 0, full.stderr[-2000:]
    out = tmp_path / "cut" / "report.json"
    partial = out.with_suffix(".jsonl")

    def half() -> bool:
        try:
            return sum('"batch"' in line for line in partial.read_text().splitlines()) >= 12
        except OSError:
            return False

    proc = vedas_cli.popen(
        *_eval_args(ckpt, eval_data, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    _wait(proc, half, "half of the batches")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0, "the eval ended by itself: was SIGINT ignored (see Vedas.popen)?"
    assert proc.returncode == 130, err[-2000:]
    m = re.search(r"interrupted after (\d+) of 24 records; they are in (\S+)\. Continue with:\n  (.+)", err)
    assert m and Path(m[2]) == partial and 12 <= int(m[1]) < 24, err[-2000:]
    assert not out.exists()
    command = shlex.split(m[3])
    assert command[:2] == ["vedas", "eval"] and command[-1] == "--resume"
    again = vedas_cli.run(*command[1:])
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming:" in again.stdout
    a = json.loads((tmp_path / "full" / "report.json").read_text())
    b = json.loads(out.read_text())
    assert _without_latency(a) == _without_latency(b)


def test_eval_resume_refuses_other_settings_and_a_fresh_run_keeps_unfinished_results(
    vedas_cli, ckpt, eval_data, tmp_path
):
    args = _eval_args(ckpt, eval_data, tmp_path / "report.json")
    args[args.index("--engine") + 1] = "cached"
    args += ["--limit", "6", "--batch-size", "2"]
    code, _, err = vedas_cli.main(*args)
    assert code == 0, err
    full = json.loads((tmp_path / "report.json").read_text())
    partial = tmp_path / "report.jsonl"
    lines = partial.read_text().splitlines()
    assert json.loads(lines[0])["header"]["ids"] == [s["id"] for s in full["per_sample"]]
    assert [json.loads(x).get("batch") for x in lines[1:-1]] == [0, 1, 2] and json.loads(lines[-1]) == {
        "done": True
    }
    partial.write_text("\n".join(lines[:2]) + "\n" + lines[2][:40])  # batch 0, then a line cut by a kill
    code, _, err = vedas_cli.main(*args)
    assert code == 2 and f"{partial} holds 1 batches of an unfinished evaluation" in err
    code, _, err = vedas_cli.main(*args, "--resume", "--max-new-tokens", "3")
    assert code == 2 and "was written by a different evaluation; max_new_tokens: saved 12, now 3" in err
    code, out, err = vedas_cli.main(*args, "--resume")
    assert code == 0, err
    assert "resuming: 1 batches already in" in out
    assert _without_latency(json.loads((tmp_path / "report.json").read_text())) == _without_latency(full)
