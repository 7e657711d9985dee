"""Curriculum training: window search, crop boxes, labels, the oracle, SCF-VR gradients, overfitting,
exact resume after SIGKILL, and data-parallel training under torchrun (gloo)."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import torchrun
import vedas
from vedas.config import ConfigError, LatentConfig
from vedas.data import load as load_data
from vedas.method.curriculum import CurriculumConfig, layout, record_steps
from vedas.method.scfvr import SCFVRConfig, best_windows, window_to_pixels
from vedas.train.config import TrainConfig, load_config
from vedas.train.objective import LatentObjective, collate
from vedas.train.recipe import batch_plan

ROOT = Path(__file__).resolve().parents[2]
TINY = "{hidden: 64, layers: 2, heads: 4, kv_heads: 2, vision_depth: 1, vision_hidden: 32, max_pixels: 12544}"


@pytest.fixture(scope="module")
def synth_dir(synth_data) -> Path:
    return synth_data(16, 4)


@pytest.fixture(scope="module")
def records(synth_dir):
    return list(load_data("synthetic", path=str(synth_dir), split="train", limit=8))


# --- SCF-VR window search ------------------------------------------------------------------


def _brute(rows, cols, gh, gw, w):
    wh, ww = min(w, gh), min(w, gw)
    cells = set(zip(rows, cols))
    best, arg = -1, None
    for r in range(gh - wh + 1):  # row-major: the first maximum wins
        for c in range(gw - ww + 1):
            n = sum((r <= i < r + wh) and (c <= j < c + ww) for i, j in cells)
            if n > best:
                best, arg = n, (r, c, wh, ww)
    return arg


@pytest.mark.parametrize("shape", [(6, 6), (4, 9), (9, 3), (2, 2), (1, 7)])
@pytest.mark.parametrize("window", [1, 3, 5])
def test_window_search_equals_brute_force(shape, window):
    g = torch.Generator().manual_seed(hash((shape, window)) % 2**31)
    gh, gw = shape
    n, k = 24, min(6, shape[0] * shape[1])
    flat = torch.stack([torch.randperm(gh * gw, generator=g)[:k] for _ in range(n)]) % (gh * gw)
    valid = torch.rand(n, k, generator=g) > 0.25
    valid[:, 0] = True
    rows, cols = flat // gw, flat % gw
    grids = torch.tensor([[gh, gw]] * n)
    got = best_windows(rows, cols, valid, grids, window)
    for i in range(n):
        rr, cc = rows[i][valid[i]].tolist(), cols[i][valid[i]].tolist()
        assert tuple(got[i].tolist()) == _brute(rr, cc, gh, gw, window)


def test_mixed_grids_in_one_call():
    rows = torch.tensor([[0, 1, 1], [3, 3, 0]])
    cols = torch.tensor([[4, 4, 5], [0, 1, 0]])
    valid = torch.ones(2, 3, dtype=torch.bool)
    got = best_windows(rows, cols, valid, torch.tensor([[3, 6], [4, 2]]), 2)
    assert got.tolist() == [[0, 4, 2, 2], [2, 0, 2, 2]]


def test_known_selection_gives_the_expected_pixel_box():
    # a 6 x 10 merged grid of a 300 x 500 px image: each cell is 50 x 50 px
    rows, cols = torch.tensor([[2, 2, 3, 3, 0]]), torch.tensor([[6, 7, 6, 7, 0]])
    win = best_windows(rows, cols, torch.ones(1, 5, dtype=torch.bool), torch.tensor([[6, 10]]), 3)[0]
    assert win.tolist() == [1, 5, 3, 3]  # first window (row-major) holding all four clustered tokens
    assert window_to_pixels(win, (6, 10), (300, 500)) == (50, 250, 200, 400)
    # non-integer cell sizes widen to whole pixels and stay inside the image
    assert window_to_pixels(torch.tensor([2, 7, 3, 3]), (6, 10), (299, 501)) == (
        99,
        350,
        250,
        501,
    )  # 99.67 floors, 249.17 ceils


# --- the objective -------------------------------------------------------------------------


def _vm(arch="qwen2_vl", latents=3, k=6):
    model, processor = vedas.tiny_model(arch, hidden=64, layers=2, vision_depth=1, max_pixels=12544, seed=0)
    return vedas.VedasModel(model, processor, LatentConfig(latents=latents, replay_k=k))


def _batch(vm, records, method, stage):
    cc = CurriculumConfig()
    lays = [layout(method, record_steps(r.steps, r.rationale, 3), r.answer, stage, 3, cc) for r in records]
    return collate(vm, records, lays, method), lays


@pytest.mark.parametrize(("method", "stage"), [("no_cot", 0), ("cot", 0), ("latent", 1), ("vedas", 3)])
def test_labels_are_ignored_exactly_over_prompt_and_latent_positions(records, method, stage):
    vm = _vm()
    batch, lays = _batch(vm, records[:4], method, stage)
    with torch.no_grad():
        out = LatentObjective(vm, method, vm.config, SCFVRConfig())(batch)
    labels = out["labels"]
    eos = vm.tokenizer.convert_tokens_to_ids("<|im_end|>")
    prompt_len = batch.prompt.input_ids.shape[1]
    for i, lay in enumerate(lays):
        target = [*vm.tokenizer.encode(lay.target, add_special_tokens=False), eos]
        row = labels[i]
        supervised = row[row != -100].tolist()
        assert supervised == target
        first = int((row != -100).nonzero()[0])
        if method in ("latent", "vedas"):
            # nothing in the prompt or in any latent/replay chunk is supervised
            assert first >= prompt_len + lay.latents
        else:
            assert first == prompt_len - 1  # the prompt's last position predicts the first token
    if method in ("latent", "vedas"):
        assert batch.latents.tolist() == [lay.latents for lay in lays]


def test_random_replay_resamples_every_pass_and_random_fixed_repeats_per_sample(records):
    """``random`` training draws from one generator for the run (fresh picks on every pass of the
    same batch: the per-epoch resampling); ``random_fixed`` gives a sample the same picks every pass
    (seeded by its id), so the same batch twice gives the same loss."""
    losses = {}
    for select in ("random", "random_fixed"):
        vm = _vm()
        vm.config = LatentConfig(latents=3, replay_k=4, replay_select=select)  # type: ignore[arg-type]
        batch, _ = _batch(vm, records[:4], "latent", 3)
        obj = LatentObjective(vm, "latent", vm.config, SCFVRConfig())
        with torch.no_grad():
            losses[select] = [obj(batch)["ce"].item() for _ in range(3)]
    assert len(set(losses["random"])) == 3, losses
    assert len(set(losses["random_fixed"])) == 1, losses


@pytest.mark.parametrize("arch", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_training_passes_equal_the_recompute_oracle(records, arch):
    """Loss and gradients of the cached training passes equal the uncached, eager oracle's."""
    vm = _vm(arch)
    batch, _ = _batch(vm, records[:3], "vedas", 2)  # mixed latent counts: 2 or fewer steps
    results = []
    for engine in ("cached", "recompute"):
        obj = LatentObjective(vm, "vedas", vm.config, SCFVRConfig(), engine=engine)
        torch.manual_seed(0)
        obj.sr = LatentObjective(vm, "vedas", vm.config, SCFVRConfig()).sr  # same F_SR init for both
        vm.model.zero_grad()
        out = obj(batch)
        out["loss"].backward()
        grads = {n: p.grad.clone() for n, p in vm.model.named_parameters() if p.grad is not None}
        results.append((out["ce"], out["recon"], grads))
    (ce_a, rec_a, g_a), (ce_b, rec_b, g_b) = results
    assert abs(ce_a.item() - ce_b.item()) < 1e-5 and abs(rec_a.item() - rec_b.item()) < 1e-5
    assert g_a.keys() == g_b.keys() and len(g_a) > 10
    for n in g_a:
        assert torch.allclose(g_a[n], g_b[n], atol=1e-5, rtol=1e-4), n


