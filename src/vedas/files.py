"""Files every layer shares: writing one so that a reader (or a run killed half-way) never sees half of
it, and finding the newest training checkpoint (``vedas.load`` and ``vedas train`` both look)."""

from __future__ import annotations

import os
from pathlib import Path


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to a temporary sibling, fsync it, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def latest_step(checkpoints: Path) -> Path | None:
    """The newest complete checkpoint under ``checkpoints`` (``step-N`` directories), if any."""
    if not checkpoints.is_dir():
        return None
    done = [p for p in checkpoints.iterdir() if p.name.startswith("step-") and (p / "state.json").is_file()]
    return max(done, key=lambda p: int(p.name.split("-")[1]), default=None)


__all__ = ["atomic_write_text", "latest_step"]
