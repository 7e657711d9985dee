"""Planted bugs that the loosened equivalence tests must still catch.

    .venv/bin/python tests/mutations.py                  # every mutation, the table below
    .venv/bin/python tests/mutations.py --only chunk_position_shift
    ATEN_CPU_CAPABILITY=avx2 .venv/bin/python tests/mutations.py   # as an AVX2 machine would

The equivalence tests compare with a dtype-derived bound and margin-aware for discrete choices
(tests/numerics.py) instead of bitwise identity. That must not make them blind: each mutation
below plants one bug in the engine under test (never in the oracle, which the comparisons could
not see), runs the loosened tests in a fresh pytest process with this file as a plugin
(``-p mutations`` with ``VEDAS_MUTATION=name``), and counts the tests that fail. A mutation
that no test catches makes the script exit 1.

A detached latent is not among them: in inference (``no_grad``) detaching changes nothing, and
the gradient path is covered by the training tests, which compare gradients, not engines.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
ENGINE_TESTS = [
    "tests/engine/test_engine.py",
    "tests/engine/test_kernels.py",
    "tests/engine/test_static.py",
    "tests/engine/test_gpu_7b.py",
]
LOOSENED = (
    "test_cached_equals_recompute or test_bf16_cached_and_recompute_pick_the_same_replays"
    " or test_batched_equals_each_sample_alone or test_recorder_row_under_each_cpu_kernel_and_dtype"
    " or test_static_cache or test_static_restore_rolls_back or test_tiny_smoke_run_writes_every_phase_and_ratio"
    " or test_smollm2_transplant_gives_the_llama_logits"
)
"""The tests whose comparisons tests/numerics.py loosened (by name, in the files above)."""


def _wrap(owner: object, name: str, make: Callable[[Callable], Callable]) -> None:
    setattr(owner, name, make(getattr(owner, name)))


def chunk_position_shift() -> None:
    """The cached engine feeds every latent chunk (replays and z) one position late."""
    from vedas.engine.runners import CachedRunner

    def make(call):
        def shifted(self, embeds, positions, new_mask, record, implicit=False, sources=None):
            if implicit and self.mask is not None:
                positions = positions + 1
            return call(self, embeds, positions, new_mask, record, implicit, sources)

        return shifted

    _wrap(CachedRunner, "__call__", make)


def mrope_rows_dropped() -> None:
    """The cached engine's prefill drops M-RoPE's height and width rows (1-D positions for the image)."""
    from vedas.engine.runners import CachedRunner

    def make(call):
        def flat(self, embeds, positions, new_mask, record, implicit=False, sources=None):
            if self.mask is None:
                positions = positions[:1].expand_as(positions)
            return call(self, embeds, positions, new_mask, record, implicit, sources)

        return flat

    _wrap(CachedRunner, "__call__", make)


def recorder_layer_dropped() -> None:
    """The last-query recorder leaves the last decoder layer out of a^t's mean."""
    from vedas.engine.attention import LastQueryRecorder

    def make(add):
        def keep_last(self, probs):
            self.last = probs.float().mean(1)
            add(self, probs)

        return keep_last

    def mean(self):
        return (self.total - self.last) / max(self.calls - 1, 1)

    _wrap(LastQueryRecorder, "add", make)
    LastQueryRecorder.mean = mean


def static_slot_masked() -> None:
    """The static cache masks the last replayed token of every latent chunk (a replay lost)."""
    from vedas.engine.static import StaticRunner

    def make(call):
        def masked(self, embeds, positions, new_mask, record, implicit=False, sources=None):
            if self.cache is not None and embeds.shape[1] > 1:
                new_mask = new_mask.clone()
                new_mask[:, -2] = 0
            return call(self, embeds, positions, new_mask, record, implicit, sources)

        return masked

    _wrap(StaticRunner, "__call__", make)


def static_routing_off() -> None:
    """The static engine runs its passes without routing segments: Routing Depth Scaling silently off."""
    from vedas.engine import static

    segments = static.segments
    static.segments = lambda _seg: segments(None)


