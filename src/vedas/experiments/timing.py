"""Timing and memory helpers of the benchmarks (``vedas bench``, ``benchmarks/*.py``), in one place:
interleaved rounds with the ratio taken within a round, medians, forced-length generation, the
peak-memory rise of one call, and the ``--json`` writer.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch


def sync(device: torch.device | str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def generate_call(
    vm, images, questions, choices, forced_length: int | None = None, **kw
) -> Callable[[], Any]:
    """One ``vm.generate`` call with details; ``forced_length`` generates exactly that many tokens (EOS
    suppressed) instead of stopping at EOS."""
    if forced_length is None:
        return lambda: vm.generate(images, questions, choices, return_details=True, **kw)
    return lambda: forced_generate(vm, images, questions, choices, forced_length, **kw)


def interleaved(
    calls: dict[str, Callable[[], Any]], device: Any, repeats: int
) -> dict[str, list[dict[str, float]]]:
    """Per-round wall times (ms) of prefill / latent / decode / total and mean AR steps of each call.

    Every call runs once untimed (warm-up), then once per round; the order rotates from round to
    round so that drift on a busy machine hits every variant alike. Ratios are then taken within a
    round (:func:`ratio`), as in ``benchmarks/train_step.py``.
    """
    for call in calls.values():
        call()
    names = list(calls)
    runs: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            sync(device)
            t0 = time.perf_counter()
            d = calls[name]()
            sync(device)
            total = (time.perf_counter() - t0) * 1e3
            runs[name].append({**d.timings_ms, "total": total, "ar_steps": sum(d.ar_steps) / len(d.ar_steps)})
    return runs


def medians(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def ratio(runs: dict[str, list[dict[str, float]]], num: str, den: str, key: str = "total") -> float:
    """Median over rounds of ``num``'s / ``den``'s time measured in the same round."""
    return statistics.median(a[key] / b[key] for a, b in zip(runs[num], runs[den]))


def forced_generate(vm, images, questions, choices, length: int, mode: str = "vedas", engine: str = "cached"):
    """``vm.generate`` with EOS suppressed so every sample generates exactly ``length`` tokens."""
    from vedas.config import LatentConfig, to_dict
    from vedas.engine import generate
    from vedas.methods import method as method_of

    latent = method_of(mode).latent
    batch = vm.prepare(images, questions, choices, mode=mode)
    cfg = LatentConfig(**{**to_dict(vm.config), "max_new_tokens": length})
    eos = vm.eos_id
    _, details = generate.run(
        vm.backbone,
        batch,
        cfg,
        steps=cfg.latents if latent else 0,
        latent_end_id=vm.token_ids.end if latent else None,
        eos_id=eos,
        pad_id=vm.tokenizer.pad_token_id,
        engine=engine,
        suppress=[eos, *vars(vm.token_ids).values()],
    )
    return details


def write_json(path: str | None, result: dict[str, Any]) -> None:
    """The benchmark scripts' ``--json``: write ``result`` there (if a path was given) and say so."""
    if path:
        with open(path, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {path}")


def peak_rise(work: Any, device: str) -> int:
    """Bytes that one call of ``work()`` adds to the peak: ``max_memory_allocated`` on CUDA; on CPU the
    peak RSS (VmHWM, reset through /proc/self/clear_refs) over the RSS before the call."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        work()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base

    def status(key: str) -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    base = status("VmRSS:")
    work()
    return status("VmHWM:") - base
