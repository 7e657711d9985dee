"""SCF-VR's forms (``scfvr.form``): which parameters each one's L_recon reaches; the paper's form computed
exactly as its equation says; F_SR clipped apart from the model (``scfvr.clip``); and the logged
gradient ratio ‖λ·∇L_recon‖ / ‖∇L_CE‖ on the decoder (``run.grad_ratio``)."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from scfvr_batch import vedas_batch

from vedas.config import ConfigError
from vedas.engine import replay as replay_mod
from vedas.method import scfvr
from vedas.method.scfvr import SCFVRConfig
from vedas.train import recipe
from vedas.train.config import load_config
from vedas.train.objective import LatentObjective

ROOT = Path(__file__).resolve().parents[2]
TINY = "{hidden: 64, layers: 2, heads: 4, kv_heads: 2, vision_depth: 1, vision_hidden: 32, max_pixels: 12544}"


@pytest.fixture(scope="module")
def setup(synth_data):
    """A fully trainable tiny Qwen2-VL and a final-stage ``vedas`` batch of two records."""
    return vedas_batch(synth_data(16, 4))


def groups(vm, obj) -> dict[str, list[torch.nn.Parameter]]:
    named = dict(vm.model.named_parameters())
    return {
        "layers": [*vm.backbone.decoder_layers().parameters()],
        "embed": [named["model.language_model.embed_tokens.weight"]],
        "lm_head": [named["lm_head.weight"]],
        "merger": [p for n, p in named.items() if ".visual.merger." in n],
        "tower": [p for n, p in named.items() if ".visual." in n and ".merger." not in n],
        "F_SR": [*obj.sr.parameters()],
    }


@contextlib.contextmanager
def replay_weights_detached() -> Iterator[None]:
    """Cut the one path of the paper's form into the model: the replay weights softmax(a_I)."""
    original = replay_mod.build

    def build(*a, **k):
        r = original(*a, **k)
        r.weights = r.weights.detach()
        return r

    replay_mod.build = build
    try:
        yield
    finally:
        replay_mod.build = original


def recon_grads(vm, batch, cfg: SCFVRConfig) -> dict[str, list[float]]:
    """Per group, the norm of ∂L_recon/∂p for each parameter p (0 where the loss does not reach it)."""
    torch.manual_seed(0)  # the same F_SR for every form
    obj = LatentObjective(vm, "vedas", vm.config, cfg)
    g = groups(vm, obj)
    flat = [p for ps in g.values() for p in ps]
    grads = iter(torch.autograd.grad(obj(batch)["recon"], flat, allow_unused=True))
    return {k: [0.0 if (x := next(grads)) is None else float(x.norm()) for _ in ps] for k, ps in g.items()}


def test_paper_form_reaches_only_f_sr_and_the_replay_weights(setup):
    """The paper's form: F_SR trains; the model gets recon gradient only through the replay weights
    (cut them and nothing but F_SR gets any), and the LM head never does."""
    vm, batch = setup
    live = recon_grads(vm, batch, SCFVRConfig())
    assert all(n > 0 for n in live["F_SR"])
    assert sum(live["layers"]) > 0  # the weights' path: a^t depends on the decoder's attention
    assert sum(live["lm_head"]) == 0
    with replay_weights_detached():
        cut = recon_grads(vm, batch, SCFVRConfig())
    assert all(n > 0 for n in cut["F_SR"])
    assert all(n == 0 for k in ("layers", "embed", "lm_head", "merger", "tower") for n in cut[k]), cut


def test_hidden_form_trains_every_decoder_layer_without_the_replay_weights(setup):
    """``hidden``: F_SR reads the decoder's state after [B^t, z^t], so L_recon reaches every decoder layer
    (and, through what the decoder reads, the merger) even with the replay weights cut; not the LM head."""
    vm, batch = setup
    with replay_weights_detached():
        g = recon_grads(vm, batch, SCFVRConfig(form="hidden"))
    per_layer = [[p for p in layer.parameters()] for layer in vm.backbone.decoder_layers()]
    norms = iter(g["layers"])
    for layer in per_layer:
        assert sum(next(norms) for _ in layer) > 0
    assert all(n > 0 for n in g["F_SR"]) and sum(g["merger"]) > 0
    assert sum(g["lm_head"]) == 0


