"""Visual replay selection against a per-sample brute force, on random inputs."""

from __future__ import annotations

import pytest
import torch

from vedas.engine import replay
from vedas.engine.replay import VisualTokens
from vedas.errors import InputError


def _visual(b: int, n: int, d: int, counts: list[int], seed: int) -> VisualTokens:
    g = torch.Generator().manual_seed(seed)
    valid = torch.arange(n)[None] < torch.tensor(counts)[:, None]
    return VisualTokens(
        seq_index=torch.arange(n).repeat(b, 1),
        valid=valid,
        features=torch.randn(b, n, d, generator=g),
        positions=torch.zeros(3, b, n, dtype=torch.long),
    )


def _brute(scores, valid, visited, k):
    out = []
    for s, v, vis in zip(scores.tolist(), valid.tolist(), visited.tolist()):
        free = [i for i in range(len(s)) if v[i] and not vis[i]]
        best = sorted(free, key=lambda i: -s[i])[:k]
        out.append(sorted(best))
    return out


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("k", [1, 3, 7, 50])
def test_select_equals_brute_force_over_steps(seed, k):
    b, n = 4, 20
    counts = [20, 13, 0, 5]
    vis = _visual(b, n, 8, counts, seed)
    visited = torch.zeros(b, n, dtype=torch.bool)
    g = torch.Generator().manual_seed(100 + seed)
    seen: list[set[int]] = [set() for _ in range(b)]
    for _ in range(4):
        scores = torch.rand(b, n, generator=g)
        expect = _brute(scores, vis.valid, visited, k)
        rep = replay.build(scores, vis, visited, k)
        got = [rep.index[i][rep.mask[i]].tolist() for i in range(b)]
        assert got == expect
        for i in range(b):
            assert not seen[i] & set(got[i]), "a visual token was replayed twice"
            seen[i] |= set(got[i])
            assert len(got[i]) == min(k, counts[i] - len(seen[i]) + len(got[i]))
            # invalid slots come first, so the chunk stays left-padded
            m = rep.mask[i].tolist()
            assert m == sorted(m)
        visited = replay.mark_visited(visited, rep)
        assert visited.sum(1).tolist() == [len(s) for s in seen]


def test_weights_are_softmax_of_selected_scores_and_scales():
    vis = _visual(2, 6, 4, [6, 2], 0)
    scores = torch.tensor([[0.1, 0.5, 0.2, 0.9, 0.0, 0.3], [0.7, 0.2, 0.9, 0.9, 0.9, 0.9]])
    visited = torch.zeros(2, 6, dtype=torch.bool)
    rep = replay.build(scores, vis, visited, 3)
    assert rep.index[0].tolist() == [1, 3, 5]
    w = torch.softmax(torch.tensor([0.5, 0.9, 0.3]), 0)
    assert torch.allclose(rep.weights[0], w)
    assert torch.allclose(rep.tokens[0], vis.features[0, [1, 3, 5]] * w[:, None])
    # sample 1 has only 2 valid tokens: one invalid slot first, with zero weight
    assert rep.mask[1].tolist() == [False, True, True] and rep.index[1, 1:].tolist() == [0, 1]
    assert rep.weights[1, 0] == 0
    unit = replay.build(scores, vis, visited, 3, scale="unit")
    assert torch.allclose(unit.weights[0], w * 3) and torch.allclose(unit.weights[1].sum(), torch.tensor(2.0))
    mix = replay.build(scores, vis, visited, 3, mode="soft_mix")
    assert mix.tokens.shape == (2, 1, 4)
    assert torch.allclose(mix.tokens[0, 0], (vis.features[0, [1, 3, 5]] * w[:, None]).sum(0))


def test_nothing_left_gives_an_empty_chunk():
    vis = _visual(2, 3, 4, [3, 1], 0)
    visited = vis.valid.clone()
    rep = replay.build(torch.rand(2, 3), vis, visited, 4)
    assert rep.tokens.shape == (2, 0, 4) and rep.mask.shape == (2, 0)


