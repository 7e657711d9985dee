"""Routing Depth Scaling: identity at init, write-back rows, padding, engines, gradients, checkpoints.

Every test deep-copies the session's tiny model before hooking routers into it.
"""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
import yaml

import vedas
from vedas.config import ConfigError, LatentConfig, from_dict, to_dict
from vedas.engine.loop import LatentLoop
from vedas.engine.runners import make_runner
from vedas.method import routing
from vedas.method.routing import RoutingConfig, RoutingDepthScaling, enable_routing, select_tokens
from vedas.model import VedasModel

LATENT = LatentConfig(latents=3, replay_k=6, max_new_tokens=6)


@pytest.fixture
def fresh(tiny):
    """A VedasModel over a private copy of the tiny model (routers may be hooked into it)."""
    model, processor = tiny
    return VedasModel(copy.deepcopy(model), processor, LATENT)


def _gen(vm, batch, **kw):
    images, questions, choices = batch
    return vm.generate(images, questions, choices, return_details=True, **kw)


def _randomise(rds: RoutingDepthScaling, seed: int = 0, e_scale: float = 1.0) -> None:
    """Non-zero step encodings and a router whose scores spread over (0, 1) without saturating."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, e in rds.step_encodings.items():
            e.copy_(torch.randn(e.shape, generator=g) * e_scale)
            router = rds.routers[name]
            router.weight.copy_(torch.randn(router.weight.shape, generator=g) / router.weight.shape[1] ** 0.5)
            router.bias.zero_()


# --- config ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"layers": "middle"}, r"^layers: must be 'all', 'odd', 'even'"),
        ({"layers": [0, -1]}, r"^layers: a list must hold layer indices ≥ 0"),
        ({"layers": [1, 1]}, r"^layers: repeats an index"),
        ({"alpha": 0}, r"^alpha: a token count must be ≥ 1"),
        ({"alpha": 1.5}, r"^alpha: a fraction must be in \(0, 1\]"),
        ({"alpha": True}, r"^alpha: must be an int ≥ 1 or a float"),
        ({"alpha_start": 64, "alpha_end": 0.25}, r"^alpha_end: must be the same kind as alpha_start"),
        ({"depth": 0}, r"^depth: must be an int ≥ 1"),
        ({"positions": "shuffle"}, r"^positions: must be one of \['keep', 'rearrange'\]"),
        ({"alpha_schedule": "linear"}, r"^alpha_schedule: must be one of"),
    ],
)
def test_bad_config_names_the_field(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        RoutingConfig(**kwargs)


def test_config_round_trips_through_a_dict_and_checks_layers_against_the_model():
    cfg = RoutingConfig(layers=[3, 1], alpha=0.25, depth=2, positions="rearrange")
    assert from_dict(RoutingConfig, to_dict(cfg)) == cfg
    assert from_dict(RoutingConfig, {"alpha": 32}).alpha == 32
    assert RoutingConfig(layers="odd").layer_indices(5) == [1, 3]
    assert RoutingConfig(layers="even").layer_indices(5) == [0, 2, 4]
    assert cfg.layer_indices(4) == [1, 3]
    with pytest.raises(ConfigError, match=r"^layers: indices \[3\] do not exist in a decoder of 2 layers"):
        cfg.layer_indices(2)
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict(RoutingConfig, {"alhpa": 3})


def test_cosine_schedule_decays_from_alpha_start_to_alpha_end():
    alphas = RoutingConfig(alpha_schedule="cosine", alpha_start=64, alpha_end=16).alphas(28)
    assert alphas[0] == 64 and alphas[-1] == 16
    assert all(a >= b for a, b in itertools.pairwise(alphas)) and all(isinstance(a, int) for a in alphas)
    # the midpoint of a half cosine is the mean of the endpoints
    assert RoutingConfig(alpha_schedule="cosine", alpha_start=64, alpha_end=16).alphas(5)[2] == 40
    fr = RoutingConfig(alpha_schedule="cosine", alpha_start=0.5, alpha_end=0.1).alphas(3)
    assert fr[0] == pytest.approx(0.5) and fr[1] == pytest.approx(0.3) and fr[2] == pytest.approx(0.1)
    assert RoutingConfig(alpha=7).alphas(3) == [7, 7, 7]


# --- selection ------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [3, 0.4, 50])
def test_selection_is_top_alpha_per_segment_and_never_padding(alpha):
    g = torch.Generator().manual_seed(1)
    b, n = 4, 20
    scores = torch.rand(b, n, generator=g)
    seg = torch.full((b, n), 0)
    seg[0, 10:] = 1  # two segments in one row (the recompute oracle's layout)
    seg[1, :7] = -1  # left padding
    seg[2, :2] = -1
    seg[2, 2:9] = 2
    seg[3, :] = -1  # nothing routable
    scores = torch.where(seg < 0, 10.0, scores)  # padding scores highest, yet must not be chosen
    chosen = select_tokens(scores, seg, alpha)
    assert not (chosen & (seg < 0)).any()
    for i in range(b):
        for gid in seg[i][seg[i] >= 0].unique().tolist():
            pos = (seg[i] == gid).nonzero().squeeze(1)
            k = min(alpha, len(pos)) if isinstance(alpha, int) else math.ceil(alpha * len(pos))
            ref = pos[torch.topk(scores[i, pos], k).indices]
            assert set(chosen[i].nonzero().squeeze(1).tolist()) & set(pos.tolist()) == set(ref.tolist())


# --- one layer: what the hook writes where ----------------------------------------------------


def _causal_additive(n: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.full((n, n), torch.finfo(dtype).min, dtype=dtype).triu(1)[None, None]


@pytest.mark.parametrize(
    "cfg",
    [
        RoutingConfig(alpha=3),
        RoutingConfig(alpha=3, depth=2, positions="rearrange"),
        RoutingConfig(alpha=1000),
    ],
    ids=["alpha3", "depth2-rearrange", "alpha>segment"],
)
def test_write_back_lands_on_the_chosen_rows(fresh, cfg):
    vm = fresh
    rds = routing.install(vm, cfg)
    _randomise(rds, seed=2)
    # a layer below the last: the last one refines only what is read (test_last_layer_refines_only_what_is_read)
    layer = vm.backbone.decoder_layers()[0]
    router, e = rds.routers["0"], rds.step_encodings["0"].detach()
    rotary = vm.backbone.decoder().rotary_emb
    g = torch.Generator().manual_seed(3)
    b, n, d = 2, 12, router.weight.shape[1]
    h = torch.randn(b, n, d, generator=g)
    pos = torch.arange(n)[None, None].expand(3, b, n) + torch.randint(0, 5, (3, b, 1), generator=g)
    pos_emb = rotary(h, pos)
    seg = torch.zeros(b, n, dtype=torch.long)
    seg[0, 6:] = 1  # row 0: two segments, routed separately
    seg[1, :3] = -1  # row 1: three padding slots
    with torch.no_grad():
        first = lambda o: o[0] if isinstance(o, tuple) else o  # noqa: E731  (Chameleon's layer returns a tuple)
        h0 = first(layer.forward(h, attention_mask=None, position_embeddings=pos_emb))
        with routing.segments(seg):
            out = first(layer(h, attention_mask=None, position_embeddings=pos_emb))
        s = torch.sigmoid(h0 @ router.weight[0] + router.bias[0])
        expected = h0.clone()
        for i in range(b):
            for gid in seg[i][seg[i] >= 0].unique().tolist():
                rows = (seg[i] == gid).nonzero().squeeze(1)
                top = rows[torch.topk(s[i, rows], min(cfg.alpha, len(rows))).indices].sort().values
                k = len(top)
                if cfg.positions == "keep":
                    sub_emb = (pos_emb[0][i, top][None], pos_emb[1][i, top][None])
                else:
                    sub_emb = rotary(h, torch.arange(k)[None, None].expand(3, 1, k))
                x = h0[i, top][None]
                for step in range(cfg.depth):
                    fx = first(
                        layer.forward(
                            x, attention_mask=_causal_additive(k, x.dtype), position_embeddings=sub_emb
                        )
                    )
                    x = x + e[step] * s[i, top][None, :, None] * (fx - x)
                expected[i, top] = x[0]
    changed = (out != h0).any(-1)
    chosen = select_tokens(s, seg, cfg.alpha)
    assert torch.equal(changed, chosen), "rows other than the top-α changed (or a chosen row did not)"
    assert not changed[1, :3].any(), "padding was refined"
    if cfg.alpha >= n:
        assert torch.equal(changed, seg >= 0), "α larger than the segment must refine every routable token"
    assert (out - expected).abs().max() <= 1e-5
    rds.remove()
    with torch.no_grad(), routing.segments(seg):
        assert torch.equal(first(layer(h, attention_mask=None, position_embeddings=pos_emb)), h0), (
            "remove() unhooks"
        )


# --- the whole engine -------------------------------------------------------------------------


def test_identity_at_initialisation(fresh, batch3):
    base = _gen(fresh, batch3)
    rds = enable_routing(fresh, RoutingConfig(alpha=4, depth=2))
    assert all(not e.detach().any() for e in rds.step_encodings.values())
    for engine in ("cached", "recompute"):
        with_rds = _gen(fresh, batch3, engine=engine)
        if engine == "cached":
            assert torch.equal(with_rds.latents, base.latents)
        else:
            assert (with_rds.latents - base.latents).abs().max() <= 1e-4
        assert with_rds.replay_indices == base.replay_indices
        assert with_rds.token_ids == base.token_ids


@pytest.mark.parametrize(
    "cfg",
    [
        RoutingConfig(alpha=5),
        RoutingConfig(alpha=0.3, layers="even", depth=2, positions="rearrange"),
        RoutingConfig(alpha_schedule="cosine", alpha_start=12, alpha_end=3),
    ],
    ids=["alpha5", "fraction-even-depth2-rearrange", "cosine"],
)
def test_cached_engine_with_routing_equals_the_recompute_oracle(fresh, batch3, cfg):
    base = _gen(fresh, batch3)
    _randomise(enable_routing(fresh, cfg), seed=4)
    fast = _gen(fresh, batch3)
    slow = _gen(fresh, batch3, engine="recompute")
    assert (fast.latents - base.latents).abs().max() > 1e-2, "routing should change the latents"
    assert (fast.latents - slow.latents).abs().max() <= 1e-4
    assert fast.replay_indices == slow.replay_indices
    assert fast.token_ids == slow.token_ids


def test_left_padded_batch_equals_each_sample_alone(fresh, batch3):
    _randomise(enable_routing(fresh, RoutingConfig(alpha=6)), seed=5)
    together = _gen(fresh, batch3)
    images, questions, choices = batch3
    for i in range(3):
        alone = fresh.generate([images[i]], [questions[i]], [choices[i]], return_details=True)
        assert alone.replay_indices[0] == together.replay_indices[i]
        assert alone.token_ids[0] == together.token_ids[i]
        assert (alone.latents[0] - together.latents[i]).abs().max() <= 1e-4


def test_only_implicit_passes_route_and_the_switches_turn_it_off(fresh, batch3):
    base = _gen(fresh, batch3)
    base_latent_mode = _gen(fresh, batch3, mode="latent")
    rds = enable_routing(fresh, RoutingConfig(alpha=4))
    _randomise(rds, seed=6)
    calls: list[int] = []
    refine = rds.refine
    rds.refine = lambda index, *a: calls.append(index) or refine(index, *a)  # type: ignore[method-assign]
    routed = _gen(fresh, batch3)
    n_layers = len(fresh.backbone.decoder_layers())
    # the prefill and T_r latent chunks, in every layer; never <|latent_end|> or decoded tokens
    assert len(calls) == n_layers * (1 + LATENT.latents)
    assert (routed.latents - base.latents).abs().max() > 1e-2
    calls.clear()
    fresh.use_routing = False
    off = _gen(fresh, batch3)
    fresh.use_routing = True
    rds.enabled = False
    disabled = _gen(fresh, batch3)
    rds.enabled = True
    latent_mode = _gen(fresh, batch3, mode="latent")
    assert not calls
    for d, ref in [(off, base), (disabled, base), (latent_mode, base_latent_mode)]:
        assert torch.equal(d.latents, ref.latents) and d.token_ids == ref.token_ids


def test_installing_twice_on_the_same_layers_fails(fresh):
    rds = routing.install(fresh, RoutingConfig(layers=[1]))
    with pytest.raises(RuntimeError, match="decoder layer 1 already has routing installed"):
        routing.install(fresh, RoutingConfig(layers="all"))
    with pytest.raises(RuntimeError, match="already installed"):
        rds.install(fresh)
    rds.remove()
    routing.install(fresh, RoutingConfig(layers="all")).remove()


def _reads(selections: list[tuple[int, torch.Tensor]], last_layer: int, passes: int) -> dict[str, bool]:
    """Per routed layer: did its router select a row whose refinement reaches the loss?

    ``selections`` are (layer, chosen (B, L)) in call order over ``passes`` routed passes. Below
    the last decoder layer every refined row does (the next layer reads it, its cache holds it).
    The last layer's output is read only at a pass's last position, and only where that output
    is fed on: the prefill's and every latent chunk's but the final one's.
    """
    per_pass = len(selections) // passes
    reads: dict[str, bool] = {}
    for i, (layer, chosen) in enumerate(selections):
        if layer == last_layer:
            hit = i // per_pass < passes - 1 and bool(chosen[:, -1].any())
        else:
            hit = bool(chosen.any())
        reads[str(layer)] = reads.get(str(layer), False) or hit
    return reads


def test_training_step_reaches_routers_and_step_encodings(fresh, batch3, monkeypatch):
    """A step encoding gets a gradient exactly when its layer selected a row that reaches the loss
    (:func:`_reads`, from the recorded selections); its router too, once e has moved from zero."""
    vm = fresh
    rds = enable_routing(vm, RoutingConfig(alpha=4))
    _randomise(rds, seed=6, e_scale=0.0)  # seeded routers, e = 0 as at initialisation
    selections: list[tuple[int, torch.Tensor]] = []
    select, refine = routing.select_tokens, rds.refine

    def spy_select(scores, seg, alpha):
        chosen = select(scores, seg, alpha)
        selections[-1] = (selections[-1][0], chosen)
        return chosen

    monkeypatch.setattr(routing, "select_tokens", spy_select)
    rds.refine = lambda index, *a: selections.append((index, None)) or refine(index, *a)  # type: ignore[method-assign]
    images, questions, _ = batch3
    batch = vm.prepare(images[:2], questions[:2])
    target = vm.tokenizer(" Therefore, the answer is B.", return_tensors="pt").input_ids.expand(2, -1)
    end = torch.full((2, 1), vm.token_ids.end)
    steps = 2

    def backward() -> dict[str, bool]:
        selections.clear()
        loop = LatentLoop(vm.backbone, vm.config, make_runner("cached", vm.backbone))
        with routing.allowed(True):
            h = loop.prefill(batch, record=True)
            h = loop.latent_steps(h, steps, 4).hidden
            h = loop.feed_tokens(torch.cat([end, target[:, :-1]], 1))
        logits = vm.backbone.lm_head()(h).float()
        torch.nn.functional.cross_entropy(logits, target[:, -1]).backward()
        return _reads(selections, rds.last_layer, passes=1 + steps)

    def grad(p: torch.Tensor) -> float:
        return 0.0 if p.grad is None else float(p.grad.abs().sum())

    opt = torch.optim.SGD(rds.parameters(), lr=0.5)
    reads = backward()
    assert set(reads) == set(rds.routers)
    for name in rds.routers:
        # with e = 0 the scores only enter multiplied by e: the routers' first gradient is exactly zero
        assert grad(rds.routers[name].weight) == 0
        assert (grad(rds.step_encodings[name]) > 0) == reads[name], f"step encoding {name}"
    first = reads
    opt.step()
    opt.zero_grad()
    moved = {name: bool(e.detach().any()) for name, e in rds.step_encodings.items()}
    reads = backward()
    for name in rds.routers:
        assert (grad(rds.step_encodings[name]) > 0) == reads[name], f"step encoding {name}"
        assert (grad(rds.routers[name].weight) > 0) == (reads[name] and moved[name]), f"router {name}"
    # the checks above hold for any routers; these are seeded so that every layer reaches the loss
    assert all(first.values()) and all(reads.values()), (
        f"a routed layer selected no row that is read: {first}, then {reads}"
    )


def test_last_layer_refines_only_what_is_read(fresh, batch3):
    """Trimming the last layer to the last position's segment changes no latent or token, and drops
    that layer's refinement pass whenever its router passes over the last position."""
    rds = enable_routing(fresh, RoutingConfig(alpha=3))
    _randomise(rds, seed=9)
    chosen = torch.tensor([[True, False, True, True], [True, True, False, False], [False, True, True, True]])
    seg = torch.tensor([[0, 0, 1, 1], [-1, 0, 0, 0], [0, 0, 0, 0]])
    expected = torch.tensor(
        [[False, False, True, True], [False, False, False, False], [False, True, True, True]]
    )
    assert torch.equal(routing.read_rows(chosen, seg), expected)
    # the refinement passes call the layer's forward directly; its attention module still counts them
    calls = [0]
    attn = fresh.backbone.decoder_layers()[rds.last_layer].self_attn
    handle = attn.register_forward_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
    runs, passes = {}, {}
    for trim in (True, False):
        rds.trim_last_layer = trim
        calls[0] = 0
        runs[trim] = [_gen(fresh, batch3, engine=engine) for engine in ("cached", "recompute")]
        passes[trim] = calls[0]
    handle.remove()
    assert passes[True] < passes[False], passes
    for trimmed, full in zip(runs[True], runs[False]):
        assert trimmed.token_ids == full.token_ids and trimmed.replay_indices == full.replay_indices
        assert (trimmed.latents - full.latents).abs().max() <= 1e-5


def test_routers_save_and_load_with_the_checkpoint(fresh, batch3, tmp_path):
    cfg = RoutingConfig(alpha=5, layers=[1], depth=2)
    rds = enable_routing(fresh, cfg)
    _randomise(rds, seed=7)
    before = _gen(fresh, batch3)
    path = fresh.save(tmp_path / "ckpt")
    assert (path / "routing.safetensors").is_file()
    assert yaml.safe_load((path / "config.yaml").read_text())["extras"]["routing"] == to_dict(cfg)
    again = vedas.load(path)
    loaded = routing.routing_module(again)
    assert loaded is not None and loaded.installed and loaded.cfg == cfg
    for k, v in rds.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    after = _gen(again, batch3)
    assert after.token_ids == before.token_ids and after.replay_indices == before.replay_indices
    assert (after.latents - before.latents).abs().max() <= 1e-6
    # the base weights stay in HF's layout: plain from_pretrained, no missing or extra keys
    model_cls = type(fresh.model)
    _, info = model_cls.from_pretrained(path / "model", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
