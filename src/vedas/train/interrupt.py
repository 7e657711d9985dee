"""SIGINT and SIGTERM during training: finish the optimizer step, save, say how to resume, exit 130/143.

    with StopOnSignal() as stop:
        for ...:
            train_step(...)
            if (signum := stop.requested(acc)) is not None:
                save_checkpoint(...)
                raise Interrupted(signum, step, checkpoint)

The first signal only sets a flag (and says so); the loop checks it after each optimizer step,
so the weights, optimizer and data position saved are those of a whole step, and a resume
continues exactly there. A second Ctrl-C stops at once (``KeyboardInterrupt``). Under several
processes the flag is summed across ranks every step, so every rank stops after the same step
(torchrun forwards the signal, but not at the same instant).
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    """Training stopped on a signal after a whole step; ``checkpoint`` is where it was saved (or None)."""

    def __init__(self, signum: int, step: int, checkpoint: Any) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name} after optimizer step {step}")
        self.signum = signum
        self.step = step
        self.checkpoint = checkpoint

    @property
    def exit_code(self) -> int:
        """128 + the signal number, as a shell reports a process the signal ended: 130, 143."""
        return 128 + self.signum


class StopOnSignal:
    """While active, SIGINT/SIGTERM set :attr:`signum` instead of stopping the process (main thread only)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.signum = signum
        print(
            f"\n{signal.Signals(signum).name}: finishing this optimizer step, then saving a checkpoint "
            "(Ctrl-C again to stop at once)",
            file=sys.stderr,
            flush=True,
        )

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    def requested(self, acc: Any) -> int | None:
        """The signal to stop on, agreed by every process (the first rank's that got one), else None."""
        if acc.num_processes == 1:
            return self.signum
        import torch

        mine = torch.tensor([float(self.signum or 0)], device=acc.device)
        return int(acc.gather(mine).max().item()) or None


__all__ = ["Interrupted", "StopOnSignal"]
