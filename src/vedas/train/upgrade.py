"""``python -m vedas.train.upgrade checkpoints/step-N …``: give a step-N saved before checkpoints
described themselves its model description (:mod:`vedas.train.describe`), so ``vedas.load`` reads it
without the recipe. The one place that still rebuilds a run's model from its training config."""

from __future__ import annotations

import sys
from pathlib import Path

from vedas.checkpoint import STEP_MODEL_FILE
from vedas.errors import CheckpointError
from vedas.train import describe


def describe_old(directory: Path) -> Path:
    """Rebuild ``directory``'s model with :func:`vedas.train.recipe.load_step` (which may read the run's
    training data) and write it whole beside the training state; the training files stay as they were,
    so a resume from it is unchanged. Returns the description written."""
    from vedas.train.recipe import load_step

    if not (directory / "state.json").is_file():
        raise CheckpointError(f"{directory}: no state.json, not a training checkpoint (step-N)")
    if (directory / STEP_MODEL_FILE).is_file():
        return directory / STEP_MODEL_FILE
    vm = load_step(directory)
    describe.write_whole(directory, vm, vm.trained)
    return directory / STEP_MODEL_FILE


def main(argv: list[str] | None = None) -> int:
    dirs = sys.argv[1:] if argv is None else argv
    if not dirs:
        print("usage: python -m vedas.train.upgrade checkpoints/step-N [...]", file=sys.stderr)
        return 2
    for d in dirs:
        try:
            print(f"wrote {describe_old(Path(d))}")
        except CheckpointError as e:
            print(f"vedas.train.upgrade: {e}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
