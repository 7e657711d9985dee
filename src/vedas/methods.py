"""The methods, named once, as values: every CLI ``--method`` choice, config check and mode test reads
the :class:`Method` of a name here instead of comparing strings.

| method   | training                                   | inference                               |
|----------|--------------------------------------------|-----------------------------------------|
| no_cot   | the answer sentence only                   | plain greedy decoding                   |
| cot      | every reasoning step, then the answer      | plain greedy decoding                   |
| latent   | curriculum: steps become latent steps with visual replay (IVT-LR-style baseline) | latent steps + replay |
| vedas    | ``latent`` + SCF-VR (+ routing depth scaling when configured) | latent steps + replay (+ routing) |

The ablation's variants are presets too (:data:`PRESETS`): each is one of the four trained modes
with some of the paper's ideas switched off, so the paper's Table 3 grid is this table, and
:meth:`Method.train_fields` is the one place that says which config fields a preset sets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

MethodName = Literal["no_cot", "cot", "latent", "vedas"]
"""The four trained modes: what ``method`` in a training config and ``mode`` of ``generate`` take."""

METHODS: tuple[str, ...] = ("no_cot", "cot", "latent", "vedas")
"""Every mode, baselines first (the order of tables and ``--help``)."""


@dataclass(frozen=True)
class Method:
    """One method: which trained mode it runs and which of the paper's ideas it uses."""

    name: str
    mode: str
    """The trained mode (one of :data:`METHODS`): the recipe's ``method`` and ``generate``'s ``mode``."""
    rationale: bool = True
    """Trains on the written rationale (``no_cot``: on the answer sentence alone)."""
    latent: bool = False
    """Reasons in latent steps (the curriculum turns written steps into latents)."""
    replay: Literal["attention", "random", "none"] = "none"
    """How each latent step picks its visual tokens: by attention (the method), at random (a
    control: ``replay_select: random``) or none (K = 0)."""
    scfvr: bool = False
    """The SCF-VR self-distillation loss trains (else its weight is 0)."""
    routing: bool = False
    """Routing depth scaling runs where routers are configured (training) or installed (inference)."""
    help: str = ""

    def train_fields(self) -> dict[str, Any]:
        """The training-config fields this preset sets beyond ``method`` (empty for the four modes)."""
        fields: dict[str, Any] = {}
        if self.replay == "random":
            fields["latent.replay_select"] = "random"
        if self.latent and self.replay == "none":
            fields["latent.replay_k"] = 0
        if self.mode == "vedas" and not self.scfvr:
            fields["scfvr.weight"] = 0.0
        if self.mode == "vedas" and not self.routing:
            fields["routing"] = None
        return fields


PRESETS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("no_cot", "no_cot", rationale=False, help="the answer sentence only"),
        Method("cot", "cot", help="explicit CoT: every reasoning step, then the answer"),
        Method(
            "latent", "latent", latent=True, replay="attention", help="curriculum + attention-guided replay"
        ),
        Method(
            "vedas",
            "vedas",
            latent=True,
            replay="attention",
            scfvr=True,
            routing=True,
            help="latent + SCF-VR + routing depth scaling (the paper's method)",
        ),
        # the ablation (the paper's Table 3 and two replay controls)
        Method(
            "latent+rds",
            "vedas",
            latent=True,
            replay="attention",
            routing=True,
            help="+ routing depth scaling",
        ),
        Method("latent+scfvr", "vedas", latent=True, replay="attention", scfvr=True, help="+ SCF-VR loss"),
        Method(
            "random_replay", "latent", latent=True, replay="random", help="K random unvisited tokens replayed"
        ),
        Method("no_replay", "latent", latent=True, help="no replay (K = 0)"),
    )
}
"""Every method by name: the four modes first, then the ablation's variants of them."""

LATENT_METHODS: tuple[str, ...] = tuple(m for m in METHODS if PRESETS[m].latent)
"""The modes that run latent steps with visual replay."""


def method(name: str) -> Method:
    """The :class:`Method` named ``name`` (a mode or an ablation preset); a ValueError names the choices."""
    if name not in PRESETS:
        raise ValueError(f"method={name!r}: choose one of {list(PRESETS)}")
    return PRESETS[name]


def is_latent(method: str) -> bool:
    return PRESETS[method].latent if method in PRESETS else False


def check_method(method: str, name: str = "method") -> str:
    """``method`` if it is one of :data:`METHODS`, else a ValueError naming ``name`` and the choices."""
    if method not in METHODS:
        raise ValueError(f"{name}={method!r}: choose one of {list(METHODS)}")
    return method
