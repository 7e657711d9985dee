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
- If the batch function raises, each of that batch's jobs is run again alone, so only the
  job at fault gets the exception and the others their results; then the worker goes on.
- At most ``max_queued`` jobs wait: :meth:`Batcher.submit` raises :class:`QueueFull` past it
  (the app answers 429). :meth:`Batcher.stop` lets the running batch finish and fails every
  queued job with :class:`ShuttingDown` (the app answers 503).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

BatchFn = Callable[[Sequence[Any]], Sequence[Any]]
log = logging.getLogger("vedas.serve")


class QueueFull(RuntimeError):
    """``max_queued`` jobs are waiting already."""


class ShuttingDown(RuntimeError):
    """The batcher stopped before this job ran, or was stopping when it was submitted."""


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
    retried_rows: int = 0  # jobs run again alone after their batch raised
    failed_rows: int = 0  # jobs that raised alone too
    refused_full: int = 0  # submissions refused because the queue was full
    dropped: int = 0  # cancelled before their batch started
    sizes: list[int] = field(default_factory=list)  # every batch's size, in order (bounded)


class Batcher:
    """Gathers submitted jobs into batches of ``fn`` on one worker thread."""

    SIZES_KEPT = 4096

    def __init__(
        self, fn: BatchFn, max_batch_size: int = 16, timeout_s: float = 0.010, max_queued: int = 1024
    ) -> None:
        if max_queued < 1:
            raise ValueError(f"max_queued: must be ≥ 1, got {max_queued}")
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size: must be ≥ 1, got {max_batch_size}")
        if timeout_s < 0:
            raise ValueError(f"timeout_s: must be ≥ 0, got {timeout_s}")
        self.fn = fn
        self.max_batch_size = max_batch_size
        self.timeout_s = timeout_s
        self.max_queued = max_queued
        self.stats = Stats()
        self._queue: deque[_Item] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._free_since = time.monotonic()  # when the worker last became idle
        self._thread = threading.Thread(target=self._work, name="vedas-batcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def begin_stop(self) -> None:
        """Refuse new jobs and fail the queued ones now; the running batch finishes."""
        with self._cond:
            self._stopping = True
            self._fail_queued()
            self._cond.notify_all()

    def stop(self, timeout: float | None = 30.0) -> None:
        """Finish the running batch, fail what is still queued, end the worker."""
        self.begin_stop()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def stopping(self) -> bool:
        return self._stopping

    def queued(self) -> int:
        with self._cond:
            return len(self._queue)

    def submit(self, job: Any, key: Hashable = None) -> Future:
        fut: Future = Future()
        with self._cond:
            if self._stopping:
                raise ShuttingDown("the server is shutting down")
            if len(self._queue) >= self.max_queued:
                self.stats.refused_full += 1
                raise QueueFull(f"{len(self._queue)} requests are queued already (--max-queued)")
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
            self._fail_queued()

    def _fail_queued(self) -> None:
        """Fail every queued job (the lock is held)."""
        for it in self._queue:
            if it.future.set_running_or_notify_cancel():
                it.future.set_exception(ShuttingDown("the server shut down before this request ran"))
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
        except Exception as e:
            self.stats.failed_batches += 1
            if len(batch) == 1:
                self.stats.failed_rows += 1
                batch[0].future.set_exception(e)
            else:  # one job at fault must not fail the others: each runs again alone
                log.warning(
                    "a batch of %d failed (%s: %s): its rows run again alone", len(batch), type(e).__name__, e
                )
                self.stats.retried_rows += len(batch)
                for it in batch:
                    self._run_alone(it)
            return
        for it, res in zip(batch, results):
            it.future.set_result(res)

    def _run_alone(self, it: _Item) -> None:
        try:
            (res,) = self.fn([it.job])
        except Exception as e:
            self.stats.failed_rows += 1
            it.future.set_exception(e)
            return
        it.future.set_result(res)