def test_reference_form_trains_the_merger_and_tower_never_the_decoder(setup):
    """``reference``: the unweighted mean of the replayed embeddings and a target with gradient, so L_recon
    reaches the merger and the tower (both ends) and F_SR, and no decoder parameter at all."""
    vm, batch = setup
    g = recon_grads(vm, batch, SCFVRConfig(form="reference"))
    assert all(n > 0 for n in g["merger"]) and sum(g["tower"]) > 0 and all(n > 0 for n in g["F_SR"])
    assert all(n == 0 for k in ("layers", "embed", "lm_head") for n in g[k]), g


@contextlib.contextmanager
def captured_recon(vm) -> Iterator[dict[str, object]]:
    """While the objective runs: what it hands ``recon_loss`` (``args``), the loss it gets back
    (``loss``) and the crop target the vision tower encoded (``target``)."""
    import vedas.train.objective as objective_mod

    seen: dict[str, object] = {}
    real_loss, real_encode = scfvr.recon_loss, vm.backbone.encode_crops

    def capture(*a, **k):
        seen["args"] = a
        seen["loss"] = real_loss(*a, **k)
        return seen["loss"]

    def encode(crops):
        seen["target"] = real_encode(crops)
        return seen["target"]

    objective_mod.scfvr.recon_loss, vm.backbone.encode_crops = capture, encode
    try:
        yield seen
    finally:
        objective_mod.scfvr.recon_loss = real_loss
        del vm.backbone.encode_crops


def test_reference_form_is_the_unweighted_mean_with_a_live_target(setup):
    """The reference form's input is the plain mean of the picked embeddings (not the paper's weighted
    sum), and its target builds a graph even with ``recon_target_grad`` off."""
    vm, batch = setup
    with captured_recon(vm) as seen:
        torch.manual_seed(0)
        LatentObjective(vm, "vedas", vm.config, SCFVRConfig(form="reference"))(batch)
    assert seen["target"].requires_grad  # type: ignore[union-attr]
    replays, visual = seen["args"][2], seen["args"][3]  # type: ignore[index]
    rep = next(r for r in replays if r is not None)
    b = scfvr.pooled(rep, visual, "reference")
    for i in range(rep.mask.shape[0]):
        picked = visual.features[i, rep.index[i][rep.mask[i]]]
        assert torch.allclose(b[i], picked.mean(0), atol=1e-6)


def test_default_form_is_the_papers_equation_bit_for_bit(setup):
    """The default config computes L_recon exactly as before the forms existed: b^t = Σ_k w_k·V_k / K_real
    from detached embeddings, F_SR on it, MSE to the crop target; same loss and same gradients, bitwise."""
    vm, batch = setup
    assert SCFVRConfig() == SCFVRConfig(form="paper", clip="joint")
    with captured_recon(vm) as seen:
        torch.manual_seed(0)
        obj = LatentObjective(vm, "vedas", vm.config, SCFVRConfig())
        obj(batch)
    replays, visual = seen["args"][2], seen["args"][3]  # type: ignore[index]
    rows = []
    for rep in replays:
        if rep is None:
            continue
        feats = visual.features.detach().gather(
            1, rep.index[..., None].expand(-1, -1, visual.features.shape[-1])
        )
        b = (feats * rep.weights[..., None].to(feats.dtype)).sum(1) / rep.token_mask.sum(1).clamp(min=1)[
            :, None
        ]
        rows += [b[i] for i in range(b.shape[0]) if bool(rep.mask[i].any())]
    expected = ((obj.sr(torch.stack(rows).float()) - seen["target"].float()) ** 2).mean()  # type: ignore[union-attr]
    loss = seen["loss"]
    assert torch.equal(loss, expected)  # type: ignore[arg-type]
    params = [*vm.model.parameters(), *obj.sr.parameters()]
    ga = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)  # type: ignore[arg-type]
    gb = torch.autograd.grad(expected, params, allow_unused=True)
    assert sum(a is not None for a in ga) > 10
    for a, b in zip(ga, gb):
        assert (a is None) == (b is None) and (a is None or torch.equal(a, b))


