"""Data-parallel evaluation: which records a rank evaluates, on which device, and the merge.

    torchrun --nproc_per_node 4 -m vedas.cli eval --checkpoint ... --out report.json

A rank's rank and world size come from the environment torchrun (or ``accelerate launch``) sets
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``; one process when unset). The one-process evaluation cuts
the records into batches of ``batch_size``; batch ``i`` goes to rank ``i % world`` (strided, so the
ranks' loads stay even). Every batch is then the one a single process would run, with the same
records in the same order, so its predictions are the same, and rank 0 puts the ranks' batches
back in batch order: the merged per-sample rows are the one-process rows, once each, in order.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from vedas import cli_args
from vedas.errors import UserError


def rank_world() -> tuple[int, int, int]:
    """``(rank, local_rank, world_size)`` from the launcher's environment; ``(0, 0, 1)`` without one."""

    def env_int(name: str, default: int) -> int:
        value = os.environ.get(name, "")
        try:
            return int(value) if value else default
        except ValueError:
            raise ValueError(f"environment {name}: must be an integer, got {value!r}") from None

    world = env_int("WORLD_SIZE", 1)
    rank, local = env_int("RANK", 0), env_int("LOCAL_RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"environment RANK={rank}, WORLD_SIZE={world}: need 0 ≤ RANK < WORLD_SIZE")
    return rank, local, world


def rank_device(arg: str | None, local_rank: int) -> str:
    """The device of the rank with ``local_rank``: ``auto``/``cuda`` mean its own GPU (``cuda:LOCAL_RANK``),
    so N ranks on a node use N GPUs instead of all landing on ``cuda:0``; ``cpu`` stays ``cpu``, and an
    explicit ``cuda:N`` is taken as given."""
    device = cli_args.resolve_device(arg)
    return f"cuda:{local_rank}" if device == "cuda" else device


def shard(records: list[Any], batch_size: int, rank: int, world: int) -> list[Any]:
    """The records rank ``rank`` evaluates: the one-process batches ``i`` with ``i % world == rank``,
    concatenated. Only the last batch of all can be short, so batching this list again by
    ``batch_size`` gives back exactly those batches."""
    if batch_size < 1:
        raise UserError(f"batch_size: must be ≥ 1, got {batch_size}")
    starts = range(0, len(records), batch_size)
    return [r for start in starts[rank::world] for r in records[start : start + batch_size]]


def merge(per_rank: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The ranks' scored batches (each rank's in its own order) as the one-process batch list: the
    ``j``-th batch of rank ``r`` is batch ``j * world + r`` (:func:`shard`). Renumbered globally."""
    world = len(per_rank)
    merged: dict[int, dict[str, Any]] = {}
    for rank, batches in enumerate(per_rank):
        for j, batch in enumerate(batches):
            merged[j * world + rank] = {**batch, "batch": j * world + rank}
    if sorted(merged) != list(range(len(merged))):
        raise RuntimeError(f"merge: the ranks' batches leave gaps: {sorted(merged)}")
    return [merged[i] for i in range(len(merged))]


def shard_log(results: Path, rank: int, world: int) -> Path:
    """A rank's own per-batch log beside the report (``report.rank1-of-4.jsonl``), what its ``--resume``
    reads: ranks never write one file, and a rerun with another world size does not mix shards."""
    return results.with_name(f"{results.stem}.rank{rank}-of-{world}{results.suffix}")


__all__ = ["merge", "rank_device", "rank_world", "shard", "shard_log"]
