"""The one generation driver: prefill, latent passes, an optional hook, then decoding.

:func:`run` is what ``VedasModel.generate`` calls for every mode and engine. What differs
between uses is passed in as small objects, never as another copy of the loop: the runner
(``engine``), a latent transform (GAP, latent-use checks) and a :class:`LatentHook` that
works on the latents between the latent phase and decoding (test-time optimisation,
:mod:`vedas.method.tto`).

    tokens, details = run(vm.backbone, batch, cfg, steps=3, latent_end_id=end, eos_id=eos, pad_id=pad)
    details.timings_ms                  # prefill / latent / [the hook's name] / decode, batch wall time
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from vedas.backbones.base import Backbone
from vedas.config import LatentConfig
from vedas.engine.inputs import PromptBatch
from vedas.engine.loop import LatentLoop, LatentRun, LatentTransform, LoopState, StepCallback
from vedas.engine.replay import ReplayPolicy
from vedas.engine.runners import make_runner


@dataclass
class Details:
    """Everything one ``generate`` call measured, per sample where it is a list."""

    texts: list[str]
    token_ids: list[list[int]]
    ar_steps: list[int]
    replay_indices: list[list[list[int]]]
    latents: torch.Tensor  # (B, T_r, D)
    timings_ms: dict[str, float] = field(default_factory=dict)  # batch wall time: prefill / latent / decode
    engine: str = "cached"
    mode: str = "vedas"
    tto: dict[str, Any] | None = None
    """What the latent hook reported (test-time optimisation: loss trace per stage, extra passes)."""


class LatentHook(Protocol):
    """Work on the latents between the latent phase and decoding (e.g. :class:`vedas.method.tto.TTOHook`).

    The driver runs the prefill and the latent passes as always, then calls the hook with the
    loop, the loop's state right after the prefill (to :meth:`LatentLoop.restore` it), the
    prefill's last hidden state and the first latent run. The hook returns the run to decode
    from (its latents and replays are what ``Details`` reports) and a report for ``Details.tto``.
    Its wall time is reported under :attr:`name`.
    """

    name: str
    record: bool | None
    """The prefill's ``record`` (:meth:`LatentLoop.prefill`): True keeps a¹ even with replay off."""

    def check(self, engine: str, steps: int) -> None:
        """Raise ValueError, before any compute, if the hook cannot run (``steps`` is 0 for plain modes)."""
        ...

    def __call__(
        self, loop: LatentLoop, start: LoopState, h0: torch.Tensor, first: LatentRun
    ) -> tuple[LatentRun, dict[str, Any]]: ...


def row_seeds(seed: int | Sequence[int] | None, n: int) -> list[int] | None:
    """Per-row sampling seeds: an int gives rows ``seed, seed+1, …``; a sequence must have ``n`` entries."""
    if seed is None:
        return None
    if isinstance(seed, int):
        return [seed + i for i in range(n)]
    seeds = [int(s) for s in seed]
    if len(seeds) != n:
        raise ValueError(f"seed: {len(seeds)} seeds given for {n} samples")
    return seeds


class _Clock:
    """Wall time per phase, with the device synchronised at every mark (asynchronous CUDA)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.ms: dict[str, float] = {}
        self._sync()
        self._last = time.perf_counter()

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def mark(self, phase: str) -> None:
        self._sync()
        now = time.perf_counter()
        self.ms[phase] = (now - self._last) * 1e3
        self._last = now


def run(
    backbone: Backbone,
    batch: PromptBatch,
    cfg: LatentConfig,
    *,
    steps: int,
    latent_end_id: int | None,
    eos_id: int,
    pad_id: int,
    engine: str = "cached",
    suppress: list[int] | None = None,
    transform: LatentTransform | None = None,
    temperature: float = 0.0,
    seeds: Sequence[int] | None = None,
    hook: LatentHook | None = None,
    on_step: StepCallback | None = None,
    policy: ReplayPolicy | None = None,
) -> tuple[list[list[int]], Details]:
    """Generate for one prompt batch: prefill, ``steps`` latent passes (if ``latent_end_id``), greedy decode.

    ``latent_end_id=None`` means a plain prompt (modes ``cot``/``no_cot``): decoding starts from
    the prefill's last position. ``temperature``/``seeds``: sampling instead of greedy
    decoding (see :meth:`LatentLoop.greedy`); the default is greedy. ``hook`` runs between
    the latent passes and decoding (see :class:`LatentHook`). ``on_step`` is called after every
    decoded token (:data:`vedas.engine.loop.StepCallback`: streaming, stop sequences). ``policy``: how replay chooses its
    tokens (None: by attention; :func:`vedas.method.replay.policy` makes the one a config asks for).
    """
    steps = steps if latent_end_id is not None else 0
    if hook is not None:
        hook.check(engine, steps)
    # what the passes after the prefill can add: T_r chunks of ≤ K+1 tokens, <|latent_end|>, the answer
    reserve = steps * (cfg.replay_k + 1) + int(latent_end_id is not None) + cfg.max_new_tokens
    loop = LatentLoop(backbone, cfg, make_runner(engine, backbone, reserve), suppress, policy)
    report = None
    with torch.no_grad():
        clock = _Clock(batch.input_ids.device)
        h = loop.prefill(batch, record=False if steps == 0 else hook.record if hook else None)
        clock.mark("prefill")
        start = loop.snapshot()
        latent = loop.latent_steps(h, steps, transform=transform)
        clock.mark("latent")
        if hook is not None:
            latent, report = hook(loop, start, h, latent)
            clock.mark(hook.name)
        h = latent.hidden
        if latent_end_id is not None:
            end = torch.full((h.shape[0], 1), latent_end_id, dtype=torch.long, device=h.device)
            h = loop.feed_tokens(end)
        tokens, _ = loop.greedy(h, cfg.max_new_tokens, eos_id, pad_id, temperature, seeds, on_step)
        clock.mark("decode")
    replay_indices = [
        [[] if r is None else r.index[b][r.mask[b]].tolist() for r in latent.replays]
        for b in range(h.shape[0])
    ]
    details = Details(
        texts=[],
        token_ids=tokens,
        ar_steps=[latent.latents.shape[1] + len(t) for t in tokens],
        replay_indices=replay_indices,
        latents=latent.latents,
        timings_ms=clock.ms,
        engine=engine,
        tto=report,
    )
    return tokens, details