@pytest.mark.parametrize("arch", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "chameleon"])
def test_decoder_gradient_checkpointing_keeps_loss_and_gradients(records, arch):
    """Checkpointed decoder layers (KV cache in the loop, recorder row, routing's extra passes)
    give the loss and gradients of the plain run, and really do recompute in backward."""
    from vedas.method.routing import RoutingConfig, enable_routing
    from vedas.train import grad_checkpoint as checkpointing

    vm = _vm(arch)
    rds = enable_routing(vm, RoutingConfig(alpha=4))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-zero step encodings: the routed passes change the output
        for e in rds.step_encodings.values():
            e.copy_(torch.randn(e.shape, generator=g))
    batch, _ = _batch(vm, records[:3], "vedas", 2)  # mixed latent counts
    obj = LatentObjective(vm, "vedas", vm.config, SCFVRConfig()).train()
    attn_calls = [0]
    vm.backbone.decoder_layers()[0].self_attn.register_forward_hook(
        lambda *a: attn_calls.__setitem__(0, attn_calls[0] + 1)
    )
    params = [*vm.model.parameters(), *obj.sr.parameters(), *rds.parameters()]

    def run() -> tuple[dict[str, torch.Tensor], list[torch.Tensor | None], int, int]:
        for p in params:
            p.grad = None
        attn_calls[0] = 0
        out = obj(batch)
        forward_calls = attn_calls[0]
        out["loss"].backward()
        return out, [None if p.grad is None else p.grad.clone() for p in params], forward_calls, attn_calls[0]

    plain, g_plain, fwd_plain, all_plain = run()
    assert checkpointing.enable(vm.backbone) == len(vm.backbone.decoder_layers())
    ckpt, g_ckpt, fwd_ckpt, all_ckpt = run()
    checkpointing.disable(vm.backbone)
    assert all_plain == fwd_plain and fwd_ckpt == fwd_plain
    assert all_ckpt > fwd_ckpt, "backward should have re-run the checkpointed layers"
    assert ckpt["ce"].item() == pytest.approx(plain["ce"].item(), abs=1e-6)
    assert ckpt["recon"].item() == pytest.approx(plain["recon"].item(), abs=1e-6)
    assert sum(g is not None for g in g_plain) > 10
    for a, b in zip(g_plain, g_ckpt):
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)


