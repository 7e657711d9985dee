"""The curriculum (docs/design.md#curriculum): explicit CoT internalised into latent steps, stage by stage.

A record's reasoning steps come from its ``steps`` (or its rationale split on blank lines,
falling back to sentences, regrouped into at most ``max_steps`` near-equal pieces). At stage
s (0 … S, S = T_r / latents_per_step) the first min(s, n) steps are replaced by
``latents_per_step`` latent steps each; the remaining steps stay as explicit text before the
answer. The last stage uses all T_r latents and no explicit steps, padding with latents when
a sample has fewer steps. The stage advances every ``epochs_per_stage`` epochs.

What each training method supervises:

=========  ==========================================  =================================
method     prompt ends with                            target text
=========  ==========================================  =================================
no_cot     the generation prompt                       ``Therefore, the answer is X.``
cot        the generation prompt                       all steps, then the answer
latent     ``<|latent_start|>``; the latents; then      the remaining steps, then the
vedas      ``<|latent_end|>`` is fed                    answer
=========  ==========================================  =================================

Steps are joined with blank lines, as in the rationale they came from.
"""

from __future__ import annotations

from dataclasses import dataclass

from vedas.config import _check
from vedas.data.steps import split_steps
from vedas.methods import LATENT_METHODS, METHODS  # noqa: F401  (re-exported)
from vedas.methods import method as method_of
from vedas.prompts import answer_target


@dataclass
class CurriculumConfig:
    """Stage schedule (docs/design.md#curriculum)."""

    epochs_per_stage: int = 1
    """Epochs spent at each stage before one more step becomes latent."""
    latents_per_step: int = 1
    """Latent steps that replace one explicit reasoning step (c in Coconut)."""
    max_steps: int = 0
    """Regroup rationales into at most this many steps; 0 = T_r / latents_per_step."""

    def __post_init__(self) -> None:
        _check(self.epochs_per_stage >= 1, "epochs_per_stage", f"must be ≥ 1, got {self.epochs_per_stage}")
        _check(self.latents_per_step >= 1, "latents_per_step", f"must be ≥ 1, got {self.latents_per_step}")
        _check(self.max_steps >= 0, "max_steps", f"must be ≥ 0, got {self.max_steps}")


@dataclass(frozen=True)
class Layout:
    """What one sample looks like at one stage."""

    latents: int
    """Latent steps in the implicit phase (0 for no_cot / cot)."""
    target: str
    """The explicit text to supervise: remaining steps, then the answer sentence."""


def num_stages(latents: int, cfg: CurriculumConfig) -> int:
    """S, the index of the last stage (all latents)."""
    return max_steps(latents, cfg)


def max_steps(latents: int, cfg: CurriculumConfig) -> int:
    return cfg.max_steps or max(latents // cfg.latents_per_step, 1)


def stage_for_epoch(epoch: int, latents: int, cfg: CurriculumConfig) -> int:
    return min(epoch // cfg.epochs_per_stage, num_stages(latents, cfg))


def record_steps(steps: list[str] | None, rationale: str | None, limit: int) -> list[str]:
    """The record's reasoning steps, regrouped into at most ``limit`` pieces."""
    if steps:
        from vedas.data.steps import regroup

        return [" ".join(g) for g in regroup([s.strip() for s in steps if s.strip()], limit)]
    return split_steps(rationale or "", max_steps=limit)


def layout(
    method: str, steps: list[str], answer: str, stage: int, latents: int, cfg: CurriculumConfig
) -> Layout:
    """The layout of one sample at ``stage`` for ``method`` (``latents`` = T_r)."""
    if method not in METHODS:
        raise ValueError(f"method={method!r}: choose one of {list(METHODS)}")
    final = answer_target(answer)
    preset = method_of(method)
    if not preset.rationale:
        return Layout(0, final)
    if not preset.latent:
        return Layout(0, "\n\n".join([*steps, final]))
    last = num_stages(latents, cfg)
    if stage >= last:
        return Layout(latents, final)
    hidden = min(stage, len(steps))
    rest = steps[hidden:]
    return Layout(hidden * cfg.latents_per_step, "\n\n".join([*rest, final]))
