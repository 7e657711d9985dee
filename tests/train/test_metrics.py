"""metrics.jsonl and TensorBoard after a resume: every step once, whatever the event files are named."""

from __future__ import annotations

import json
import shutil

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from vedas.train.metrics import FILE, MetricLogger


def _log(out, steps, resumed_at=None, loss=0.0):
    logger = MetricLogger(out, active=True, resumed_at=resumed_at)
    for s in steps:
        logger.log({"step": s, "loss": loss + s, "lr": 1e-3, "note": "x"})
    logger.close()


def _tb(out) -> list[tuple[int, float]]:
    acc = EventAccumulator(str(out / "tb"))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars("loss")]


def test_a_resume_rebuilds_tensorboard_from_the_kept_rows_even_when_the_old_file_sorts_last(tmp_path):
    out = tmp_path / "run"
    _log(out, range(1, 7))  # the interrupted run logged 1..6; its checkpoint is step 4
    # the old event file sorting after the new one is what happens when the killed run started in
    # the same second as the resume and had a higher pid; a far-future timestamp forces it here
    (old,) = (out / "tb").glob("events.out.tfevents.*")
    shutil.move(old, old.with_name("events.out.tfevents.9999999999.host.99999.0"))
    _log(out, range(5, 13), resumed_at=4, loss=100.0)
    rows = [json.loads(line) for line in (out / FILE).read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 13))
    want = [(s, float(s)) for s in range(1, 5)] + [(s, 100.0 + s) for s in range(5, 13)]
    assert _tb(out) == want
    assert len(list((out / "tb").glob("events.out.tfevents.*"))) == 1


def test_a_fresh_run_keeps_what_tensorboard_had(tmp_path):
    out = tmp_path / "run"
    _log(out, range(1, 4))
    assert _tb(out) == [(1, 1.0), (2, 2.0), (3, 3.0)]
