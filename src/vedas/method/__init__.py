"""The paper's ideas (and GAP's), each the plug-in for one of the engine's or the recipe's extension points.

:data:`TRAINING_HOOKS` is what the recipe (:mod:`vedas.train.recipe`) calls at its extension points:
the difficulty split, modules fit before training, each record's supervision, and state saved with
every checkpoint. The recipe never names a method module.
"""

from __future__ import annotations

from typing import Any


def training_hooks() -> list[Any]:
    """The training hooks, in the order they run (imported here, on first use: GAP pulls in torch)."""
    from vedas.method.gap import TrainingHooks

    return [TrainingHooks()]