@pytest.mark.parametrize(("field", "value"), [("form", "hiden"), ("clip", "apart")])
def test_bad_form_or_clip_names_the_field(field, value):
    with pytest.raises(ConfigError, match=f"^{field}: must be one of"):
        SCFVRConfig(**{field: value})


def test_separate_clip_and_grad_ratio_refuse_deepspeed():
    with pytest.raises(ConfigError, match=r"^scfvr\.clip: "):
        load_config(None, ["--scfvr.clip", "separate", "--run.deepspeed", "configs/deepspeed/zero2.json"])
    with pytest.raises(ConfigError, match=r"^run\.grad_ratio: "):
        load_config(None, ["--run.grad_ratio", "true", "--run.deepspeed", "configs/deepspeed/zero2.json"])


# --- the recipe: clipping and the logged ratio ------------------------------------------------------


def _run(synth_dir, tmp_path, **extra) -> recipe.Run:
    args = {
        "data.path": str(synth_dir),
        "data.limit": 8,
        "model.tiny": TINY,
        "optim.batch_size": 4,
        "optim.warmup_ratio": 0.0,
        "run.output_dir": str(tmp_path),
        "run.progress": "false",
        "latent.latents": 2,
        "latent.replay_k": 4,
        **extra,
    }
    cfg = load_config(
        str(ROOT / "configs/synthetic_tiny.yaml"), [x for k, v in args.items() for x in (f"--{k}", str(v))]
    )
    recipe.seed_everything(cfg.optim.seed)
    acc = recipe.setup_accelerator(cfg)
    run = recipe.setup(cfg, acc, recipe.setup_data(cfg, print), total_steps=4)
    recipe.prepare(run)
    return run


def _batch(run: recipe.Run):
    order = recipe.epoch_order(len(run.data.records), run.cfg.optim.seed, 0)
    recs = recipe.micro_batch(run, order, 0)
    return recipe.collate_records(run.vm, run.cfg, recs, run.cfg.latent.latents, run.data.hard), order


def test_separate_clip_scales_the_model_by_its_own_norm_only(synth_data, tmp_path):
    run = _run(synth_data(16, 4), tmp_path)
    batch, _ = _batch(run)
    run.objective(batch)["loss"].backward()
    own = {id(p) for p in run.objective.sr.parameters()}
    model = [p for p in run.params if id(p) not in own]
    sr = [p for p in run.params if id(p) in own]
    for p in sr:  # an F_SR gradient far larger than the model's, as once CE has converged
        p.grad.mul_(1e3)
    grads = [p.grad.clone() for p in run.params]

    def norm(ps, gs) -> float:
        pos = {id(p): i for i, p in enumerate(run.params)}
        return float(torch.stack([gs[pos[id(p)]].norm() for p in ps]).norm())

    def clipped(mode: str, sr_scale: float = 1.0) -> list[torch.Tensor]:
        for p, g in zip(run.params, grads):
            p.grad = g.clone() * (sr_scale if id(p) in own else 1.0)
        run.cfg.scfvr.clip = mode  # type: ignore[assignment]
        norms = recipe.clip_gradients(run, 1.0)
        assert set(norms) == (
            {"gradient norm"} if mode == "joint" else {"gradient norm", "F_SR gradient norm"}
        )
        return [p.grad.clone() for p in run.params]

    m_norm, s_norm, all_norm = norm(model, grads), norm(sr, grads), norm(run.params, grads)
    assert 1.0 < m_norm < s_norm  # both groups are clipped here, F_SR the more
    joint = clipped("joint")
    separate = clipped("separate")
    separate_big = clipped("separate", sr_scale=10.0)
    for p, g, j, s, s2 in zip(run.params, grads, joint, separate, separate_big):
        assert torch.allclose(j, g / all_norm, rtol=1e-4, atol=1e-9)
        scale = s_norm if id(p) in own else m_norm
        assert torch.allclose(s, g / scale, rtol=1e-4, atol=1e-9)
        if id(p) not in own:  # the model's clip does not see F_SR's gradient
            assert torch.equal(s, s2)


