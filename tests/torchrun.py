"""Real ``torchrun`` runs for the tests: two ranks over gloo on loopback, with the teardown abort retried.

    res = run(launch(2) + ["-m", "vedas.cli", "train", ...], rerun=["--run.overwrite", "true"])

Now and then a rank exits with SIGABRT *after* its work ("terminate called without an active
exception": gloo/DeepSpeed threads torn down at interpreter exit); tearing the process group down
explicitly instead made a run hang now and then. Only that abort is retried, and the retry must say
how it treats what the aborted run left behind (``rerun``): a fresh training run clears it
(``--run.overwrite true``: rerun as it was, the run would refuse the non-empty directory), a resume or
an evaluation continues from it (``--run.resume true`` / ``--resume``, or nothing when the command
already resumes).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Sequence

TEARDOWN_ABORT = "terminate called without an active exception"
TRIES = 3
"""One run and up to two retries: an abort in one run of several is common, in three in a row it is not."""


def free_port() -> int:
    """A loopback port the OS has just handed out: fixed ports collide when test runs overlap."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(processes: int = 2) -> list[str]:
    """``python -m torch.distributed.run`` for ``processes`` ranks on loopback, on a fresh port."""
    args = [
        "--nproc_per_node",
        str(processes),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
    ]
    return [sys.executable, "-m", "torch.distributed.run", *args]


def run(
    cmd: Sequence[str], rerun: Sequence[str], timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run ``cmd`` (one rank thread each: ``OMP_NUM_THREADS=1``, loopback gloo); after the teardown
    abort, run it again with ``rerun`` appended. The result of the last try is returned, unchecked."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", **(env or {})}
    res = subprocess.run(list(cmd), env=env, capture_output=True, text=True, timeout=timeout)
    for _ in range(TRIES - 1):
        if res.returncode == 0 or TEARDOWN_ABORT not in res.stderr:
            break
        res = subprocess.run([*cmd, *rerun], env=env, capture_output=True, text=True, timeout=timeout)
    return res
