"""Skipping bad records, in training and evaluation alike: counted, listed by id and reason, and never
part of ``n``. A record without a rationale stops a run that needs one unless it is skipped or, if
asked, trained on its answer alone."""

from __future__ import annotations

import json
import shutil

from PIL import Image

FIXTURES = __import__("pathlib").Path(__file__).resolve().parents[1] / "fixtures"


def _synth_copy(synth_dir, tmp_path, change):
    data = shutil.copytree(synth_dir, tmp_path / "synth")
    rows = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()]
    change(rows)
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return data


def _empty_rationale(rows):
    rows[2]["rationale"] = ""


def test_an_empty_rationale_stops_training_in_one_line_naming_the_record(
    vedas_cli, train_args, synth_dir, tmp_path
):
    """Item 7: one empty rationale aborted training with a ConfigError traceback."""
    data = _synth_copy(synth_dir, tmp_path, _empty_rationale)
    code, _, err = vedas_cli.main(*train_args(tmp_path / "run", **{"data.path": data}))
    assert code == 2 and "Traceback" not in err
    msg = err.strip().splitlines()[-1]
    assert "needs a rationale; 1 records have none: ['synth-train-000002']" in msg
    assert "--data.skip_bad true" in msg and "--data.answer_only true" in msg


def test_skip_bad_skips_an_empty_rationale_and_lists_it(vedas_cli, train_args, synth_dir, tmp_path):
    data = _synth_copy(synth_dir, tmp_path, _empty_rationale)
    out = tmp_path / "run"
    code, text, err = vedas_cli.main(*train_args(out, **{"data.path": data, "data.skip_bad": "true"}))
    assert code == 0, err
    assert "7 loaded of 8 rows read; skipped: no_rationale 1" in text
    assert "skipped synth-train-000002: no_rationale" in text
    rows = json.loads((out / "skipped.json").read_text())
    assert [(r["id"], r["reason"]) for r in rows] == [("synth-train-000002", "no_rationale")]


def test_answer_only_trains_a_record_without_rationale_on_its_answer(
    vedas_cli, train_args, synth_dir, tmp_path
):
    data = _synth_copy(synth_dir, tmp_path, _empty_rationale)
    out = tmp_path / "run"
    code, text, err = vedas_cli.main(*train_args(out, **{"data.path": data, "data.answer_only": "true"}))
    assert code == 0, err
    assert "1 records without a rationale train on the answer alone: ['synth-train-000002']" in text
    assert "8 loaded of 8 rows read; skipped: none" in text
    assert not (out / "skipped.json").exists()


def test_eval_skip_bad_reports_every_skipped_id_and_n_counts_only_the_scored(
    vedas_cli, ckpt, synth_dir, tmp_path
):
    """Item 7: with --skip-bad, report.json said n: 31 and recorded nothing of what was skipped."""
    data = shutil.copytree(synth_dir, tmp_path / "synth")
    (data / "images" / "synth-test-000001.png").write_bytes(b"\x89PNG broken")  # fails at load
    Image.new("RGB", (600, 2), "white").save(data / "images" / "synth-test-000004.png")  # fails in the model
    out = tmp_path / "report.json"
    args = ["eval", "--checkpoint", str(ckpt), "--data", f"synthetic:{data}", "--batch-size", "4"]
    args += ["--max-new-tokens", "2", "--out", str(out)]
    code, _, err = vedas_cli.main(*args)
    assert code == 2 and "synth-test-000001" in err  # without --skip-bad: the first bad record stops it
    code, _, err = vedas_cli.main(*args, "--skip-bad")
    assert code == 0, err
    report = json.loads(out.read_text())
    assert report["n"] == 6 and len(report["per_sample"]) == 6 and report["n_skipped"] == 2
    skipped = {r["id"]: r for r in report["skipped"]}
    assert skipped.keys() == {"synth-test-000001", "synth-test-000004"}
    assert skipped["synth-test-000001"]["reason"] == "bad_image"
    assert skipped["synth-test-000004"]["reason"] == "bad_input"
    assert "record 'synth-test-000004'" in skipped["synth-test-000004"]["message"]
    assert {s["id"] for s in report["per_sample"]}.isdisjoint(skipped)
