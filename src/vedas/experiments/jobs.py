"""Independent trainings of the demo and the ablation side by side: ``--jobs N`` processes.

A tiny model's training step is mostly small-op overhead, so a second thread speeds one
process up far less than a second process doubles the work done: on 2 cores, two trainings
of one thread each finish sooner than the same two one after the other with two threads.
:func:`run_graph` runs a set of jobs where finishing one may release others (``cot`` releases
the latent methods that continue from it), in ``jobs`` worker processes of
``threads // jobs`` threads each (``spawn``: nothing of the parent's state is inherited).
With ``jobs = 1`` everything runs in this process, in order: the plain path, easy to debug.

A worker's failure is raised here; the jobs not started yet are cancelled, the running ones
are stopped, so nothing is left training in the background.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Hashable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

Job = tuple[Hashable, Callable[..., Any], tuple[Any, ...]]
"""(key, function, arguments): the function and its arguments must pickle (module-level functions)."""


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def worker_threads(jobs: int) -> int:
    """Torch threads per worker: this process's share of the threads it would use alone."""
    import torch

    return max(1, torch.get_num_threads() // max(1, jobs))


def run_graph(
    roots: Iterable[Job],
    children: Callable[[Hashable, Any], list[Job]],
    jobs: int = 1,
    priority: Callable[[Hashable], Any] | None = None,
) -> Iterator[tuple[Hashable, Any]]:
    """Run ``roots`` and, as each job finishes, the jobs ``children(key, result)`` releases.

    Yields ``(key, result)`` in the order the jobs finish (with ``jobs = 1``: depth first, so a
    job's children run before the next root). With ``jobs`` > 1 a job starts only when a worker is
    free, the waiting job of lowest ``priority(key)`` first (ties: in the order released), so a run
    stopped early has finished what matters most.
    """
    if jobs < 1:
        raise ValueError(f"--jobs: must be at least 1, got {jobs}")
    if jobs == 1:
        queue = list(roots)
        while queue:
            key, fn, args = queue.pop(0)
            result = fn(*args)
            yield key, result
            queue[0:0] = children(key, result)
        return
    ex = ProcessPoolExecutor(
        jobs,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_set_threads,
        initargs=(worker_threads(jobs),),
    )
    futures: dict[Future[Any], Hashable] = {}
    waiting: list[tuple[Any, int, Job]] = []
    released = 0

    def release(new: Iterable[Job]) -> None:
        nonlocal released
        for job in new:
            waiting.append((0 if priority is None else priority(job[0]), released, job))
            released += 1
        waiting.sort(key=lambda w: (w[0], w[1]))
        while waiting and len(futures) < jobs:
            key, fn, args = waiting.pop(0)[2]
            futures[ex.submit(fn, *args)] = key

    try:
        release(roots)
        while futures:
            done, _ = wait(futures, return_when=FIRST_COMPLETED)
            for f in done:
                key = futures.pop(f)
                result = f.result()
                yield key, result
                release(children(key, result))
    except BaseException:
        for f in futures:
            f.cancel()
        for p in list(getattr(ex, "_processes", {}).values()):  # running trainings: stop them
            p.terminate()
        ex.shutdown(wait=False, cancel_futures=True)
        raise
    ex.shutdown(wait=True)


__all__ = ["Job", "run_graph", "worker_threads"]
