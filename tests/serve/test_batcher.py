"""The dynamic batching rule, in process: batch size, timeout, keys, the one-running-batch bound,
cancelled requests and failures confined to their batch."""

from __future__ import annotations

import threading
import time

import pytest

from vedas.serve.batcher import Batcher, QueueFull, ShuttingDown


class Recorder:
    """A batch function that records each batch and can be slowed down or made to fail."""

    def __init__(self, seconds: float = 0.0, fail_on: object = None) -> None:
        self.batches: list[list[object]] = []
        self.seconds = seconds
        self.fail_on = fail_on
        self.started = threading.Event()

    def __call__(self, jobs):
        self.started.set()
        self.batches.append(list(jobs))
        time.sleep(self.seconds)
        if self.fail_on in jobs:
            raise RuntimeError(f"job {self.fail_on} broke its batch")
        return [f"done {j}" for j in jobs]


def running(fn, **kw) -> Batcher:
    b = Batcher(fn, **kw)
    b.start()
    return b


def test_a_full_queue_runs_in_batches_of_max_size_in_arrival_order():
    rec = Recorder()
    b = Batcher(rec, max_batch_size=4, timeout_s=60.0)
    futures = [b.submit(i) for i in range(9)]  # queued before the worker starts
    b.start()
    # two full batches at once; the ninth waited through them, so it runs next, not after 60 s
    assert [f.result(5) for f in futures] == [f"done {i}" for i in range(9)]
    assert rec.batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8]]
    b.stop()


def test_stop_fails_what_is_still_queued():
    b = running(Recorder(), max_batch_size=4, timeout_s=60.0)
    waiting = b.submit("x")  # alone on an idle worker: it waits for its 60 s timeout
    b.stop()
    with pytest.raises(RuntimeError, match="shut down"):
        waiting.result(5)
    with pytest.raises(RuntimeError, match="shutting down"):
        b.submit("y")


def test_a_lone_request_runs_after_the_timeout():
    rec = Recorder()
    b = running(rec, max_batch_size=16, timeout_s=0.15)
    t0 = time.monotonic()
    assert b.submit("x").result(5) == "done x"
    assert 0.15 <= time.monotonic() - t0 < 2.0
    b.stop()


def test_requests_that_came_during_a_running_batch_go_into_the_next_one_without_waiting():
    rec = Recorder(seconds=0.3)
    b = running(rec, max_batch_size=16, timeout_s=2.0)  # waiting for it again would be visible
    b.submit("a")
    rec.started.wait(10)  # "a" runs after its 2 s timeout; the clock starts when it does
    t0 = time.monotonic()
    late = [b.submit(i) for i in range(3)]
    assert [f.result(10) for f in late] == ["done 0", "done 1", "done 2"]
    # waited for the rest of a's batch (≤ 0.3 s) and their own (0.3 s), not for another 2 s timeout
    assert time.monotonic() - t0 < 1.5
    assert rec.batches == [["a"], [0, 1, 2]]
    b.stop()


def test_only_requests_with_the_same_key_share_a_batch():
    rec = Recorder()
    b = running(rec, max_batch_size=8, timeout_s=0.1)
    futures = [b.submit(i, key=i % 2) for i in range(6)]
    assert [f.result(5) for f in futures] == [f"done {i}" for i in range(6)]
    assert sorted(rec.batches) == [[0, 2, 4], [1, 3, 5]]
    b.stop()


def test_a_failing_batch_is_rerun_row_by_row_so_only_the_bad_job_fails():
    rec = Recorder(fail_on="bad")
    b = running(rec, max_batch_size=3, timeout_s=0.05)
    bad, *good = [b.submit("bad", key="k"), b.submit("other", key="k"), b.submit("third", key="k")]
    with pytest.raises(RuntimeError, match="broke its batch"):
        bad.result(5)
    assert [f.result(5) for f in good] == ["done other", "done third"]
    assert rec.batches == [["bad", "other", "third"], ["bad"], ["other"], ["third"]]
    assert b.submit("after", key="k").result(5) == "done after"
    assert b.stats.failed_batches == 1 and b.stats.failed_rows == 1 and b.stats.retried_rows == 3
    b.stop()


def test_a_full_queue_refuses_and_stopping_fails_the_queued_jobs():
    rec = Recorder(seconds=0.3)
    b = running(rec, max_batch_size=1, timeout_s=0.0, max_queued=2)
    running_job = b.submit("busy")
    rec.started.wait(5)
    queued = [b.submit("q1"), b.submit("q2")]
    with pytest.raises(QueueFull, match="2 requests are queued"):
        b.submit("q3")
    b.begin_stop()
    for f in queued:
        with pytest.raises(ShuttingDown):
            f.result(5)
    assert running_job.result(5) == "done busy"  # the running batch finishes
    with pytest.raises(ShuttingDown):
        b.submit("late")
    b.stop()
    assert b.stats.refused_full == 1 and rec.batches == [["busy"]]


def test_a_cancelled_request_is_dropped_before_its_batch_starts():
    rec = Recorder(seconds=0.3)
    b = running(rec, max_batch_size=4, timeout_s=0.0)
    b.submit("busy")
    rec.started.wait(5)
    gone, kept = b.submit("gone"), b.submit("kept")
    assert gone.cancel()
    assert kept.result(5) == "done kept"
    assert rec.batches == [["busy"], ["kept"]] and b.stats.dropped == 1
    b.stop()


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="max_batch_size"):
        Batcher(Recorder(), max_batch_size=0)
    with pytest.raises(ValueError, match="timeout_s"):
        Batcher(Recorder(), timeout_s=-1)
