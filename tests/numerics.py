"""How close two computations must be: the one tolerance rule of the equivalence tests.

Floating-point results differ between kernels and instruction sets (AVX2, AVX-512, AMX, GPUs):
two computations of the same value agree only up to rounding, and by how much depends on the
dtype, not on the machine a tolerance was tuned on. Every equivalence test uses one of three
comparisons (docs/testing.md says how to run the suite as another CPU would):

- **exact** (``torch.equal``): both sides run the same code on the same inputs (a rerun, a
  snapshot restored, a batch split the same way). Nothing here: use ``torch.equal``.
- **close** (:func:`assert_close`): two different computations of one value (cached vs
  recompute, cached vs static, SDPA vs eager, one module graph vs another). The bound is
  relative to the reference's scale::

      |ours − ref|∞ ≤ bound(dtype, depth, width) · max|ref|
      bound = SAFETY · sqrt(depth) · (u(dtype) + sqrt(width) · u(float32))

  ``u(dtype)`` is the unit roundoff of the stored values (each kernel rounds its outputs to
  the dtype); ``sqrt(width) · u(float32)`` the error of a float32-accumulated reduction of
  ``width`` terms summed in another order (the probabilistic bound of rounding-error
  analysis: independent roundings add like a random walk); ``sqrt(depth)`` the same growth
  over ``depth`` dependent decoder layers (the normalisation in each keeps the scale).
  :data:`SAFETY` is the constant those bounds hold up to. At depth 4, width 128 the rule gives
  5.9e-6 (float32) and 3.1e-2 (bfloat16); it is never loosened per test.
- **margin-aware** (:func:`compare_runs`): discrete outcomes (greedy tokens, top-K replay
  picks) must be identical wherever the reference's own margin (top-1 − top-2 logit; K-th −
  (K+1)-th selection score) exceeds twice the largest difference of the numbers the choice is
  made from — a difference itself asserted within the bound above, so a bug cannot hide behind
  a near-tie. At the first step of a sample where the margin is smaller, both sides took an
  equally valid branch: comparing stops there for that sample (what follows is another
  trajectory), and the test asserts that such near-ties are rare on its inputs.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from vedas.engine import replay

NEAR_TIE_SHARE = 0.25
"""The most near-ties :func:`assert_runs_agree` accepts, as a share of the choices it compared."""

SAFETY = 4.0
"""The constant factor of :func:`bound` (the rounding-error bounds hold up to a small constant)."""


def unit(dtype: torch.dtype) -> float:
    """The unit roundoff of ``dtype`` (half its machine epsilon): 2⁻⁸ for bfloat16, 2⁻²⁴ for float32."""
    return torch.finfo(dtype).eps / 2


def bound(dtype: torch.dtype, depth: int, width: int) -> float:
    """The relative bound of two computations of one value (see the module docstring)."""
    if depth < 1 or width < 1:
        raise ValueError(f"depth and width must be ≥ 1, got {depth}, {width}")
    return SAFETY * math.sqrt(depth) * (unit(dtype) + math.sqrt(width) * unit(torch.float32))


def model_depth(model: torch.nn.Module, passes: int = 1) -> int:
    """Decoder layers between the inputs and a value computed after ``passes`` dependent passes."""
    return model.config.get_text_config().num_hidden_layers * passes


def model_width(model: torch.nn.Module) -> int:
    """The widest reduction of a decoder layer of ``model`` (its hidden or MLP width)."""
    text = model.config.get_text_config()
    return max(text.hidden_size, getattr(text, "intermediate_size", 0) or 0)


def scale(t: torch.Tensor) -> float:
    """max|t| (1.0 for an empty tensor)."""
    return float(t.detach().float().abs().max()) if t.numel() else 1.0


def assert_close(
    ours: torch.Tensor, ref: torch.Tensor, *, dtype: torch.dtype, depth: int, width: int
) -> None:
    """|ours − ref|∞ ≤ :func:`bound` · max|ref|, with the numbers in the failure message."""
    assert ours.shape == ref.shape, f"shapes differ: {tuple(ours.shape)} vs {tuple(ref.shape)}"
    if not ref.numel():
        return
    diff = float((ours.detach().float() - ref.detach().float()).abs().max())
    limit = bound(dtype, depth, width) * scale(ref)
    assert diff <= limit, (
        f"apart by {diff:.3g} > {limit:.3g} = bound({dtype}, depth={depth}, width={width}) · {scale(ref):.3g}"
    )


# --- margin-aware comparison of generate() runs -------------------------------------------------


@dataclass
class Trace:
    """What one ``generate`` call decided, and the numbers it decided on (see :func:`tracing`)."""

    scores: list[torch.Tensor] = field(default_factory=list)
    """Per latent step: (B, N) selection scores, -inf where a token was not free (invalid or visited)."""
    k: list[int] = field(default_factory=list)
    """Per latent step: the K asked for."""
    logits: list[torch.Tensor] = field(default_factory=list)
    """Per decoding step: (B, V) the logits greedy decoding takes the argmax of (float32, suppressed ids -inf)."""


@contextlib.contextmanager
def tracing(vm) -> Iterator[Trace]:
    """Record the selection scores and the logits of the ``generate`` calls run inside.

    A spy, not a stand-in: the engine's own ``replay.build`` and LM head run unchanged; the
    selection scores are read as ``build`` receives them, the logits with a forward hook.
    """
    trace = Trace()
    build = replay.build
    # what VedasModel.generate never lets greedy decoding pick (the backbone's and the latent markers)
    ids = vm.token_ids
    suppressed = torch.tensor([*vm.backbone.suppressed_token_ids(), ids.start, ids.latent, ids.end])

    def spy(scores, visual, visited, k, mode="topk", scale="paper", keys=None, features=None):
        free = visual.valid & ~visited
        decider = scores if keys is None else keys  # the random control picks by its keys
        trace.scores.append(decider.detach().float().masked_fill(~free, float("-inf")))
        trace.k.append(int(k))
        return build(scores, visual, visited, k, mode, scale, keys, features)

    def hook(_module, _inputs, output):
        logits = output.detach().float().clone()
        logits[..., suppressed.to(logits.device)] = float("-inf")
        trace.logits.append(logits)

    handle = vm.backbone.lm_head().register_forward_hook(hook)
    replay.build = spy
    try:
        yield trace
    finally:
        replay.build = build
        handle.remove()


def pick_margin(scores: torch.Tensor, k: int) -> torch.Tensor:
    """(B,) the K-th − (K+1)-th free score per sample; +inf where at most K tokens are free."""
    free = torch.isfinite(scores).sum(1)
    top = scores.topk(min(k + 1, scores.shape[1]), dim=1).values
    margin = torch.full((scores.shape[0],), float("inf"))
    for b in range(scores.shape[0]):
        if free[b] > k:
            margin[b] = top[b, k - 1] - top[b, k]
    return margin


def token_margin(logits: torch.Tensor) -> torch.Tensor:
    """(B,) top-1 − top-2 logit per row, on the suppressed-free logits the engine argmaxes."""
    top = logits.topk(2, dim=-1).values
    return top[:, 0] - top[:, 1]


@dataclass
class Agreement:
    """What :func:`compare_runs` compared: decisive choices (all equal) and the near-ties it stopped at."""

    decisive: int = 0
    near_ties: int = 0
    stopped: list[tuple[int, str, int]] = field(default_factory=list)
    """(sample, "replay"|"token", step) where comparing stopped at a near-tie."""

    def latent_phases_compared(self, samples: int) -> float:
        """The share of samples whose every replay choice was decisive (compared and equal)."""
        return 1 - sum(kind == "replay" for _, kind, _ in self.stopped) / samples


def _decide(ref: torch.Tensor, ours: torch.Tensor, margin: float, *, dtype, depth, width, what: str) -> bool:
    """Whether the reference's ``margin`` decides a choice made from ``ref`` and ``ours``.

    ``ours`` must be within :func:`bound` of ``ref`` (a bug that moves the numbers fails here,
    so it cannot hide behind near-ties). With δ = max|ours − ref| over the candidates, every
    candidate moves by at most δ, so a margin above 2δ guarantees the same choice.
    """
    free = torch.isfinite(ref)
    assert torch.equal(free, torch.isfinite(ours)), f"{what}: the candidates differ"
    try:
        assert_close(ours[free], ref[free], dtype=dtype, depth=depth, width=width)
    except AssertionError as e:
        raise AssertionError(f"{what}: {e}") from None
    delta = float((ours[free] - ref[free]).abs().max()) if free.any() else 0.0
    return margin > 2 * delta


def compare_runs(
    ref,
    ours,
    ref_trace: Trace,
    ours_trace: Trace,
    *,
    dtype: torch.dtype,
    depth: int,
    width: int,
) -> Agreement:
    """Assert two ``generate`` runs (``return_details=True``) agree wherever the reference's margins allow.

    Per sample and in order: each latent step's selection scores within the bound and, where
    the reference's K-th − (K+1)-th margin decides (:func:`_decide`), the same replays; the
    latents within the bound (depth grows by ``depth`` per latent step); then each token's
    logits within the bound and, where the top-1 − top-2 margin decides, the same token. A sample
    stops being compared at its first near-tie (both sides took an equally valid branch).
    Returns the counts, for the test to judge how rare near-ties were.
    """
    agree = Agreement()
    steps = len(ref.replay_indices[0]) if ref.replay_indices else 0
    assert len(ref_trace.scores) == len(ours_trace.scores) == steps, "one selection per latent step"
    for b in range(len(ref.token_ids)):
        choices = [("replay", t) for t in range(steps)] + [("token", i) for i in range(len(ref.token_ids[b]))]
        for kind, i in choices:
            where = f"sample {b}, {kind} {i}"
            if kind == "replay":
                r, o = ref_trace.scores[i][b], ours_trace.scores[i][b]
                margin, d = float(pick_margin(r[None], ref_trace.k[i])[0]), depth * (i + 1)
            else:
                assert i < len(ours.token_ids[b]), f"{where}: ours stopped after {ours.token_ids[b]}"
                r, o = ref_trace.logits[i][b], ours_trace.logits[i][b]
                margin, d = float(token_margin(r[None])[0]), depth * (steps + 2 + i)
            if not _decide(r, o, margin, dtype=dtype, depth=d, width=width, what=where):
                agree.near_ties += 1
                agree.stopped.append((b, kind, i))
                break
            agree.decisive += 1
            if kind == "replay":
                assert ours.replay_indices[b][i] == ref.replay_indices[b][i], (
                    f"{where}: {ours.replay_indices[b][i]} vs {ref.replay_indices[b][i]}, margin {margin:.3g}"
                )
                assert_close(ours.latents[b, i], ref.latents[b, i], dtype=dtype, depth=d, width=width)
            else:
                assert ours.token_ids[b][i] == ref.token_ids[b][i], (
                    f"{where}: {ours.token_ids[b][: i + 1]} vs {ref.token_ids[b][: i + 1]}, margin {margin:.3g}"
                )
    return agree


def traced(vm, batch, **kwargs):
    """``vm.generate(*batch, return_details=True, **kwargs)`` under :func:`tracing`: (details, trace)."""
    with tracing(vm) as trace:
        details = vm.generate(*batch, return_details=True, **kwargs)
    return details, trace


def assert_runs_agree(vm, ref_run, ours_run) -> Agreement:
    """:func:`compare_runs` at ``vm``'s dtype, depth and width, and near-ties rare.

    ``ref_run``/``ours_run``: (details, trace) from :func:`traced`. Rare means at most
    :data:`NEAR_TIE_SHARE` of the choices compared: where near-ties are common a test compares
    little, so its inputs must be chosen so they are rare. How common they are is a property of
    the inputs and the dtype (a tiny random model's bf16 logits over a 150k vocabulary are often
    within two units of their last place), not of the engines.
    """
    dtype = next(vm.model.parameters()).dtype
    agreement = compare_runs(
        *ref_run[:1],
        *ours_run[:1],
        ref_run[1],
        ours_run[1],
        dtype=dtype,
        depth=model_depth(vm.model),
        width=model_width(vm.model),
    )
    choices = agreement.decisive + agreement.near_ties
    assert agreement.near_ties <= NEAR_TIE_SHARE * choices, (
        f"near-ties are not rare on these inputs: {agreement}"
    )
    return agreement
