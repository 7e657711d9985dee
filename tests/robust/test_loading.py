"""Loading checkpoints: every kind ``vedas train`` writes loads, a local path never goes to the hub,
and a missing or corrupt file is one error naming it, raised before any model is allocated."""

from __future__ import annotations

import json
import os
import socket
import time

import pytest
import torch

import vedas
from vedas.errors import CheckpointError


@pytest.fixture
def broken(ckpt, tmp_path):
    """A private copy of ``ckpt`` to break."""
    import shutil

    return shutil.copytree(ckpt, tmp_path / "c")


def _raises_before_allocation(path, match: str) -> CheckpointError:
    with pytest.raises(CheckpointError, match=match) as e:
        vedas.load(path)
    frames = [str(f.path) for f in e.traceback]
    assert not any("transformers" in f for f in frames), "the error must come before from_pretrained"
    assert "\n" not in str(e.value)
    return e.value


def test_a_checkpoint_without_its_hf_config_is_named_not_built(broken):
    """Item 2: without model/config.json, load built the default (72B-sized) Qwen2-VL."""
    (broken / "model" / "config.json").unlink()
    _raises_before_allocation(broken, rf"{broken / 'model' / 'config.json'} is missing")


@pytest.mark.parametrize("cut", [4, 100, -10])
def test_a_truncated_safetensors_file_is_named(broken, cut):
    weights = broken / "model" / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:cut])
    _raises_before_allocation(broken, rf"{weights}: truncated safetensors file")


def test_a_garbled_header_and_a_missing_extra_are_named(broken):
    weights = broken / "model" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8:16] = b"\xff" * 8
    weights.write_bytes(bytes(data))
    _raises_before_allocation(broken, rf"{weights}: corrupt safetensors file")


def test_pickled_weights_only_are_refused(broken):
    (broken / "model" / "model.safetensors").rename(broken / "model" / "pytorch_model.bin")
    _raises_before_allocation(broken, r"no model.safetensors .*pytorch_model.bin.*nothing is unpickled")


def test_bad_config_yaml_is_named(broken):
    (broken / "config.yaml").write_text("arch: [qwen2_vl\n")
    _raises_before_allocation(broken, rf"{broken / 'config.yaml'}: not valid YAML")


def test_a_wrong_local_path_is_never_sent_to_the_hub(tmp_path, monkeypatch):
    """Item 4: ``--checkpoint runs/t2`` gave a 42-line 'Repo id must be in the form…' traceback."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    for path in ("runs/t2", "./t2", str(tmp_path / "t2"), "a/b/c"):
        _raises_before_allocation(path, rf"{path}: no such checkpoint directory")
    (tmp_path / "runs" / "empty").mkdir()
    _raises_before_allocation("runs/empty", "is not a checkpoint: it has no config.yaml")


def test_an_offline_hub_id_fails_once_with_a_hint(vedas_cli, tmp_path):
    """Item 4: an offline hub id retried the network 5 times before a traceback."""
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    t0 = time.time()
    res = vedas_cli.run_env(env, "-c", "import vedas; vedas.load('Qwen/Qwen2-VL-2B-Instruct')", python=True)
    assert res.returncode != 0
    assert "HF_HUB_OFFLINE is set" in res.stderr and "pass a local checkpoint path" in res.stderr
    # with the hub unreachable (a closed local port), one attempt, no retries
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": f"http://127.0.0.1:{port}"}
    res = vedas_cli.run_env(env, "-c", "import vedas; vedas.load('Qwen/Qwen2-VL-2B-Instruct')", python=True)
    assert res.returncode != 0
    assert "cannot be reached" in res.stderr and "HF_HUB_OFFLINE=1" in res.stderr
    assert "Retry" not in res.stderr
    assert time.time() - t0 < 120


def test_a_run_directory_and_every_step_checkpoint_load(vedas_cli, train_args, tmp_path, synth_dir):
    """Item 4: intermediate checkpoints/step-N could not be loaded or evaluated at all. A LoRA run with
    routing: step-N loads from its own description (tests/robust/test_step_checkpoints.py), and the
    last one equals final/ exactly."""
    out = tmp_path / "run"
    extra = {"run.save_every": 2, "lora.enabled": "true", "lora.r": 4, "routing": "{alpha: 4}"}
    code, _, err = vedas_cli.main(*train_args(out, **extra))
    assert code == 0, err
    final = vedas.load(out)  # the run directory means its final/
    assert final.config.latents == 2 and "routing" in final.extras
    last = vedas.load(out / "checkpoints" / "step-4")
    a, b = final.model.state_dict(), last.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ra, rb = final.extras.modules()["routing"].state_dict(), last.extras.modules()["routing"].state_dict()
    assert ra.keys() == rb.keys() and all(torch.equal(ra[k], rb[k]) for k in ra)
    early = vedas.load(out / "checkpoints" / "step-2", latents=1)
    assert early.config.latents == 1
    assert any(not torch.equal(a[k], early.model.state_dict()[k]) for k in a)
    # a run still without final/ names its newest checkpoint
    import shutil

    shutil.rmtree(out / "final")
    with pytest.raises(
        CheckpointError, match=rf"training run without final/.*{out / 'checkpoints' / 'step-4'}"
    ):
        vedas.load(out)
    # and vedas eval takes a step checkpoint
    rep = tmp_path / "report.json"
    code, _, err = vedas_cli.main(
        "eval",
        "--checkpoint",
        str(out / "checkpoints" / "step-2"),
        "--data",
        f"synthetic:{synth_dir}",
        "--limit",
        "2",
        "--batch-size",
        "2",
        "--max-new-tokens",
        "4",
        "--out",
        str(rep),
    )
    assert code == 0, err
    assert json.loads(rep.read_text())["n"] == 2


def test_an_hf_directory_without_a_tokenizer_is_named(tmp_path):
    model, processor = vedas.tiny_model("qwen2_vl", hidden=64, layers=2, seed=0)
    model.save_pretrained(tmp_path, safe_serialization=True)
    _raises_before_allocation(tmp_path, rf"{tmp_path / 'tokenizer_config.json'} is missing")
    processor.save_pretrained(tmp_path)
    assert vedas.load(tmp_path).config.latents == 4
    assert os.path.isfile(tmp_path / "config.json")
