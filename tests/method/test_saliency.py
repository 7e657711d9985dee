"""Saliency options (``replay_layers``/``replay_heads``, ``replay_debias``, ``replay_random_share``,
``replay_diversity``): each picks what it should on a constructed attention map, the per-layer
recording keeps the default path's numbers, and the options run in the engine and in training."""

from __future__ import annotations

import pytest
import torch

from numerics import assert_close
from vedas.config import ConfigError, LatentConfig
from vedas.engine import replay
from vedas.engine.replay import Step, VisualTokens
from vedas.method.replay import SaliencyReplay, SampleReplay, debias_rowcol, policy

GRID = 6  # a 6 x 6 image grid: 36 visual tokens in raster order


def _grid_visual(b: int = 1, features: torch.Tensor | None = None) -> VisualTokens:
    n = GRID * GRID
    idx = torch.arange(n).repeat(b, 1)
    feats = (
        features if features is not None else torch.randn(b, n, 8, generator=torch.Generator().manual_seed(0))
    )
    return VisualTokens(
        seq_index=idx,
        valid=torch.ones(b, n, dtype=torch.bool),
        features=feats,
        positions=torch.zeros(3, b, n, dtype=torch.long),
        image=torch.zeros(b, n, dtype=torch.long),
        row=idx // GRID,
        col=idx % GRID,
    )


def _picks(scores, visual, keys, k):
    rep = replay.build(scores, visual, torch.zeros_like(visual.valid), k, keys=keys)
    return sorted(rep.index[0][rep.mask[0]].tolist())


PLANTED = [8, 16, 19]  # cells (1, 2), (2, 4), (3, 1): distinct rows and columns, off the trend's corner