def test_logged_grad_ratio_equals_an_independent_computation_and_leaves_the_step_unchanged(
    synth_data, tmp_path
):
    """``run.grad_ratio``: the logged ratio equals ‖∇λL_recon‖ / ‖∇L_CE‖ over the decoder from two plain
    backward passes, and the weights after the step equal those of a step without the measurement."""
    synth_dir = synth_data(16, 4)
    runs = {
        on: _run(synth_dir, tmp_path / str(on), **{"run.grad_ratio": on, "run.log_every": 1})
        for on in (True, False)
    }
    run = runs[True]
    batch, order = _batch(run)
    decoder = [p for p in run.vm.backbone.decoder().parameters() if p.requires_grad]
    snapshot = copy.deepcopy(run.objective.state_dict())
    run.objective.train()
    norms = []
    for term in ("ce", "recon"):
        run.objective.zero_grad()
        out = run.objective(batch)
        (out["ce"] if term == "ce" else run.cfg.scfvr.weight * out["recon"]).backward()
        norms.append(float(torch.stack([p.grad.norm() for p in decoder if p.grad is not None]).norm()))
    run.objective.zero_grad()
    run.objective.load_state_dict(snapshot)
    from vedas.train import state as train_state

    stage = run.cfg.latent.latents
    outs = {on: recipe.train_step(r, train_state.TrainState(), 0, stage, order) for on, r in runs.items()}
    assert outs[True]["grad_ce"].item() == pytest.approx(norms[0], rel=1e-5)
    assert outs[True]["grad_recon"].item() == pytest.approx(norms[1], rel=1e-5)
    assert outs[True]["grad_ratio"].item() == pytest.approx(norms[1] / norms[0], rel=1e-5)
    assert "grad_ratio" not in outs[False]
    metrics = recipe.step_metrics(run, train_state.TrainState(step=1), 0, stage, outs[True], 1.0)
    assert metrics["grad_ratio"] == outs[True]["grad_ratio"].item()
    for (n, a), b in zip(runs[True].objective.named_parameters(), runs[False].objective.parameters()):
        assert torch.equal(a, b), n


def test_cross_entropy_alone_is_unchanged_by_the_form(setup):
    """The forms change only L_recon: CE (and so what a ``latent`` run trains) is the same in each."""
    vm, batch = setup
    ce = []
    for form in ("paper", "hidden", "reference"):
        torch.manual_seed(0)
        with torch.no_grad():
            ce.append(LatentObjective(vm, "vedas", vm.config, SCFVRConfig(form=form))(batch)["ce"])  # type: ignore[arg-type]
    assert torch.equal(ce[0], ce[1]) and torch.equal(ce[0], ce[2])


def test_a_checkpoint_saved_before_the_forms_existed_still_resumes(tmp_path):
    """A config written before ``scfvr.form``/``scfvr.clip`` existed trained the paper's form, jointly
    clipped: resuming it with the defaults is allowed, resuming it with another form is refused by name."""
    from vedas.config import to_dict
    from vedas.train import output_dir
    from vedas.train.config import TrainConfig

    saved = to_dict(TrainConfig())
    del saved["scfvr"]["form"], saved["scfvr"]["clip"]
    defaults = to_dict(TrainConfig())
    assert output_dir.differences(saved, to_dict(TrainConfig()), defaults) == []
    hidden = to_dict(load_config(None, ["--scfvr.form", "hidden"]))
    assert output_dir.differences(saved, hidden, defaults) == ["scfvr.form: saved 'paper', now 'hidden'"]
    # without the defaults (the old rule) the missing field itself was a difference
    assert output_dir.differences(saved, to_dict(TrainConfig())) == [
        "scfvr.clip: saved None, now 'joint'",
        "scfvr.form: saved None, now 'paper'",
    ]