def test_recon_target_is_stop_gradient_and_embeddings_are_not_pulled(records):
    """Stop-gradient target: the recon loss's gradient into the vision tower equals that of the same
    loss against a constant copy of the target (the crop target adds nothing) and flows only through
    the attention that weights the replay — never through the replayed embeddings (b^t detaches them).
    F_SR and the decoder train; ``recon_target_grad`` opens a path through the target."""
    vm = _vm()
    batch, _ = _batch(vm, records[:2], "vedas", 3)
    visual = [p for n, p in vm.model.named_parameters() if "visual" in n]
    sr0 = LatentObjective(vm, "vedas", vm.config, SCFVRConfig()).sr
    real = vm.backbone.encode_crops

    def grads(cfg, encode=None):
        obj = LatentObjective(vm, "vedas", vm.config, cfg)
        obj.sr = copy.deepcopy(sr0)
        if encode is not None:
            vm.backbone.encode_crops = encode
        try:
            recon = obj(batch)["recon"]
        finally:
            vm.backbone.encode_crops = real
        return torch.autograd.grad(recon, [*visual, *obj.sr.parameters()], allow_unused=True)

    with torch.no_grad():
        captured = []
        probe = LatentObjective(vm, "vedas", vm.config, SCFVRConfig())
        probe.sr = copy.deepcopy(sr0)
        vm.backbone.encode_crops = lambda crops: captured.append(real(crops)) or captured[-1]
        try:
            probe(batch)
        finally:
            vm.backbone.encode_crops = real
    const = captured[0].detach()
    n = len(visual)
    stop = grads(SCFVRConfig(recon_target_grad=False))
    frozen = grads(SCFVRConfig(recon_target_grad=False), encode=lambda crops: const)
    live = grads(SCFVRConfig(recon_target_grad=True))
    for a, b in zip(stop[:n], frozen[:n]):
        assert (a is None) == (b is None) and (a is None or torch.allclose(a, b, atol=1e-7))
    assert all(g is not None and g.abs().max() > 0 for g in stop[n:]), "F_SR must train"
    differs = [
        a is not None and b is not None and not torch.allclose(a, b, atol=1e-7) for a, b in zip(stop, live)
    ]
    assert any(differs[:n]), "recon_target_grad=True should add a gradient path into the vision tower"
    # the replayed embeddings themselves get no recon gradient: with the replay weights' attention
    # path cut (weights detached), nothing reaches the tower at all
    from vedas.engine import replay as replay_mod

    original = replay_mod.build

    def detached_weights(*a, **k):
        r = original(*a, **k)
        r.weights = r.weights.detach()
        return r

    replay_mod.build = detached_weights
    try:
        cut = grads(SCFVRConfig(recon_target_grad=False))
    finally:
        replay_mod.build = original
    assert all(g is None or g.abs().max() == 0 for g in cut[:n])