def test_random_keys_pick_only_unvisited_tokens_and_are_seeded():
    """``replay_select: random`` at the selection level: each step's picks are free (valid, not yet
    replayed) tokens, as many as are left up to k; the same seed gives the same picks."""
    b, n, k = 3, 12, 4
    vis = _visual(b, n, 6, [12, 7, 0], seed=0)
    scores = torch.rand(b, n)

    def picks(seed: int) -> list[list[list[int]]]:
        gen = torch.Generator().manual_seed(seed)
        visited = torch.zeros(b, n, dtype=torch.bool)
        steps = []
        for _ in range(4):
            rep = replay.build(scores, vis, visited, k, keys=replay.random_keys((b, n), gen))
            rows = [rep.index[i][rep.mask[i]].tolist() for i in range(b)]
            for i, row in enumerate(rows):
                free = (vis.valid[i] & ~visited[i]).sum().item()
                assert len(row) == min(k, free) and len(set(row)) == len(row)
                assert all(vis.valid[i, j] and not visited[i, j] for j in row), (i, row)
            visited = replay.mark_visited(visited, rep)
            steps.append(rows)
        return steps

    first = picks(5)
    assert first == picks(5) and first != picks(6)
    assert sorted(i for s in first for i in s[0]) == list(range(12))  # 12 tokens, 3 steps of 4: all used
    assert sorted(i for s in first for i in s[1]) == list(range(7))  # 7 tokens: 4 then 3, then nothing


def test_random_replay_in_the_engine_never_revisits_and_is_seeded(make_image):
    import vedas
    from vedas.config import LatentConfig

    model, processor = vedas.tiny_model("qwen2_vl", hidden=32, layers=1, seed=0)
    images = [make_image(112, 112, s) for s in range(3)]
    questions = ["How many red squares are there?"] * 3

    def replays(select: str, seed: int) -> list[list[list[int]]]:
        cfg = LatentConfig(latents=4, replay_k=3, replay_select=select, replay_seed=seed, max_new_tokens=2)  # type: ignore[arg-type]
        vm = vedas.VedasModel(model, processor, cfg)
        return vm.generate(images, questions, mode="latent", return_details=True).replay_indices

    runs = replays("random", 0)
    for sample in runs:  # 16 visual tokens, 4 steps x 3: every step replays 3 tokens never replayed before
        flat = [i for step in sample for i in step]
        assert [len(step) for step in sample] == [3, 3, 3, 3] and len(set(flat)) == 12
        assert all(0 <= i < 16 for i in flat)
    assert runs == replays("random", 0) and runs != replays("random", 1)
    assert runs != replays("attention", 0)


def test_random_replay_at_inference_is_per_sample_not_per_batch(make_image):
    """A sample's random picks are the same alone and in two different batches (different sizes,
    so different padding widths and rows), by its id or, without one, by its prompt and pixels."""
    import vedas
    from vedas.config import LatentConfig

    model, processor = vedas.tiny_model("qwen2_vl", hidden=32, layers=1, seed=0)
    cfg = LatentConfig(latents=3, replay_k=3, replay_select="random", replay_seed=4, max_new_tokens=2)
    vm = vedas.VedasModel(model, processor, cfg)
    target, small, big = make_image(112, 112, 0), make_image(56, 84, 1), make_image(168, 140, 2)
    q = ["How many red squares are there?", "Is there a circle?", "What colour is the triangle?"]

    def picks(images, questions, ids=None):
        d = vm.generate(images, questions, mode="latent", return_details=True, sample_ids=ids)
        return d.replay_indices

    for ids in (None, True):
        name = (lambda *k: list(k)) if ids else (lambda *k: None)
        alone = picks([target], [q[0]], name("t"))[0]
        assert picks([small, target], [q[1], q[0]], name("s", "t"))[1] == alone
        assert picks([target, big, small], [q[0], q[2], q[1]], name("t", "b", "s"))[0] == alone
    # the id seeds the picks: another id (or seed) gives other picks
    assert picks([target], [q[0]], ["t"])[0] != picks([target], [q[0]], ["u"])[0]
    with pytest.raises(InputError, match="sample_ids: 1 given for 2"):
        picks([target, small], q[:2], ["t"])


