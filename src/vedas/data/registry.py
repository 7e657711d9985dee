"""``vedas.data.load``: one entry point over every dataset loader, by name.

    from vedas.data import load
    ds = load("m3cot", path="M3CoT/", split="test", limit=100)
    ds.summary            # {"read": 100, "loaded": 100}
    ds[0].question, ds[0].answer, ds[0].steps

Names (aliases in brackets): ``m3cot``, ``scienceqa`` [``sqa``], ``gqa``, ``mmstar``,
``mmvp``, ``onethinker``, ``easy_vqa`` [``easy-vqa``, ``easyvqa``], ``synthetic``
[``synth``]. Every dataset but easy-vqa needs ``path=``: no hub is reached from here.
Loader modules are imported on first use, so ``import vedas.data`` stays light.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from vedas.data.record import Dataset
from vedas.errors import UserError

# name -> (module, hub id or where the data comes from)
DATASETS: dict[str, tuple[str, str]] = {
    "m3cot": ("vedas.data.m3cot", "LightChen2333/M3CoT"),
    "scienceqa": ("vedas.data.scienceqa", "derek-thomas/ScienceQA"),
    "gqa": ("vedas.data.gqa", "lmms-lab/GQA"),
    "mmstar": ("vedas.data.mmstar", "Lin-Chen/MMStar"),
    "mmvp": ("vedas.data.mmvp", "lmms-lab-eval/MMVP"),
    "onethinker": ("vedas.data.onethinker", "OneThink/OneThinker-train-data"),
    "easy_vqa": ("vedas.data.easyvqa", "the easy-vqa PyPI package"),
    "synthetic": ("vedas.data.m3cot", "`vedas data synth --out DIR`"),
}
ALIASES = {"sqa": "scienceqa", "easy-vqa": "easy_vqa", "easyvqa": "easy_vqa", "synth": "synthetic"}


def canonical_name(name: str) -> str:
    """The registry name for ``name`` or an alias; ValueError listing valid names."""
    key = ALIASES.get(name.lower(), name.lower())
    if key not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    return key


def split_spec(spec: str) -> tuple[str, str | None]:
    """``"NAME[:PATH]"`` (the command-line form) -> (name, path or None)."""
    name, _, path = spec.partition(":")
    return name, path or None


def load(
    name: str,
    path: str | Path | None = None,
    split: str = "test",
    limit: int | None = None,
    skip_bad: bool = False,
) -> Dataset:
    """Load one split of a dataset as canonical records.

    Args:
        name: a dataset name or alias (module docstring).
        path: the dataset's folder or file (HF snapshot, raw release, or synthetic output
            folder); must be None for easy-vqa, which ships inside its package.
        split: split name; dataset modules map the usual aliases (``test`` is GQA's
            ``testdev_balanced``, MMStar's ``val``, M3CoT's raw ``dev`` is ``validation``).
        limit: stop after this many records (rows skipped on the way are still counted).
        skip_bad: skip rows with a missing field or an unreadable image instead of raising;
            they are counted in ``summary`` and listed in ``skipped``.

    Returns:
        A :class:`~vedas.data.record.Dataset` (a list of records with ``summary``).

    Raises:
        ValueError: unknown name, bad ``limit``, or a path where none is allowed.
        FileNotFoundError: no data file for the split under ``path``.
        DataError: a bad row, when ``skip_bad`` is False; it names the row and the field
            or file.
    """
    key = canonical_name(name)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise UserError(f"limit must be a positive integer or None, got {limit!r}")
    module = importlib.import_module(DATASETS[key][0])
    if key == "easy_vqa":
        return module.load(path, split=split, limit=limit, skip_bad=skip_bad)
    if path is None:
        raise UserError(
            f"{key}: pass path= (a local folder or file); download {DATASETS[key][1]} first, "
            "no dataset hub is reached from vedas.data.load"
        )
    if key == "synthetic":
        return module.load(path, split=split, limit=limit, skip_bad=skip_bad, name="synthetic")
    return module.load(path, split=split, limit=limit, skip_bad=skip_bad)
