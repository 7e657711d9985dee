"""``vedas eval`` output: two runs into one ``--out`` cannot mix their files, and an ``--out`` named
like the table or the per-batch log is refused instead of overwriting one with another."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest


def _eval_args(ckpt, synth_dir, out) -> list[str]:
    args = ["eval", "--checkpoint", str(ckpt), "--data", f"synthetic:{synth_dir}", "--max-new-tokens", "2"]
    return [*args, "--batch-size", "2", "--device", "cpu", "--out", str(out)]


def test_a_second_eval_into_the_same_out_is_refused_while_the_first_runs(
    vedas_cli, ckpt, synth_dir, tmp_path
):
    out = tmp_path / "report.json"
    lock = tmp_path / ".report.vedas-eval.lock"
    first = vedas_cli.popen(*_eval_args(ckpt, synth_dir, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (lock.is_file() and lock.read_text().strip() == str(first.pid)):
            assert first.poll() is None and time.monotonic() < deadline, "the first eval never took the lock"
            time.sleep(0.01)
        os.kill(first.pid, signal.SIGSTOP)  # hold the first one inside its locked section
        try:
            code, _, err = vedas_cli.main(*_eval_args(ckpt, synth_dir, out))
        finally:
            os.kill(first.pid, signal.SIGCONT)
        assert code == 2
        assert err.strip().splitlines()[-1] == (
            f"vedas eval: --out {out}: another vedas eval (pid {first.pid}) is writing these results "
            f"(lock file {lock}); wait for it or choose another --out"
        )
        _, stderr = first.communicate(timeout=300)
        assert first.returncode == 0, stderr[-2000:]
    finally:
        if first.poll() is None:
            first.kill()
    # the report and the per-batch log are the first run's, whole
    report = json.loads(out.read_text())
    rows = [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()]
    assert report["n"] == sum(len(r["rows"]) for r in rows if "rows" in r) == 8
    # and once it is done the output is free again
    code, _, err = vedas_cli.main(*_eval_args(ckpt, synth_dir, tmp_path / "again.json"))
    assert code == 0, err


@pytest.mark.parametrize("name", ["results.md", "results.jsonl", "results.MD"])
def test_an_out_named_like_the_table_or_the_log_is_refused(vedas_cli, ckpt, synth_dir, tmp_path, name):
    code, _, err = vedas_cli.main(*_eval_args(ckpt, synth_dir, tmp_path / name))
    assert code == 2
    stem = name.split(".")[0]
    assert err.strip() == (
        f"vedas eval: --out {tmp_path / name}: the JSON report goes to --out and the table and per-batch "
        f"log beside it ({stem}.md, {stem}.jsonl), so this name would overwrite one with another; "
        f"give a .json path such as {tmp_path / stem}.json"
    )
    assert list(tmp_path.iterdir()) == []  # refused before anything was written
