"""Datasets as canonical records: loaders for the real formats, the step splitter, the
synthetic benchmark.

    from vedas.data import load, split_steps
    ds = load("m3cot", path="M3CoT/", split="test", limit=8)
    print(ds.describe())          # what was loaded, read and skipped
    record = ds[0]                # Record(id, images, question, choices, answer, ...)

Modules: ``record`` (the record and the returned list), ``rows`` (row -> record policy),
``images`` (decoding to RGB), ``sources`` (finding and reading files), ``steps`` (the
rationale splitter), ``options`` (options written inside question text), one module per
dataset (``m3cot``, ``scienceqa``, ``gqa``, ``mmstar``, ``mmvp``, ``onethinker``,
``easyvqa``), ``synth`` (the synthetic benchmark), ``registry`` (``load`` by name) and
``cli`` (``vedas data``). Scoring rules live in :mod:`vedas.evaluation.scoring`.
"""

from vedas.data.record import DataError, Dataset, Record, SkipRow
from vedas.data.registry import DATASETS, load
from vedas.data.steps import split_steps

__all__ = ["DATASETS", "DataError", "Dataset", "Record", "SkipRow", "load", "split_steps"]
