"""Training metrics as JSONL (``metrics.jsonl``) and TensorBoard (``tb/``), with each step logged once.

    logger = MetricLogger(out_dir, active=is_main, resumed_at=state.step if resuming else None)
    logger.log({"step": 3, "loss": 0.7, ...}); logger.event({"epoch": 1, "stage": 1, "step": 2})

A resumed run redoes the steps after its checkpoint, which the interrupted run may already have
logged (a SIGKILL between checkpoints). So a logger that resumes at step S first cuts
``metrics.jsonl`` back to what was true at S (metric rows of steps ≤ S; stage events of steps
< S, since the event of an epoch that starts at S comes after checkpoint S), then rebuilds
``tb/`` from those rows: one new event file holding exactly them, after which the old event
files are removed. (TensorBoard's own ``purge_step`` is not enough: it only works when the new
event file sorts after the old one, and file names order by whole seconds, then by pid — a
run killed within its first second and resumed by a lower pid sorted first and showed the
redone steps twice.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vedas.files import atomic_write_text

FILE = "metrics.jsonl"


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def truncate(path: Path, step: int) -> int:
    """Keep the rows of ``path`` that were written by step ``step`` (module docstring); returns how many went."""
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a kill
            dropped += 1
            continue
        at = row.get("step", 0)
        if at < step or (at == step and "event" not in row):
            kept.append(line)
        else:
            dropped += 1
    atomic_write_text(path, "".join(f"{line}\n" for line in kept))
    return dropped


class MetricLogger:
    """Metrics as JSONL and TensorBoard, main process only; ``resumed_at`` cuts both back to that step."""

    def __init__(self, out_dir: Path, active: bool, resumed_at: int | None = None) -> None:
        self.active = active
        self.tb = None
        if active:
            out_dir.mkdir(parents=True, exist_ok=True)
            if resumed_at is not None:
                truncate(out_dir / FILE, resumed_at)
            self.file = open(out_dir / FILE, "a")  # noqa: SIM115
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is a dependency, but a trimmed install still trains
                return
            tb_dir = out_dir / "tb"
            old = sorted(tb_dir.glob("events.out.tfevents.*")) if resumed_at is not None else []
            self.tb = SummaryWriter(str(tb_dir))
            if resumed_at is not None:
                for row in _rows(out_dir / FILE):
                    if "event" not in row:
                        self._scalars(row)
                self.tb.flush()
                for path in old:  # the new file holds all they had up to the checkpoint
                    path.unlink(missing_ok=True)

    def _scalars(self, metrics: dict[str, Any]) -> None:
        assert self.tb is not None
        for k, v in metrics.items():
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                self.tb.add_scalar(k, v, metrics["step"])

    def log(self, metrics: dict[str, Any]) -> None:
        if not self.active:
            return
        self.file.write(json.dumps(metrics) + "\n")
        self.file.flush()
        if self.tb is not None:
            self._scalars(metrics)

    def event(self, info: dict[str, Any]) -> None:
        """The stage schedule, logged as it happens."""
        if self.active:
            self.file.write(json.dumps({"event": "stage", **info}) + "\n")
            self.file.flush()
            print(f"epoch {info['epoch']}: curriculum stage {info['stage']}")

    def close(self) -> None:
        if self.active:
            self.file.close()
            if self.tb is not None:
                self.tb.close()


__all__ = ["FILE", "MetricLogger", "truncate"]
