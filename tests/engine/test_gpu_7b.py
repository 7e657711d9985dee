"""``benchmarks/gpu_7b.py``: its CPU smoke run end to end, and its refusal without CUDA."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from numerics import bound

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_7b.py"


def _load():
    spec = importlib.util.spec_from_file_location("gpu_7b", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_smoke_run_writes_every_phase_and_ratio(tmp_path, capsys):
    gpu_7b = _load()
    out = tmp_path / "g.json"
    argv = ["--tiny", "--image", "112", "--batches", "1,2", "--repeats", "1"]
    argv += ["--answer-tokens", "3", "--cot-tokens", "4", "--json", str(out)]
    assert gpu_7b.main(argv) == 0
    r = json.loads(out.read_text())
    assert r["shape"]["layers"] == 2 and r["device"] == "cpu"
    assert set(r["rows"]) == {
        f"b{b}/{e}/{m}"
        for b in (1, 2)
        for e in ("cached", "static_eager")
        for m in ("no_cot", "cot", "vedas")
    }
    for key, row in r["rows"].items():
        assert {"prefill", "latent", "decode", "total"} <= set(row["ms"]) and row["ms"]["total"] > 0
        if "/static_eager/" in key and row["same_replays_as_cached"]:
            # bf16: two engines' kernels round differently (the engines' agreement proper, margin-aware,
            # is tests/engine/test_static.py); asserted ≤ 1e-4 before, 0.0156 apart on another CPU
            depth = r["shape"]["layers"] * gpu_7b.LATENTS
            width = max(r["shape"]["hidden"], r["shape"]["intermediate"])
            assert row["latent_max_rel_diff_vs_cached"] <= bound(torch.bfloat16, depth, width)
        if "/static_eager/" in key:
            assert isinstance(row["same_tokens_as_cached"], bool)
    for engine in ("cached", "static_eager"):
        rat = r["ratios"][engine]
        for key in ("b1_decode_step_vs_roofline", "b1_latent_chunk_vs_decode_step", "b1_e2e_vedas_vs_no_cot"):
            assert rat[key] > 0
        assert rat["b2_throughput_gain_no_cot"] > 0
    assert r["decode_step_roofline_ms"] == pytest.approx(r["step_weight_bytes"] / 4.8e12 * 1e3)
    assert "paper Table 1" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_refuses_clearly_without_cuda(capsys):
    assert _load().main(["--repeats", "1"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err
