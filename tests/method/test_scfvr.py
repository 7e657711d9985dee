"""SCF-VR's cost: the crop resolution option, a target branch that builds no graph, and one
vision-tower call for every crop of every step that equals encoding the crops one by one."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator

import pytest
import torch
from scfvr_batch import vedas_batch

from vedas.config import ConfigError
from vedas.data import synth
from vedas.method import scfvr
from vedas.method.scfvr import SCFVRConfig
from vedas.train.config import load_config
from vedas.train.objective import LatentObjective


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A fully trainable tiny Qwen2-VL (the vision tower trains too) and a final-stage ``vedas`` batch."""
    out = tmp_path_factory.mktemp("synth")
    synth.write(out, train=4, test=2, seed=0, progress=False)
    return vedas_batch(out)


@contextlib.contextmanager
def recording_crops(vm) -> Iterator[dict[str, list]]:
    """What recon_loss hands the vision tower: each ``encode_crops`` call's crops, the tensors autograd
    saved for backward while it ran, and its output."""
    real = vm.backbone.encode_crops
    seen: dict[str, list] = {"calls": [], "saved": [], "out": []}

    def encode(crops):
        saved: list[torch.Size] = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
            out = real(crops)
        seen["calls"].append([tuple(c.shape) for c in crops])
        seen["saved"].append(saved)
        seen["out"].append(out)
        return out

    vm.backbone.encode_crops = encode
    try:
        yield seen
    finally:
        del vm.backbone.encode_crops


def recon(vm, batch, cfg: SCFVRConfig) -> torch.Tensor:
    torch.manual_seed(0)  # the same F_SR for every call
    return LatentObjective(vm, "vedas", vm.config, cfg)(batch)["recon"]


def test_stop_gradient_target_builds_no_graph(setup):
    vm, batch = setup
    assert all(p.requires_grad for p in vm.model.model.visual.parameters())  # the tower trains
    with recording_crops(vm) as seen:
        loss = recon(vm, batch, SCFVRConfig())
    assert loss.requires_grad  # the loss itself trains F_SR and the replay weights
    assert len(seen["calls"]) == 1  # every crop of every step and sample in one call
    target = seen["out"][0]
    assert target.grad_fn is None and not target.requires_grad
    assert seen["saved"][0] == []  # no vision-tower activation kept for backward
    # the probe sees a graph when there is one: with gradients through the target, the tower saves
    with recording_crops(vm) as seen:
        recon(vm, batch, SCFVRConfig(recon_target_grad=True))
    assert seen["out"][0].grad_fn is not None and len(seen["saved"][0]) > 10


def test_one_tower_call_equals_one_call_per_crop(setup):
    vm, batch = setup
    real = vm.backbone.encode_crops
    with torch.no_grad():
        batched = recon(vm, batch, SCFVRConfig())
        calls: list[int] = []

        def one_by_one(crops):
            calls.append(len(crops))
            return torch.cat([real([c]) for c in crops])

        vm.backbone.encode_crops = one_by_one
        try:
            single = recon(vm, batch, SCFVRConfig())
        finally:
            del vm.backbone.encode_crops
    assert calls and calls[0] >= 4  # several steps × samples
    assert torch.allclose(batched, single, atol=1e-5, rtol=0), (batched, single)


def test_crops_of_different_sizes_in_one_call_equal_separate_calls(setup):
    vm, _ = setup
    g = torch.Generator().manual_seed(0)
    crops = [torch.rand(3, h, w, generator=g) for h, w in ((56, 84), (112, 28), (28, 28), (84, 84))]
    with torch.no_grad():
        together = vm.backbone.encode_crops(crops)
        apart = torch.cat([vm.backbone.encode_crops([c]) for c in crops])
    assert together.shape == (4, vm.model.config.get_text_config().hidden_size)
    assert (together - apart).abs().max() <= 1e-5


@pytest.mark.parametrize(
    ("cfg", "side"),
    [
        (SCFVRConfig(zoom=0), 112),  # old default: the sample's own input size (4 × 4 cells here)
        (SCFVRConfig(), 112),  # default 1.25: a 3 × 3 window -> 4 × 4 cells
        (SCFVRConfig(zoom=1), 84),  # the window at the input grid's resolution
        (SCFVRConfig(zoom=2), 168),
        (SCFVRConfig(window=2, zoom=1.25), 84),  # 2.5 rounds half up -> 3 cells
        (SCFVRConfig(window=1, zoom=0.5), 28),  # at least one cell
        (SCFVRConfig(crop_size=100), 112),  # a fixed side, snapped to whole 28-px cells
    ],
)
def test_crop_resolution_follows_the_option(setup, cfg, side):
    vm, batch = setup
    with torch.no_grad(), recording_crops(vm) as seen:
        recon(vm, batch, cfg)
    sizes = {s[1:] for s in seen["calls"][0]}
    assert sizes == {(side, side)}, sizes


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (-1, r"^scfvr\.zoom: must be 0 .* or in \(0, 16.0\], got -1"),
        (17, r"^scfvr\.zoom: must be 0"),
        ("nan", r"^scfvr\.zoom: must be 0"),
        ("big", r"^scfvr\.zoom: "),
    ],
)
def test_bad_zoom_names_the_field(value, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, ["--scfvr.zoom", str(value)])


def test_zoom_is_validated_when_built_directly():
    with pytest.raises(ConfigError, match=r"^zoom: must be a number, got '2'"):
        SCFVRConfig(zoom="2")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^zoom: must be 0"):
        SCFVRConfig(zoom=float("inf"))
    assert SCFVRConfig().zoom == scfvr.ZOOM and load_config(None, ["--scfvr.zoom", "2"]).scfvr.zoom == 2


def test_real_width_bench_quick_runs_end_to_end(tmp_path, capsys):
    from vedas import cli

    out = tmp_path / "rw.json"
    argv = ["bench", "--size", "real-width", "--quick", "--widths", "qwen2_vl_2b", "--json", str(out)]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    r = json.loads(out.read_text())
    t = r["qwen2_vl_2b"]["train"]
    assert set(t["step_s"]) == {
        "cot",
        "latent",
        "routing",
        "scfvr_old",
        "scfvr",
        "full_old",
        "full",
        "full_ckpt",
    }
    assert t["over_latent"]["latent"] == 1.0 and all(v > 0 for v in t["over_cot"].values())
    # SCF-VR variants re-encode crops, the others do not
    assert all((t["step_s"][v]["crops"] > 0) == ("scfvr" in v or "full" in v) for v in t["step_s"])
    g = r["qwen2_vl_2b"]["generate"]
    assert {"prefill", "latent", "decode", "total"} <= set(g["cached_ms"]) and g["e2e_speedup"] > 0
    assert "full / latent" in printed and "old crop / new crop" in printed and "qwen2_5_vl_3b" not in r
