"""A run's output directory: a fresh run never mixes with an earlier one, a resume continues only the
run the directory holds, one run at a time (a lock), and ``run.keep_last`` bounds the checkpoints."""

from __future__ import annotations

import subprocess
import time

import yaml


def _steps(out) -> list[str]:
    return sorted((p.name for p in (out / "checkpoints").iterdir()), key=lambda n: int(n.split("-")[1]))


def test_a_fresh_run_refuses_a_used_directory_and_overwrite_clears_it(vedas_cli, train_args, tmp_path):
    """Item 1: a fresh run into an old run's directory kept the old later checkpoints, and a resume
    then exported the old run's step to final/."""
    out = tmp_path / "run"
    code, _, err = vedas_cli.main(*train_args(out, **{"run.save_every": 1}))
    assert code == 0, err
    assert _steps(out) == ["step-1", "step-2", "step-3", "step-4"]
    before = (out / "checkpoints" / "step-4" / "trainable.safetensors").read_bytes()

    code, _, err = vedas_cli.main(*train_args(out, **{"run.max_steps": 2}))
    assert code == 2
    assert f"run.output_dir: {out} is not empty" in err and "--run.overwrite true" in err
    assert "Traceback" not in err
    assert (out / "checkpoints" / "step-4" / "trainable.safetensors").read_bytes() == before

    code, _, err = vedas_cli.main(*train_args(out, **{"run.max_steps": 2, "run.overwrite": "true"}))
    assert code == 0, err
    assert _steps(out) == ["step-2"]  # the old run's step-1…4 are gone; this run saved at its end


def test_a_resume_with_other_defining_fields_names_each_and_changes_nothing(vedas_cli, train_args, tmp_path):
    out = tmp_path / "run"
    assert vedas_cli.main(*train_args(out, **{"run.max_steps": 2}))[0] == 0
    saved = (out / "config.yaml").read_text()
    code, _, err = vedas_cli.main(
        *train_args(out, **{"run.resume": "true", "latent.latents": 3, "optim.seed": 1})
    )
    assert code == 2
    assert "run.resume:" in err and "belongs to a different run" in err
    assert "latent.latents: saved 2, now 3" in err and "optim.seed: saved 0, now 1" in err
    assert (out / "config.yaml").read_text() == saved  # config.yaml still describes what was trained
    # run.* may change: more steps continue the same run
    code, out_text, err = vedas_cli.main(*train_args(out, **{"run.resume": "true", "run.max_steps": 3}))
    assert code == 0, err
    assert f"resumed from {out / 'checkpoints' / 'step-2'}" in out_text
    assert yaml.safe_load((out / "config.yaml").read_text())["run"]["max_steps"] == 3


def test_a_resume_without_a_checkpoint_and_resume_with_overwrite_fail_at_once(
    vedas_cli, train_args, tmp_path
):
    code, _, err = vedas_cli.main(*train_args(tmp_path / "none", **{"run.resume": "true"}))
    assert code == 2 and f"run.resume: no checkpoint under {tmp_path / 'none' / 'checkpoints'}" in err
    code, _, err = vedas_cli.main(
        *train_args(tmp_path / "x", **{"run.resume": "true", "run.overwrite": "true"})
    )
    assert code == 2 and "run.overwrite: cannot be combined with run.resume" in err


def test_keep_last_keeps_the_newest_checkpoints(vedas_cli, train_args, tmp_path):
    out = tmp_path / "run"
    code, _, err = vedas_cli.main(*train_args(out, **{"run.save_every": 1, "run.keep_last": 2}))
    assert code == 0, err
    assert _steps(out) == ["step-3", "step-4"]


def test_a_second_run_into_a_directory_in_use_fails_at_once_naming_the_lock(vedas_cli, train_args, tmp_path):
    """Item 3: two runs into one directory both exited 0 with interleaved metrics and mixed checkpoints."""
    import signal

    out = tmp_path / "run"
    # long enough to still run when the second has failed (50 epochs finished first on a quiet machine)
    args = {"optim.epochs": 1000, "run.save_every": 2}
    first = vedas_cli.popen(*train_args(out, **args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lock = out / ".vedas-train.lock"
    deadline = time.time() + 120
    while not (out / "checkpoints" / "step-2").is_dir():
        assert first.poll() is None, "the first run ended early"
        assert time.time() < deadline
        time.sleep(0.05)
    t0 = time.time()
    second = vedas_cli.run(*train_args(out, **args))
    took = time.time() - t0
    try:
        assert first.poll() is None, "the first run should still hold the directory"
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert second.returncode == 2, second.stderr[-2000:]
    msg = second.stderr.strip().splitlines()[-1]
    assert f"is in use by another vedas train (pid {first.pid}, lock file {lock})" in msg
    assert took < 60  # at once: before any data or model
    assert not (out / "final").exists()
    # the lock died with its owner, even by SIGKILL: a resume of that run may start
    code, _, err = vedas_cli.main(*train_args(out, **{**args, "run.resume": "true", "run.max_steps": 1}))
    assert code == 0, err
    assert (out / "final" / "config.yaml").is_file()
