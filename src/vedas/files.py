"""Files every layer shares: writing one so that a reader (or a run killed half-way) never sees half of
it, and finding the newest training checkpoint (``vedas.load`` and ``vedas train`` both look)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import IO

from vedas.config import ConfigError


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to a temporary sibling, fsync it, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def current_umask() -> int:
    """The process umask: from /proc where Linux shows it, else by setting it and putting it back (a
    moment in which another thread's new files would get mode 0666)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def honour_umask(tree: Path) -> None:
    """Give ``tree`` and everything under it the modes the umask allows (dirs 0777, files 0666, masked).

    ``tempfile.mkdtemp`` makes its directory 0700 whatever the umask, and an atomic save renames
    that directory into place: without this a checkpoint is readable by its owner only, so no one
    else in a shared lab, and no server running as another user, can load it.
    """
    umask = current_umask()
    tree.chmod(0o777 & ~umask)
    for root, dirs, files in os.walk(tree):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o777 & ~umask)
        for f in files:
            os.chmod(os.path.join(root, f), 0o666 & ~umask)


def latest_step(checkpoints: Path) -> Path | None:
    """The newest complete checkpoint under ``checkpoints`` (``step-N`` directories), if any."""
    if not checkpoints.is_dir():
        return None
    done = [p for p in checkpoints.iterdir() if p.name.startswith("step-") and (p / "state.json").is_file()]
    return max(done, key=lambda p: int(p.name.split("-")[1]), default=None)


class Lock:
    """An exclusive ``flock`` on a lock file (``vedas train``'s ``<output_dir>/.vedas-train.lock``, ``vedas eval``'s beside its output); :meth:`release` (or process exit) frees it."""

    def __init__(self, path: Path, handle: IO[str] | None) -> None:
        self.path = path
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing the descriptor drops the flock
            self._handle = None


def lock_file(path: Path, in_use: Callable[[str], str]) -> Lock:
    """An exclusive ``flock`` on ``path`` (created; it holds the owner's pid), or a ConfigError
    ``in_use(owner pid)`` when another process holds it. The lock dies with its process, even by SIGKILL."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): run unlocked rather than not at all
        return Lock(path, None)
    handle = open(path, "a+")  # noqa: SIM115 - held open for the lock's lifetime
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        owner = handle.read().strip() or "unknown"
        handle.close()
        raise ConfigError(in_use(owner)) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return Lock(path, handle)


__all__ = ["Lock", "atomic_write_text", "current_umask", "honour_umask", "latest_step", "lock_file"]