def deepstack_rows_dropped() -> None:
    """The cached engine passes no DeepStack rows for replayed tokens (Qwen3-VL)."""
    from vedas.engine.runners import CachedRunner

    def make(call):
        def no_rows(self, embeds, positions, new_mask, record, implicit=False, sources=None):
            return call(
                self,
                embeds,
                positions,
                new_mask,
                record,
                implicit,
                None if self.mask is not None else sources,
            )

        return no_rows

    _wrap(CachedRunner, "__call__", make)


def transplant_rope_theta() -> None:
    """The SmolLM2 → Qwen2-VL transplant builds its rope with the default θ = 1e4 instead of the model's 1e5."""
    from vedas.experiments import smollm

    def make(transplant):
        def wrong(llama, tokenizer, *args, **kwargs):
            model, processor = transplant(llama, tokenizer, *args, **kwargs)
            for module in model.modules():
                if isinstance(getattr(module, "inv_freq", None), torch.Tensor):
                    n = module.inv_freq.numel()
                    module.inv_freq.copy_(1.0 / 1e4 ** (torch.arange(n, dtype=torch.float32) / n))
            return model, processor

        return wrong

    _wrap(smollm, "transplant", make)


@dataclass(frozen=True)
class Mutation:
    plant: Callable[[], None]
    tests: list[str]


MUTATIONS = {
    "chunk_position_shift": Mutation(chunk_position_shift, ENGINE_TESTS),
    "mrope_rows_dropped": Mutation(mrope_rows_dropped, ENGINE_TESTS),
    "recorder_layer_dropped": Mutation(recorder_layer_dropped, ENGINE_TESTS),
    "static_slot_masked": Mutation(static_slot_masked, ENGINE_TESTS),
    "static_routing_off": Mutation(static_routing_off, ["tests/engine/test_static.py"]),
    "deepstack_rows_dropped": Mutation(deepstack_rows_dropped, ENGINE_TESTS),
    "transplant_rope_theta": Mutation(
        transplant_rope_theta, ["tests/method/test_gap.py::test_smollm2_transplant_gives_the_llama_logits"]
    ),
}


def pytest_configure(config) -> None:
    """As a pytest plugin (``-p mutations``): plant ``$VEDAS_MUTATION`` before any test runs."""
    name = os.environ.get("VEDAS_MUTATION")
    if name:
        MUTATIONS[name].plant()


def run(name: str, first: bool = False) -> tuple[int, int, list[str]]:
    """(failed, passed, failed test ids) of the loosened tests with mutation ``name`` planted.

    ``first``: stop at the first failure (enough to show the bug is caught; what CI runs).
    """
    env = {**os.environ, "VEDAS_MUTATION": name, "HF_HUB_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests"), env.get("PYTHONPATH", "")])
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "mutations",
        "-p",
        "no:randomly",
        "-p",
        "no:cacheprovider",
    ]
    cmd += ["-k", LOOSENED, *(["-x"] if first else [])]
    out = subprocess.run(
        [*cmd, *MUTATIONS[name].tests], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    ).stdout
    failed = re.findall(r"^FAILED (\S+)", out, re.M)
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (failed|passed)", out.splitlines()[-1] if out else "")}
    return counts.get("failed", 0), counts.get("passed", 0), failed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", action="append", choices=sorted(MUTATIONS), help="run these mutations only")
    ap.add_argument("--first", action="store_true", help="stop each run at its first failing test (quicker)")
    args = ap.parse_args(argv)
    missed = []
    print(f"{'mutation':24s} {'failed':>6s} {'passed':>6s}  the loosened tests that caught it (cases)")
    for name in args.only or MUTATIONS:
        failed, passed, ids = run(name, args.first)
        tests: dict[str, int] = {}
        for i in ids:
            test = i.split("::", 1)[1].split("[", 1)[0]
            tests[test] = tests.get(test, 0) + 1
        shown = ", ".join(f"{t} ({n})" for t, n in tests.items())
        print(f"{name:24s} {failed:6d} {passed:6d}  {shown}", flush=True)
        if failed == 0:
            missed.append(name)
    if missed:
        print(f"not caught: {', '.join(missed)}")
        return 1
    print("every planted bug was caught")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
