"""Fixtures of the robustness tests: a small synthetic benchmark and real ``vedas`` commands on it.

The tests here run the ``vedas`` command line as a user would: in-process through
:func:`vedas.cli.main` where only the exit code and the message matter, and as real subprocesses
where signals, locks or a second process are the point.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = "{hidden: 64, layers: 2, heads: 4, kv_heads: 2, vision_depth: 1, vision_hidden: 32, max_pixels: 12544}"
ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p),
}


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    from vedas.data import synth

    out = tmp_path_factory.mktemp("synth")
    synth.write(out, train=16, test=8, seed=0, progress=False)
    return out


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory) -> Path:
    """A saved tiny vedas checkpoint (never modified; tests break copies of it)."""
    import vedas

    model, processor = vedas.tiny_model("qwen2_vl", hidden=64, layers=2, seed=0)
    return vedas.VedasModel(model, processor).save(tmp_path_factory.mktemp("ckpt") / "c")


def train_overrides(synth_dir: Path, out: Path, **extra: object) -> list[str]:
    """``vedas train`` arguments for a 4-step run (8 records, batch 4, 2 epochs) of a 2-layer tiny model."""
    base: dict[str, object] = {
        "data.path": synth_dir,
        "data.limit": 8,
        "model.tiny": TINY,
        "optim.batch_size": 4,
        "optim.epochs": 2,
        "optim.lr": 3e-3,
        "optim.warmup_ratio": 0.0,
        "run.output_dir": out,
        "run.progress": "false",
        "run.log_every": 1,
        "latent.latents": 2,
        "latent.replay_k": 4,
        **extra,
    }
    args = ["train", "--config", str(ROOT / "configs/synthetic_tiny.yaml")]
    for k, v in base.items():
        args += [f"--{k}", str(v)]
    return args


@pytest.fixture(scope="session")
def train_args(synth_dir) -> Callable[..., list[str]]:
    """``train_args(out, **overrides)``: the arguments of a small ``vedas train`` into ``out``."""
    return lambda out, **extra: train_overrides(synth_dir, out, **extra)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Vedas:
    """The ``vedas`` command line, three ways: a subprocess command, a finished subprocess, in-process."""

    @staticmethod
    def cmd(*args: str) -> list[str]:
        return [sys.executable, "-m", "vedas.cli", *args]

    def run(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        """``vedas ARGS`` in a subprocess, its output captured as text."""
        return subprocess.run(self.cmd(*args), env=ENV, capture_output=True, text=True, timeout=timeout)

    def run_env(self, env: dict[str, str], *args: str, python: bool = False) -> subprocess.CompletedProcess:
        """Like :meth:`run` with ``env`` on top of the tests' environment; ``python``: ``python ARGS``."""
        cmd = [sys.executable, *args] if python else self.cmd(*args)
        return subprocess.run(cmd, env={**ENV, **env}, capture_output=True, text=True, timeout=600)

    def popen(self, *args: str, **kwargs: object) -> subprocess.Popen:
        """``vedas ARGS`` as a child with SIGINT at its default, as in a terminal: a test run started as a
        background job of a non-interactive shell (``bash -c '… &'``) has SIGINT ignored, the child
        inherits that, and Python then raises no KeyboardInterrupt, so ``vedas eval`` ran to the end."""
        return subprocess.Popen(self.cmd(*args), env=ENV, preexec_fn=_default_sigint, **kwargs)  # type: ignore[call-overload]

    @staticmethod
    def main(*args: str) -> tuple[int, str, str]:
        """``vedas ARGS`` through :func:`vedas.cli.main` in this process: (exit code, stdout, stderr)."""
        import contextlib
        import io

        from vedas.cli import main

        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as e:  # argparse errors
                code = int(e.code or 0)
        return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="session")
def vedas_cli() -> Vedas:
    return Vedas()