# --- the recipe ----------------------------------------------------------------------------


def _overrides(synth_dir, out, **extra):
    base = {
        "data.path": str(synth_dir),
        "data.limit": 8,
        "model.tiny": TINY,
        "optim.batch_size": 4,
        "optim.epochs": 4,
        "optim.lr": 3e-3,
        "optim.warmup_ratio": 0.0,
        "run.output_dir": str(out),
        "run.progress": "false",
        "run.log_every": 1,
        "latent.latents": 2,
        "latent.replay_k": 4,
        **extra,
    }
    args = []
    for k, v in base.items():
        args += [f"--{k}", str(v)]
    return args


@pytest.mark.parametrize("method", ["no_cot", "cot", "latent", "vedas"])
def test_every_method_and_stage_runs_and_the_loss_falls(synth_dir, tmp_path, method):
    from vedas.train.recipe import main

    cfg = load_config(
        str(ROOT / "configs/synthetic_tiny.yaml"),
        ["--method", method, *_overrides(synth_dir, tmp_path, **{"optim.epochs": 12})],
    )
    main(cfg)
    import json

    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["ce"] for r in rows if "ce" in r]
    stages = {r["stage"] for r in rows if "event" in r}
    assert len(losses) == 24
    if method in ("latent", "vedas"):
        assert stages == {0, 1, 2}  # T_r = 2: stages 0..2, one epoch each, then the last stage holds
        assert any("recon" in r for r in rows) == (method == "vedas")
    # overfitting 8 records: the last epoch's CE is well below the first's
    assert sum(losses[-2:]) / 2 < 0.6 * sum(losses[:2]) / 2, losses
    again = vedas.load(tmp_path / "final")
    assert again.config.latents == 2


def test_bad_batch_arithmetic_fails_at_start():
    cfg = TrainConfig()
    cfg.optim.batch_size = 8
    with pytest.raises(ConfigError, match=r"optim.batch_size: 8 per device × 2 processes = 16 exceeds"):
        batch_plan(10, cfg, world=2)
    cfg.optim.grad_accum = 4
    with pytest.raises(ConfigError, match=r"optim.grad_accum"):
        batch_plan(20, cfg, world=1)


RESUMABLE = {"optim.epochs": 6, "run.save_every": 2}
"""The resume test's run: checkpoints every 2 of 12 steps."""


def _train_cmd(synth_dir, out, overrides: dict, *extra: str, ranks: int = 0) -> list[str]:
    """``vedas train`` on ``synthetic_tiny.yaml`` (under torchrun with ``ranks`` processes, if any) as a
    subprocess command."""
    return [
        *(torchrun.launch(ranks) if ranks else [sys.executable]),
        "-m",
        "vedas.cli",
        "train",
        "--config",
        str(ROOT / "configs/synthetic_tiny.yaml"),
        *_overrides(synth_dir, out, **overrides),
        *extra,
    ]


def _final_weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "final" / "model" / "model.safetensors"))


