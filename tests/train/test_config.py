"""Typed configs: unknown keys, wrong types and bad choices fail naming the field."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from vedas.config import ConfigError, LatentConfig, apply_overrides, from_dict


@dataclass
class Outer:
    latent: LatentConfig = field(default_factory=LatentConfig)
    lr: float = 1e-4
    layers: list[int] | None = None


def test_from_dict_builds_nested_and_coerces():
    cfg = from_dict(Outer, {"latent": {"latents": 2, "replay_mode": "soft_mix"}, "lr": 3, "layers": [1, 3]})
    assert (
        cfg.latent.latents == 2
        and cfg.latent.replay_mode == "soft_mix"
        and cfg.lr == 3.0
        and cfg.layers == [1, 3]
    )


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"latent": {"latentz": 2}}, r"unknown key\(s\) \['latent.latentz'\]"),
        ({"latent": {"latents": "four"}}, r"latent.latents: expected an integer"),
        ({"latent": {"replay_mode": "all"}}, r"latent.replay_mode: must be one of \['topk', 'soft_mix'\]"),
        ({"latent": {"latents": -1}}, r"latent.latents: must be an int ≥ 0"),
        ({"lr": "fast"}, r"lr: expected a number"),
        ({"layers": [1, "x"]}, r"layers\[1\]"),
        ({"latent": {"replay_positions": "original", "replay_mode": "soft_mix"}}, r"latent.replay_positions"),
    ],
)
def test_bad_values_name_the_field(data, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(Outer, data)


def test_overrides_parse_yaml_scalars():
    data = apply_overrides(
        {"latent": {"latents": 4}}, ["--latent.latents", "2", "--lr=1e-5", "--latent.replay-k", "8"]
    )
    cfg = from_dict(Outer, data)
    assert cfg.latent.latents == 2 and cfg.lr == 1e-5 and cfg.latent.replay_k == 8
    with pytest.raises(ConfigError, match="missing value"):
        apply_overrides({}, ["--lr"])
