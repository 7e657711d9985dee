"""Dynamic batching: requests queue up and one worker thread runs them in batches.

    batcher = Batcher(lambda jobs: run_jobs(vm, jobs), max_batch_size=16, timeout_s=0.010)
    batcher.start()
    future = batcher.submit(job, key=job.key)   # a concurrent.futures.Future of the job's result
    batcher.stop()

How a batch is formed (see docs/design.md#serving):

- The oldest queued request opens the next batch; queued requests with the same key (what
  one engine call must share) join it in arrival order, up to ``max_batch_size``.
- The batch runs when it is full or when its oldest request has waited ``timeout_s``, the
  time given to others to join while the engine is idle. A request that arrived while a
  batch was running has waited already, so the next batch starts as soon as that one
  ends: no request waits for more than the batch that was running when it came.
- A request cancelled before its batch starts (its client went away) is dropped; one that
  is cancelled while its batch runs is computed and its result thrown away, so a client that
  disconnects never stalls the others.
- If the batch function raises, that batch's futures get the exception and the worker goes
  on with the next batch.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

BatchFn = Callable[[Sequence[Any]], Sequence[Any]]


@dataclass
class _Item:
    job: Any
    key: Hashable
    future: Future
    arrived: float = field(default_factory=time.monotonic)


@dataclass
class Stats:
    """Counters the ``/health`` endpoint reports."""

    submitted: int = 0
    batches: int = 0
    rows: int = 0  # jobs that went through the batch function
    failed_batches: int = 0
    dropped: int = 0  # cancelled before their batch started
    sizes: list[int] = field(default_factory=list)  # every batch's size, in order (bounded)


class Batcher:
    """Gathers submitted jobs into batches of ``fn`` on one worker thread."""

    SIZES_KEPT = 4096

    def __init__(self, fn: BatchFn, max_batch_size: int = 16, timeout_s: float = 0.010) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size: must be ≥ 1, got {max_batch_size}")
        if timeout_s < 0:
            raise ValueError(f"timeout_s: must be ≥ 0, got {timeout_s}")
        self.fn = fn
        self.max_batch_size = max_batch_size
        self.timeout_s = timeout_s
        self.stats = Stats()
        self._queue: deque[_Item] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._free_since = time.monotonic()  # when the worker last became idle
        self._thread = threading.Thread(target=self._work, name="vedas-batcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = 30.0) -> None:
        """Finish the running batch, fail what is still queued, end the worker."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def queued(self) -> int:
        with self._cond:
            return len(self._queue)

    def submit(self, job: Any, key: Hashable = None) -> Future:
        fut: Future = Future()
        with self._cond:
            if self._stopping:
                raise RuntimeError("the server is shutting down")
            self._queue.append(_Item(job, key, fut))
            self.stats.submitted += 1
            self._cond.notify_all()
        return fut

    # --- the worker ----------------------------------------------------------------------
    def _take(self) -> list[_Item] | None:
        """Wait for the next batch (None once stopping); see the module docstring for the rule."""
        with self._cond:
            while True:
                self._drop_cancelled()
                if self._stopping:
                    return None
                if not self._queue:
                    self._cond.wait()
                    continue
                head = self._queue[0]
                same = [it for it in self._queue if it.key == head.key][: self.max_batch_size]
                # queued while a batch ran: it has waited already
                wait = (
                    0.0
                    if head.arrived < self._free_since
                    else head.arrived + self.timeout_s - time.monotonic()
                )
                if len(same) >= self.max_batch_size or wait <= 0:
                    for it in same:
                        self._queue.remove(it)
                    return same
                self._cond.wait(wait)

    def _drop_cancelled(self) -> None:
        kept = [it for it in self._queue if not it.future.cancelled()]
        self.stats.dropped += len(self._queue) - len(kept)
        self._queue = deque(kept)

    def _work(self) -> None:
        while (batch := self._take()) is not None:
            # a future cancelled since _take cannot run any more; the rest are marked running
            batch = [it for it in batch if it.future.set_running_or_notify_cancel()]
            if batch:
                self._run(batch)
            with self._cond:
                self._free_since = time.monotonic()
        with self._cond:
            for it in self._queue:
                if it.future.set_running_or_notify_cancel():
                    it.future.set_exception(RuntimeError("the server shut down before this request ran"))
            self._queue.clear()

    def _run(self, batch: list[_Item]) -> None:
        self.stats.batches += 1
        self.stats.rows += len(batch)
        if len(self.stats.sizes) < self.SIZES_KEPT:
            self.stats.sizes.append(len(batch))
        try:
            results = list(self.fn([it.job for it in batch]))
            if len(results) != len(batch):
                raise RuntimeError(
                    f"the batch function returned {len(results)} results for {len(batch)} jobs"
                )
        except Exception as e:  # one failed batch fails its own requests only
            self.stats.failed_batches += 1
            for it in batch:
                it.future.set_exception(e)
            return
        for it, res in zip(batch, results):
            it.future.set_result(res)