@pytest.mark.slow
def test_resume_after_sigkill_equals_an_uninterrupted_run(synth_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    full, cut = tmp_path / "full", tmp_path / "cut"
    subprocess.run(_train_cmd(synth_dir, full, RESUMABLE), check=True, env=env, capture_output=True)
    proc = subprocess.Popen(
        _train_cmd(synth_dir, cut, RESUMABLE), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while not (cut / "checkpoints" / "step-4").is_dir():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # between checkpoints: step-6 is not written yet
    proc.wait()
    assert not (cut / "final").exists()
    assert not (cut / "checkpoints" / "step-12").exists()
    subprocess.run(
        _train_cmd(synth_dir, cut, RESUMABLE, "--run.resume", "true"),
        check=True,
        env=env,
        capture_output=True,
    )
    a, b = _final_weights(full), _final_weights(cut)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _run_distributed(cmd: list[str]) -> subprocess.CompletedProcess:
    """A fresh training run on torchrun ranks; a retry after the teardown abort (:mod:`torchrun`)
    replaces what the aborted run left in its output directory."""
    return torchrun.run(cmd, rerun=["--run.overwrite", "true"])


@pytest.mark.slow
def test_torchrun_two_processes_stay_in_sync(synth_dir, tmp_path):
    # routers live outside the HF model: they must be synced too
    overrides = {"optim.batch_size": 2, "routing": "{layers: all, alpha: 4}"}
    res = _run_distributed(_train_cmd(synth_dir, tmp_path, overrides, ranks=2))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "processes: 2, parameters identical across ranks: True" in res.stdout
    assert (tmp_path / "final" / "config.yaml").is_file()
    assert (tmp_path / "final" / "routing.safetensors").is_file()


def test_a_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(synth_dir, tmp_path):
    """An absurd learning rate blows the weights up after the first step: the next loss is not finite.
    Training stops before that step, names the last good checkpoint, and writes nothing after it."""
    cmd = _train_cmd(synth_dir, tmp_path, {"optim.lr": 1e30, "optim.clip": 0, "run.save_every": 1})
    res = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    assert res.returncode == 1, res.stderr[-2000:]
    msg = res.stderr.strip().splitlines()[-1]
    assert "non-finite loss" in msg and "optimizer step 2" in msg
    assert f"last good checkpoint is {tmp_path / 'checkpoints' / 'step-1'}" in msg
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-1"]
    assert not (tmp_path / "final").exists()
    assert "Traceback" not in res.stderr


@pytest.mark.slow
def test_deepspeed_zero2_on_two_processes_matches_ddp(synth_dir, tmp_path):
    """The shipped ZeRO-2 config through accelerate (DeepSpeed's CPU accelerator over gloo) trains
    and ends with the weights plain DDP reaches on the same data: ZeRO-2 shards optimizer state and
    gradients, it does not change the maths."""
    pytest.importorskip("deepspeed")

    def run(out: Path, *extra: str) -> subprocess.CompletedProcess:
        overrides = {"optim.batch_size": 2, "optim.epochs": 2}
        res = _run_distributed(_train_cmd(synth_dir, out, overrides, *extra, ranks=2))
        assert res.returncode == 0, res.stderr[-3000:]
        return res

    zero = run(tmp_path / "zero2", "--run.deepspeed", str(ROOT / "configs/deepspeed/zero2.json"))
    assert "distributed: DEEPSPEED, 2 processes" in zero.stdout
    assert "parameters identical across ranks: True" in zero.stdout
    ddp = run(tmp_path / "ddp")
    assert "distributed: MULTI_CPU, 2 processes" in ddp.stdout
    a, b = _final_weights(tmp_path / "zero2"), _final_weights(tmp_path / "ddp")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k


@pytest.mark.parametrize(
    ("vision", "lora"), [("train", False), ("merger", False), ("frozen", False), ("merger", True)]
)
def test_model_vision_decides_what_of_the_vision_tower_trains(records, vision, lora):
    from vedas.train.recipe import setup_model

    cfg = load_config(
        str(ROOT / "configs/synthetic_tiny.yaml"),
        [
            "--model.vision",
            vision,
            "--lora.enabled",
            str(lora).lower(),
            "--model.tiny",
            TINY,
            "--lora.r",
            "4",
        ],
    )
    vm = setup_model(cfg, records)
    trains = {n for n, p in vm.model.model.visual.named_parameters() if p.requires_grad}
    merger = {n for n, _ in vm.model.model.visual.named_parameters() if n.startswith("merger.")}
    tower = {n for n, _ in vm.model.model.visual.named_parameters()} - merger
    expected = set() if lora else {"train": tower | merger, "merger": merger, "frozen": set()}[vision]
    assert trains == expected
    assert any(p.requires_grad for n, p in vm.model.named_parameters() if "language_model" in n)
    with pytest.raises(ConfigError, match="vision"):
        load_config(None, ["--model.vision", "half"])