def test_sample_replay_draws_per_row_and_fixed_form_needs_keys():
    from vedas.config import LatentConfig
    from vedas.method.replay import RandomReplay, SampleReplay, policy

    valid = torch.tensor([[True, True, True, False], [True, True, True, True]])
    one = SampleReplay(0, ["a", "b"]).keys(torch.zeros(2, 4), valid)
    alone = SampleReplay(0, ["a"]).keys(torch.zeros(1, 3), valid[:1, :3])
    assert torch.equal(one[0, :3], alone[0]) and one[0, 3] == 0
    assert not torch.equal(one[1, :3], one[0, :3])
    fixed = LatentConfig(replay_select="random_fixed")
    with pytest.raises(ValueError, match="random_fixed"):
        policy(fixed)
    assert isinstance(policy(fixed, ["a"]), SampleReplay)
    assert isinstance(policy(LatentConfig(replay_select="random")), RandomReplay)
    assert policy(LatentConfig(), ["a"]) is None


class _Observed:
    """The real cached runner, keeping every pass's inputs (what the model is given)."""

    def __init__(self, runner):
        self.runner = runner
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def __call__(self, embeds, positions, new_mask, record, implicit=False, sources=None):
        self.calls.append((embeds.detach().clone(), positions.clone(), new_mask.clone()))
        return self.runner(embeds, positions, new_mask, record, implicit, sources)

    def __getattr__(self, name):
        return getattr(self.runner, name)


@pytest.mark.parametrize("positions", ["sequential", "original"])
def test_placeholder_replay_keeps_the_chunk_layout_and_changes_only_the_content(make_image, positions):
    """The layout-preserving "replay off": every chunk has the same length, mask and positions as
    with replay on (``original`` positions follow the picks, so step 1, whose picks come from the
    shared prefill, is compared there); the replayed slots hold the sample's mean visual embedding
    times the same weights, and only the content differs."""
    import vedas
    from vedas.config import LatentConfig
    from vedas.engine.loop import LatentLoop
    from vedas.engine.runners import make_runner
    from vedas.method.replay import PlaceholderReplay

    model, processor = vedas.tiny_model("qwen2_vl", hidden=32, layers=1, seed=0)
    cfg = LatentConfig(latents=3, replay_k=3, replay_positions=positions, max_new_tokens=2)  # type: ignore[arg-type]
    vm = vedas.VedasModel(model, processor, cfg)
    batch = vm.prepare(
        [make_image(112, 112, 0), make_image(56, 84, 1)], ["How many?", "Which?"], mode="latent"
    )
    runs = {}
    for name, policy in (("on", None), ("placeholder", PlaceholderReplay())):
        runner = _Observed(make_runner("cached", vm.backbone))
        loop = LatentLoop(vm.backbone, cfg, runner, policy=policy)
        with torch.no_grad():
            run = loop.latent_steps(loop.prefill(batch), 3)
        runs[name] = (runner.calls[1:], run.replays, loop.visual)  # calls[0] is the prefill
    (on, rep_on, visual), (ph, rep_ph, _) = runs["on"], runs["placeholder"]
    compared = 3 if positions == "sequential" else 1
    assert len(on) == len(ph) == 3
    for t in range(compared):
        (e1, p1, m1), (e2, p2, m2) = on[t], ph[t]
        assert e1.shape == e2.shape and torch.equal(p1, p2) and torch.equal(m1, m2), t
    # step 1: same picks and weights; the slots differ exactly by the content
    w, idx, mask = rep_on[0].weights, rep_on[0].index, rep_on[0].mask
    assert torch.equal(idx, rep_ph[0].index) and torch.equal(mask, rep_ph[0].mask)
    valid = visual.valid[..., None].float()
    mean = (visual.features * valid).sum(1) / valid.sum(1)
    k = idx.shape[1]
    assert torch.allclose(ph[0][0][:, :k], mean[:, None] * w[..., None], atol=1e-6)
    picked = visual.features.gather(1, idx[..., None].expand(-1, -1, visual.features.shape[-1]))
    assert torch.allclose(on[0][0][:, :k], picked * w[..., None], atol=1e-6)
    assert not torch.allclose(on[0][0][:, :k], ph[0][0][:, :k])
    assert torch.equal(on[0][0][:, k:], ph[0][0][:, k:])  # the latent itself is the same