def _trend_with_planted() -> torch.Tensor:
    """A pure positional trend (rising to the last row and column, as attention drifts to the
    image's edge) plus a bump on three planted tokens, smaller than the trend's range."""
    idx = torch.arange(GRID * GRID)
    trend = 0.02 * (idx // GRID) + 0.015 * (idx % GRID)
    trend[PLANTED] += 0.05
    return trend[None]


def test_rowcol_debiasing_picks_the_planted_tokens_where_top_k_picks_the_trend():
    scores, visual = _trend_with_planted(), _grid_visual()
    plain = _picks(scores, visual, None, 3)
    assert plain == [29, 34, 35]  # the bottom-right corner of the trend, no planted token
    cfg = LatentConfig(replay_k=3, replay_debias="rowcol")
    step = Step(visual, torch.zeros_like(visual.valid), 3)
    debiased = policy(cfg).keys(scores, visual.valid, step)
    assert _picks(scores, visual, debiased, 3) == PLANTED
    # a purely positional map leaves nothing to prefer: its residual is 0 (up to rounding)
    idx = torch.arange(GRID * GRID)
    pure = (0.02 * (idx // GRID) + 0.015 * (idx % GRID) + 0.003 * (idx % GRID) ** 2)[None]
    assert debias_rowcol(pure, visual).abs().max() < 1e-7


def test_rowcol_debiasing_fits_each_image_of_a_ragged_sample_and_ignores_padding():
    """Two images of a sample (2 x 3 and 3 x 2) plus padding: row/column effects are fit per image
    and padded slots come out 0; a pure row+column map of each image is removed."""
    rows = torch.tensor([0, 0, 0, 1, 1, 1, 0, 0, 1, 1, 2, 2, 0])
    cols = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 0, 1, 0, 1, 0])
    image = torch.tensor([0] * 6 + [1] * 6 + [0])
    valid = torch.tensor([True] * 12 + [False])
    vis = VisualTokens(
        torch.arange(13)[None],
        valid[None],
        torch.zeros(1, 13, 2),
        torch.zeros(3, 1, 13, dtype=torch.long),
        image=image[None],
        row=rows[None],
        col=cols[None],
    )
    positional = (0.3 * rows + 0.1 * cols + 0.5 * image).float()[None]
    assert debias_rowcol(positional, vis).abs().max() < 1e-6
    bump = positional.clone()
    bump[0, 4] += 1.0  # image 0, cell (1, 1)
    out = debias_rowcol(bump, vis)
    assert int(out[0, :12].argmax()) == 4 and out[0, 12] == 0


def test_layer_selection_picks_from_the_chosen_layers_map():
    """Layers 0 and 1 put their (larger) attention on tokens 0–2, layer 2 on 20–22: the all-layer
    mean picks 0–2, ``replay_layers: [2]`` picks 20–22, and a head chooses within the layers too."""
    visual = _grid_visual()
    n = GRID * GRID
    heads = torch.full((1, 3, 2, n), 0.01)
    heads[0, :2, :, [0, 1, 2]] = 0.5
    heads[0, 2, 0, [20, 21, 22]] = 0.3  # layer 2, head 0
    heads[0, 2, 1, [30, 31, 32]] = 0.4  # layer 2, head 1
    layer_rows, mean = heads.mean(2), heads.mean((1, 2))
    assert _picks(mean, visual, None, 3) == [0, 1, 2]
    free = torch.zeros_like(visual.valid)
    by_layer = policy(LatentConfig(replay_k=3, replay_layers=[2]))
    assert by_layer.record == "layers"
    assert _picks(mean, visual, by_layer.keys(mean, visual.valid, Step(visual, free, 3, layer_rows)), 3) == [
        30,
        31,
        32,
    ]
    by_head = policy(LatentConfig(replay_k=3, replay_layers=[2], replay_heads=[0]))
    assert by_head.record == "heads"
    assert _picks(mean, visual, by_head.keys(mean, visual.valid, Step(visual, free, 3, heads)), 3) == [
        20,
        21,
        22,
    ]
    with pytest.raises(ValueError, match=r"replay_layers: \[5\] out of range for a decoder of 3 layers"):
        policy(LatentConfig(replay_layers=[5])).keys(mean, visual.valid, Step(visual, free, 3, layer_rows))


def test_random_share_keeps_the_top_picks_draws_the_rest_and_ignores_the_batch():
    """K = 4 with ε = 0.5: the two most salient free tokens always, two uniform among the rest
    (over many samples every other token is drawn), the same for a sample alone or beside another."""
    visual = _grid_visual()
    scores = torch.linspace(0, 1, GRID * GRID)[None]  # tokens 35 and 34 are the top two
    cfg = LatentConfig(replay_k=4, replay_random_share=0.5)
    drawn: set[int] = set()
    for key in range(60):
        pol = policy(cfg, [f"s{key}"])
        assert isinstance(pol, SaliencyReplay) and pol.random_count(4) == 2
        picks = _picks(
            scores, visual, pol.keys(scores, visual.valid, Step(visual, torch.zeros_like(visual.valid), 4)), 4
        )
        assert len(picks) == 4 and {34, 35} <= set(picks)
        drawn |= set(picks) - {34, 35}
    assert len(drawn) >= 25, drawn  # 34 other tokens, 120 draws: uniform draws reach most of them
    # a visited top token is replaced by the next most salient, still two random
    visited = torch.zeros_like(visual.valid)
    visited[0, 35] = True
    keys = policy(cfg, ["s0"]).keys(scores, visual.valid, Step(visual, visited, 4))
    rep = replay.build(scores, visual, visited, 4, keys=keys)
    assert {33, 34} <= set(rep.index[0].tolist()) and 35 not in rep.index[0].tolist()
    # batch composition: the sample alone and beside a padded other one draws the same picks
    two = _grid_visual(2)
    two.valid[1, 20:] = False
    both = torch.cat([scores, scores], 0)
    alone = policy(cfg, ["a"]).keys(scores, visual.valid, Step(visual, torch.zeros_like(visual.valid), 4))
    pair = policy(cfg, ["a", "b"]).keys(both, two.valid, Step(two, torch.zeros_like(two.valid), 4))
    assert torch.equal(alone[0], pair[0])
    # the uniform keys are the random control's own draw
    raw = SampleReplay(cfg.replay_seed, ["a"]).keys(scores, visual.valid)
    assert torch.equal((alone - raw)[0].nonzero()[:, 0].sort().values, torch.tensor([34, 35]))


def test_diversity_never_picks_two_identical_tokens_while_distinct_ones_are_left():
    """Tokens 0–3 share one embedding and hold the highest attention: plain top-K takes all four;
    any diversity weight takes one of them and then distinct tokens; once only copies are left
    (everything else visited), it takes copies rather than nothing."""
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(1, GRID * GRID, 8, generator=g)
    feats[0, 1:4] = feats[0, 0]
    visual = _grid_visual(features=feats)
    scores = torch.full((1, GRID * GRID), 0.01)
    scores[0, :4] = torch.tensor([0.9, 0.8, 0.7, 0.6])
    free = torch.zeros_like(visual.valid)
    assert _picks(scores, visual, None, 4) == [0, 1, 2, 3]
    for weight in (0.01, 0.5, 1.0):
        pol = policy(LatentConfig(replay_k=4, replay_diversity=weight))
        picks = _picks(scores, visual, pol.keys(scores, visual.valid, Step(visual, free, 4)), 4)
        assert len(picks) == 4 and len(set(picks) & {0, 1, 2, 3}) == 1, (weight, picks)
        assert 0 in picks  # the first pick is the most salient token
    visited = torch.ones_like(visual.valid)
    visited[0, :3] = False
    keys = policy(LatentConfig(replay_k=4, replay_diversity=0.5)).keys(
        scores, visual.valid, Step(visual, visited, 4)
    )
    rep = replay.build(scores, visual, visited, 4, keys=keys)
    assert sorted(rep.index[0][rep.mask[0]].tolist()) == [0, 1, 2]
    assert keys[0, :3].tolist() == [4.0, 3.0, 2.0]  # in greedy order; the empty 4th step overwrote none


def test_saliency_fields_are_validated_naming_the_field():
    with pytest.raises(ConfigError, match="replay_layers: must be None or a non-empty list"):
        LatentConfig(replay_layers=[])
    with pytest.raises(ConfigError, match="replay_heads: must be None or a non-empty list"):
        LatentConfig(replay_heads=[0, 0])
    with pytest.raises(ConfigError, match=r"replay_random_share: must be a number in \[0, 1\]"):
        LatentConfig(replay_random_share=1.5)
    with pytest.raises(ConfigError, match=r"replay_diversity: .* needs replay_select 'attention'"):
        LatentConfig(replay_diversity=0.5, replay_select="random")
    with pytest.raises(ConfigError, match="replay_debias: must be one of"):
        LatentConfig(replay_debias="rows")  # type: ignore[arg-type]
    assert policy(LatentConfig()) is None and LatentConfig().saliency_options == {}


# --- recording and the engine ----------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_vm():
    import vedas

    model, processor = vedas.tiny_model("qwen2_vl", hidden=32, layers=3, heads=4, kv_heads=2, seed=0)
    return vedas.VedasModel(model, processor, LatentConfig(latents=3, replay_k=3, max_new_tokens=2))


def _prompt(vm, make_image):
    return vm.prepare(
        [make_image(112, 112, 0), make_image(56, 84, 1)], ["How many?", "Which?"], mode="latent"
    )


def test_per_layer_recording_keeps_the_mean_and_its_rows_average_to_it(tiny_vm, make_image):
    """``keep`` leaves the recorder's mean bit-identical; the kept rows average (over layers, and
    over heads) to that mean within the float32 bound of a re-ordered sum."""
    from vedas.engine.attention import LastQueryRecorder
    from vedas.engine.inputs import embed_prompt

    vm = tiny_vm
    batch = _prompt(vm, make_image)
    embeds, _, positions = embed_prompt(vm.backbone, batch)
    means, kept = [], {}
    for keep in (None, "layers", "heads"):
        with torch.no_grad(), LastQueryRecorder(keep) as rec:
            vm.backbone.decoder()(
                inputs_embeds=embeds, attention_mask=batch.attention_mask, position_ids=positions
            )
        means.append(rec.mean())
        if keep is not None:
            kept[keep] = rec.rows()
    assert torch.equal(means[0], means[1]) and torch.equal(means[0], means[2])
    layers, heads = kept["layers"], kept["heads"]
    assert layers.shape == (2, 3, means[0].shape[1]) and heads.shape == (2, 3, 4, means[0].shape[1])
    assert torch.equal(heads.mean(2), layers)  # the same head mean, per layer
    assert_close(layers.mean(1), means[0], dtype=torch.float32, depth=1, width=3)
    with pytest.raises(RuntimeError, match="keeps only the mean"):
        rec = LastQueryRecorder()
        rec.rows()


def test_defaults_run_the_paper_path_bit_identically_with_rows_kept(tiny_vm, make_image):
    """The default config has no policy, and a loop whose runner also keeps per-head rows runs the
    same passes bit for bit (recording more changes nothing the loop computes)."""
    from vedas.engine.loop import LatentLoop
    from vedas.engine.runners import make_runner

    vm = tiny_vm
    assert policy(vm.config) is None and vm._sample_policy(_prompt(vm, make_image), vm.config, None) is None
    batch = _prompt(vm, make_image)
    runs = []
    for keep in (None, "heads"):
        runner = make_runner("cached", vm.backbone)
        loop = LatentLoop(vm.backbone, vm.config, runner)
        runner.keep = keep  # after the loop set it from its (absent) policy
        with torch.no_grad():
            h = loop.prefill(batch)
            rows, attn = runner.rows, loop.attention  # the prefill's (the last latent pass records nothing)
            run = loop.latent_steps(h, 3)
        runs.append((run, attn, rows))
    (a, attn_a, rows_a), (b, attn_b, rows_b) = runs
    assert rows_a is None and rows_b is not None and rows_b.dim() == 4
    assert (
        torch.equal(a.latents, b.latents) and torch.equal(a.hidden, b.hidden) and torch.equal(attn_a, attn_b)
    )
    for ra, rb in zip(a.replays, b.replays):
        assert torch.equal(ra.index, rb.index) and torch.equal(ra.weights, rb.weights)


@pytest.mark.parametrize(
    "options",
    [
        {"replay_layers": [1]},
        {"replay_layers": [2], "replay_heads": [1, 3]},
        {"replay_debias": "rowcol", "replay_random_share": 0.34, "replay_diversity": 0.5},
    ],
)
def test_saliency_options_in_the_engine_match_the_recompute_oracle(tiny_vm, make_image, options):
    """Batched generate with an option: the KV-cached engine picks what the uncached oracle picks
    (per-layer rows from the recorder vs from ``output_attentions``), a sample picks the same alone
    as in its batch, and the option changes the picks (it is not the default path)."""
    import vedas

    vm = tiny_vm
    images = [make_image(112, 112, 0), make_image(56, 84, 1)]
    questions = ["How many?", "Which?"]

    def picks(opts, engine="cached", n=2):
        cfg = LatentConfig(latents=3, replay_k=3, max_new_tokens=2, **opts)
        m = vedas.VedasModel(vm.model, vm.processor, cfg)
        d = m.generate(
            images[:n],
            questions[:n],
            mode="latent",
            return_details=True,
            engine=engine,
            sample_ids=["a", "b"][:n],
        )
        return d.replay_indices

    cached = picks(options)
    assert cached == picks(options, "recompute")
    assert picks(options, n=1)[0] == cached[0]
    assert cached != picks({})


def test_static_engine_supports_layers_and_refuses_heads(tiny_vm, make_image):
    import vedas
    from vedas.engine.static import compile_settings

    vm = tiny_vm
    images, questions = [make_image(112, 112, 0)], ["How many?"]
    out = {}
    with compile_settings(None):  # read when the runner is made
        for name, opts in (("layers", {"replay_layers": [1]}), ("heads", {"replay_heads": [0]})):
            m = vedas.VedasModel(
                vm.model, vm.processor, LatentConfig(latents=3, replay_k=3, max_new_tokens=2, **opts)
            )
            if name == "heads":
                with pytest.raises(ValueError, match="keep='heads': the static engine's compiled recorder"):
                    m.generate(images, questions, mode="latent", engine="static")
            else:  # uncompiled: what the option changes is the recorder's rows, not the compiled graph
                for engine in ("static", "cached"):
                    out[engine] = m.generate(
                        images, questions, mode="latent", return_details=True, engine=engine
                    ).replay_indices
    assert out["static"] == out["cached"]


def test_training_with_saliency_options_and_checkpointed_layers(synth_data):
    """The training objective builds the same policy (``policy(cfg)``): a layer/head choice with
    ε-random picks trains (finite loss, decoder gradients), and checkpointed decoder layers (whose
    backward recompute records per-head rows again) give the same loss and gradients."""
    import vedas
    from vedas.data import load as load_data
    from vedas.method.curriculum import CurriculumConfig, layout, record_steps
    from vedas.method.scfvr import SCFVRConfig
    from vedas.train import grad_checkpoint as checkpointing
    from vedas.train.objective import LatentObjective, collate

    records = list(load_data("synthetic", path=str(synth_data(4, 2)), split="train", limit=3))
    model, processor = vedas.tiny_model(
        "qwen2_vl", hidden=32, layers=2, vision_depth=1, max_pixels=12544, seed=0
    )
    cfg = LatentConfig(
        latents=2, replay_k=3, replay_layers=[1], replay_heads=[0, 2], replay_random_share=0.34
    )
    vm = vedas.VedasModel(model, processor, cfg)
    lays = [
        layout("latent", record_steps(r.steps, r.rationale, 2), r.answer, 2, 2, CurriculumConfig())
        for r in records
    ]
    batch = collate(vm, records, lays, "latent")
    obj = LatentObjective(vm, "latent", cfg, SCFVRConfig()).train()
    params = [p for p in vm.model.parameters() if p.requires_grad]

    def run():
        for p in params:
            p.grad = None
        torch.manual_seed(0)
        obj._replay_policy = policy(cfg)  # the same ε draw in both runs
        out = obj(batch)
        out["loss"].backward()
        return out["ce"].item(), [None if p.grad is None else p.grad.clone() for p in params]

    ce, grads = run()
    assert torch.isfinite(torch.tensor(ce)) and sum(g is not None for g in grads) > 5
    checkpointing.enable(vm.backbone)
    try:
        ce_ckpt, grads_ckpt = run()
    finally:
        checkpointing.disable(vm.backbone)
    assert ce_ckpt == pytest.approx(ce, abs=1e-6)
    for a, b in zip(grads, grads_ckpt):
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)
