"""The CLI's one error boundary: a user error is one line naming the file, row or field, and exit 2;
``--debug`` or ``VEDAS_DEBUG=1`` shows the traceback; an unexpected error keeps its traceback."""

from __future__ import annotations

import shutil

import pytest

FIXTURES = __import__("pathlib").Path(__file__).resolve().parents[1] / "fixtures"


def _one_line(code: int, err: str) -> str:
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if not line.startswith(("Loading weights", "Writing"))]
    assert len(lines) == 1, err
    return lines[0]


def _corrupt_synth(synth_dir, tmp_path):
    data = shutil.copytree(synth_dir, tmp_path / "synth")
    image = data / "images" / "synth-train-000003.png"
    image.write_bytes(image.read_bytes()[:30])
    return data, image


def test_a_corrupt_image_in_training_data_is_one_line(vedas_cli, train_args, synth_dir, tmp_path):
    """Item 5: train, eval and infer showed raw tracebacks for user errors."""
    data, image = _corrupt_synth(synth_dir, tmp_path)
    args = train_args(tmp_path / "run", **{"data.path": data})
    msg = _one_line(*vedas_cli.main(*args)[::2])
    assert msg.startswith("vedas train: ") and f"cannot decode image file {image}" in msg
    assert image.stem in msg  # the row: synthetic ids are the image names


def test_a_corrupt_image_in_eval_data_is_one_line(vedas_cli, ckpt, tmp_path):
    data = shutil.copytree(FIXTURES / "m3cot/raw", tmp_path / "m3cot")
    image = data / "data/images/geography-387.png"
    image.write_bytes(image.read_bytes()[:20])
    code, _, err = vedas_cli.main(
        "eval", "--checkpoint", str(ckpt), "--data", f"m3cot:{data}", "--out", str(tmp_path / "r.json")
    )
    msg = _one_line(code, err)
    assert msg.startswith("vedas eval: ") and "geography-387" in msg and str(image) in msg


def test_a_yaml_syntax_error_names_the_file_and_line(vedas_cli, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: vedas\noptim: {lr: 1e-3\n")
    msg = _one_line(*vedas_cli.main("train", "--config", str(bad))[::2])
    assert f"config file {bad}: not valid YAML: line 3, column 1" in msg


def test_a_batch_larger_than_the_dataset_is_one_line(vedas_cli, train_args, tmp_path):
    msg = _one_line(*vedas_cli.main(*train_args(tmp_path / "run", **{"optim.batch_size": 64}))[::2])
    assert "optim.batch_size: 64 per device × 1 processes = 64 exceeds the 8 training records" in msg


@pytest.mark.parametrize("command", ["eval", "infer"])
def test_a_truncated_checkpoint_file_is_named(vedas_cli, ckpt, synth_dir, tmp_path, command):
    broken = shutil.copytree(ckpt, tmp_path / "c")
    weights = broken / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    tail = ["--data", f"synthetic:{synth_dir}"] if command == "eval" else ["--question", "How many?"]
    msg = _one_line(*vedas_cli.main(command, "--checkpoint", str(broken), *tail)[::2])
    assert msg.startswith(f"vedas {command}: {weights}: truncated safetensors file ")


def test_an_unreadable_image_for_infer_is_named_before_the_model_loads(vedas_cli, ckpt, tmp_path):
    bad = tmp_path / "photo.png"
    bad.write_text("not a png")
    code, _, err = vedas_cli.main(
        "infer", "--checkpoint", str(ckpt), "--image", str(bad), "--question", "How many?"
    )
    msg = _one_line(code, err)
    assert f"--image: cannot read image file {str(bad)!r}" in msg


def test_debug_shows_the_traceback(vedas_cli, tmp_path):
    from vedas.cli import main
    from vedas.config import ConfigError

    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        main(["train", "--config", str(bad), "--debug"])
    res = vedas_cli.run_env({"VEDAS_DEBUG": "1"}, "train", "--config", str(bad))
    assert res.returncode == 1 and "Traceback" in res.stderr and "ConfigError" in res.stderr


def test_an_unexpected_error_keeps_its_traceback(monkeypatch):
    """A bug is not a user error: it is not reduced to a line."""
    from vedas.analysis import infer
    from vedas.cli import main

    def broken(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(infer, "run", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["infer", "--checkpoint", "c", "--question", "q"])
