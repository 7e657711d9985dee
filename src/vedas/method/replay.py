"""Replay policies: the plug-ins for the engine's token choice (:class:`vedas.engine.replay.ReplayPolicy`).

The paper's visual replay chooses by attention, the engine's default (no policy). The ablation's
control ``replay_select: random`` (:class:`RandomReplay`) picks K unvisited tokens uniformly at
random; only the choice differs, the weights are still softmax over the picked tokens' attention.
"""

from __future__ import annotations

import torch

from vedas.config import LatentConfig
from vedas.engine.replay import ReplayPolicy, random_keys


class RandomReplay:
    """K random unvisited tokens per step, from one generator seeded with ``seed`` on the scores'
    device at the first step (training keeps one policy for the run: a fresh one per batch would
    give every batch the same picks)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.generator: torch.Generator | None = None

    def keys(self, scores: torch.Tensor) -> torch.Tensor:
        if self.generator is None:
            self.generator = torch.Generator(device=scores.device).manual_seed(self.seed)
        return random_keys(scores.shape, self.generator)


def policy(cfg: LatentConfig) -> ReplayPolicy | None:
    """The replay policy ``cfg`` asks for (``replay_select``): None chooses by attention."""
    return RandomReplay(cfg.replay_seed) if cfg.replay_select == "random" else None


__all__ = ["RandomReplay", "policy"]
