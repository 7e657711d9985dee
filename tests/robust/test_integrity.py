"""Integrity at load: rotted weights, a header of the wrong shape, a changed file, and the modes a
checkpoint is written with. Each broken checkpoint is one error naming the file, before any model
is allocated (the ``!!!!`` answers of NaN weights are what this prevents)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import struct

import numpy as np
import pytest
import yaml

import vedas
from vedas.checkpoint import read_header
from vedas.errors import CheckpointError


@pytest.fixture
def broken(ckpt, tmp_path):
    return shutil.copytree(ckpt, tmp_path / "c")


def _load_fails(path, match: str) -> str:
    with pytest.raises(CheckpointError, match=match) as e:
        vedas.load(path)
    assert not any("transformers" in str(f.path) for f in e.traceback), "must fail before from_pretrained"
    assert "\n" not in str(e.value)
    return str(e.value)


def _first_float_tensor(path):
    n, header = read_header(path)
    name = next(k for k, t in header.items() if k != "__metadata__" and t["dtype"] in ("F32", "BF16", "F16"))
    return name, 8 + n + header[name]["data_offsets"][0], header[name]["dtype"]


def _poke(path, offset: int, raw: bytes) -> None:
    data = bytearray(path.read_bytes())
    data[offset : offset + len(raw)] = raw
    path.write_bytes(bytes(data))


def test_the_save_records_a_sha256_per_weights_file(ckpt):
    sums = yaml.safe_load((ckpt / "config.yaml").read_text())["sha256"]
    assert "model/model.safetensors" in sums and all(len(v) == 64 for v in sums.values())


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_nan_or_inf_weights_are_named(broken, value):
    weights = broken / "model" / "model.safetensors"
    name, offset, dtype = _first_float_tensor(weights)
    bad = np.array([float(value)], dtype=np.float32 if dtype == "F32" else np.float16)
    raw = bad.tobytes() if dtype != "BF16" else np.array([float(value)], np.float32).tobytes()[2:]
    _poke(weights, offset, raw)
    # without the recorded sums too: an old checkpoint still gets the finiteness check
    meta = yaml.safe_load((broken / "config.yaml").read_text())
    del meta["sha256"]
    (broken / "config.yaml").write_text(yaml.safe_dump(meta))
    _load_fails(broken, rf"{weights}: tensor '{name}' holds NaN or infinite values")


def test_a_flipped_bit_fails_the_recorded_sha256(broken):
    weights = broken / "model" / "model.safetensors"
    _, offset, _ = _first_float_tensor(weights)
    data = bytearray(weights.read_bytes())
    data[offset] ^= 0x01  # a finite value stays finite: only the sum can see it
    weights.write_bytes(bytes(data))
    _load_fails(broken, rf"{weights}: sha256 differs from the one recorded at save in config.yaml")


def test_verification_can_be_skipped(broken, monkeypatch):
    weights = broken / "model" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[_first_float_tensor(weights)[1]] ^= 0x01
    weights.write_bytes(bytes(data))
    monkeypatch.setenv("VEDAS_VERIFY_WEIGHTS", "0")
    assert vedas.load(broken) is not None


@pytest.mark.parametrize(
    "header",
    [
        [1, 2],
        {"w": {"dtype": "F32", "shape": [1]}},
        {"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}},
        {"w": 3},
    ],
    ids=["list", "no-offsets", "reversed-offsets", "not-a-tensor"],
)
def test_a_header_of_the_wrong_shape_is_one_line(broken, header):
    weights = broken / "model" / "model.safetensors"
    text = json.dumps(header).encode()
    weights.write_bytes(struct.pack("<Q", len(text)) + text + b"\0" * 16)
    _load_fails(broken, rf"{weights}: corrupt safetensors header")


def test_the_cli_names_the_rotted_file_in_one_line(broken, vedas_cli):
    weights = broken / "model" / "model.safetensors"
    name, offset, _ = _first_float_tensor(weights)
    _poke(weights, offset, b"\xff\xff\xff\xff")  # NaN in F32, BF16 and F16 alike
    code, _, err = vedas_cli.main("infer", "--checkpoint", str(broken), "--question", "hi", "--device", "cpu")
    assert code == 2
    assert err.strip() == (
        f"vedas infer: {weights}: tensor '{name}' holds NaN or infinite values (corrupt weights); "
        "restore the file from a copy"
    )


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_a_saved_checkpoint_honours_the_umask(tmp_path, umask):
    """mkdtemp's 0700 reached the saved checkpoint: no one else (a server as another user) could read it."""
    model, processor = vedas.tiny_model("qwen2_vl", hidden=32, layers=1, seed=0)
    old = os.umask(umask)
    try:
        out = vedas.VedasModel(model, processor).save(tmp_path / "c")
    finally:
        os.umask(old)
    for path in [out, *out.rglob("*")]:
        want = (0o777 if path.is_dir() else 0o666) & ~umask
        assert stat.S_IMODE(path.stat().st_mode) == want, path
