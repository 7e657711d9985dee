"""GAP's difficulty split, measured: sample a model N times per training question (``vedas data
difficulty``); the questions it never answers correctly are *hard* and get latent supervision
(:func:`vedas.method.gap.supervision` reads the file). A model-sampling job scored like an
evaluation, so it lives here, above the model. Sample j of question q uses its own seed derived
from (seed, q, j), so the split does not depend on batching.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from vedas.evaluation.scoring import get_rule, score


def sample_seed(seed: int, record_id: str, sample: int) -> int:
    """The sampling seed of sample ``sample`` of question ``record_id``: independent of batching."""
    digest = hashlib.blake2b(f"{seed}/{record_id}/{sample}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def sample_difficulty(
    vm: Any,
    records: Sequence[Any],
    samples: int = 8,
    temperature: float = 1.0,
    seed: int = 0,
    mode: str = "cot",
    batch_size: int = 8,
    scoring: str = "vedas",
    max_new_tokens: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Sample ``vm`` ``samples`` times per question; questions with no correct sample are hard.

    Returns ``{"samples", "temperature", "seed", "mode", "scoring", "n", "hard", "hard_ids",
    "per_question": {id: {"correct": c, "predictions": [...]}}}``.
    """
    from tqdm.auto import tqdm

    _check_sampling(records, samples, temperature, batch_size, scoring)
    rows = [(r, j) for r in records for j in range(samples)]
    per: dict[str, dict[str, Any]] = {r.id: {"correct": 0, "predictions": []} for r in records}
    bar = tqdm(total=len(rows), disable=not progress, desc="difficulty")
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        texts, _ = vm.generate_records(
            [r for r, _ in chunk],
            mode=mode,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            seed=[sample_seed(seed, r.id, j) for r, j in chunk],
        )
        for (r, _), text in zip(chunk, texts):
            per[r.id]["predictions"].append(text)
            per[r.id]["correct"] += int(score(text, r, scoring))
        bar.update(len(chunk))
    bar.close()
    hard = [r.id for r in records if per[r.id]["correct"] == 0]
    return {
        "samples": samples,
        "temperature": temperature,
        "seed": seed,
        "mode": mode,
        "scoring": scoring,
        "n": len(records),
        "hard": len(hard),
        "hard_ids": hard,
        "per_question": per,
    }


def _check_sampling(
    records: Sequence[Any], samples: int, temperature: float, batch_size: int, scoring: str
) -> None:
    """The arguments of :func:`sample_difficulty`, checked before any compute; errors name the argument."""
    get_rule(scoring)
    if samples < 1:
        raise ValueError(f"samples: must be ≥ 1, got {samples}")
    if temperature <= 0:
        raise ValueError(f"temperature: must be > 0 to sample, got {temperature}")
    if batch_size < 1:
        raise ValueError(f"batch_size: must be ≥ 1, got {batch_size}")
    if not records:
        raise ValueError("records: no questions to sample")
    ids = [r.id for r in records]
    if len(set(ids)) != len(ids):
        raise ValueError("records: ids must be unique to name the hard questions")


__all__ = ["sample_difficulty", "sample_seed"]
