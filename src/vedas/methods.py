"""The four methods, named once: every CLI ``--method`` choice, config check and mode test uses these.

| method   | training                                   | inference                               |
|----------|--------------------------------------------|-----------------------------------------|
| no_cot   | the answer sentence only                   | plain greedy decoding                   |
| cot      | every reasoning step, then the answer      | plain greedy decoding                   |
| latent   | curriculum: steps become latent steps with visual replay (IVT-LR-style baseline) | latent steps + replay |
| vedas    | ``latent`` + SCF-VR (+ routing depth scaling when configured) | latent steps + replay (+ routing) |
"""

from __future__ import annotations

from typing import Literal

Method = Literal["no_cot", "cot", "latent", "vedas"]

METHODS: tuple[str, ...] = ("no_cot", "cot", "latent", "vedas")
"""Every method, baselines first (the order of tables and ``--help``)."""

LATENT_METHODS: tuple[str, ...] = ("latent", "vedas")
"""The methods that run latent steps with visual replay."""


def is_latent(method: str) -> bool:
    return method in LATENT_METHODS


def check_method(method: str, name: str = "method") -> str:
    """``method`` if it is one of :data:`METHODS`, else a ValueError naming ``name`` and the choices."""
    if method not in METHODS:
        raise ValueError(f"{name}={method!r}: choose one of {list(METHODS)}")
    return method
