"""The methods as values: the preset table is the ablation's grid, and each preset sets exactly the
old config fields the ablation used to set by hand (so old configs and checkpoints keep their meaning)."""

from __future__ import annotations

import dataclasses

import pytest

from vedas.config import LatentConfig
from vedas.method.routing import RoutingConfig
from vedas.method.scfvr import SCFVRConfig
from vedas.methods import LATENT_METHODS, METHODS, PRESETS, method
from vedas.train.config import TrainConfig, for_method


def vedas_config() -> TrainConfig:
    return TrainConfig(
        method="vedas",
        latent=LatentConfig(latents=2, replay_k=3),
        scfvr=SCFVRConfig(window=3, weight=1.0),
        routing=RoutingConfig(layers="all", alpha=8, depth=1),
    )


def test_the_four_modes_are_presets_of_themselves_and_set_nothing_else() -> None:
    for name in METHODS:
        m = method(name)
        assert m.mode == name and m.train_fields() == {}
    assert LATENT_METHODS == ("latent", "vedas")
    assert [n for n in PRESETS if PRESETS[n].latent] == [
        "latent", "vedas", "latent+rds", "latent+scfvr", "random_replay", "no_replay"
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "mode", "routing", "scfvr_weight", "replay_select", "replay_k"),
    [
        ("vedas", "vedas", True, 1.0, "attention", 3),
        ("latent+rds", "vedas", True, 0.0, "attention", 3),
        ("latent+scfvr", "vedas", False, 1.0, "attention", 3),
        ("random_replay", "latent", False, 1.0, "random", 3),
        ("no_replay", "latent", False, 1.0, "attention", 0),
    ],
)
def test_each_ablation_preset_maps_to_the_old_fields(
    name: str, mode: str, routing: bool, scfvr_weight: float, replay_select: str, replay_k: int
) -> None:
    base = vedas_config()
    if mode == "latent":  # routing belongs to mode vedas: a latent run is configured without it
        base = dataclasses.replace(base, method="latent", routing=None)
    cfg = for_method(base, PRESETS[name])
    assert cfg.method == mode
    assert (cfg.routing is not None) == routing
    assert cfg.scfvr.weight == scfvr_weight
    assert (cfg.latent.replay_select, cfg.latent.replay_k) == (replay_select, replay_k)
    # everything else is the base config's
    assert (
        dataclasses.replace(
            cfg, method=base.method, routing=base.routing, scfvr=base.scfvr, latent=base.latent
        )
        == base
    )


def test_an_unknown_method_is_a_one_line_error_naming_the_choices() -> None:
    with pytest.raises(ValueError, match=r"method='latent\+x': choose one of \['no_cot', 'cot'"):
        method("latent+x")
