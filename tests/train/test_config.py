"""Typed configs: unknown keys, wrong types and bad choices fail naming the field, also through `vedas train`."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from vedas.config import ConfigError, LatentConfig, apply_overrides, from_dict

ROOT = Path(__file__).resolve().parents[2]


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


# --- the training config through the real `vedas train` command line ------------------------------

TYPOS = [
    (["--routing.alpah", "3"], "routing.alpah"),
    (["--model.tiny.hiden", "64"], "model.tiny.hiden"),
    (["--model.tiny", "{hidden: big}"], "model.tiny.hidden: expected an integer"),
]


@pytest.mark.parametrize(("override", "field"), TYPOS, ids=lambda x: x if isinstance(x, str) else None)
def test_a_misspelt_field_stops_vedas_train_before_any_data_is_read(tmp_path, override, field):
    """The data path does not exist: if the config passed, the error would be about the data."""
    cmd = [sys.executable, "-m", "vedas.cli", "train", "--config", str(ROOT / "configs/synthetic_tiny.yaml")]
    cmd += ["--data.path", str(tmp_path / "missing"), "--run.output_dir", str(tmp_path / "run"), *override]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr[-2000:]
    assert res.stderr.startswith("vedas train: bad config: ") and field in res.stderr
    assert "missing" not in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("override", "field"), TYPOS, ids=lambda x: x if isinstance(x, str) else None)
def test_print_config_rejects_a_misspelt_field(capsys, override, field):
    from vedas.cli import main

    assert (
        main(["train", "--config", str(ROOT / "configs/synthetic_tiny.yaml"), "--print-config", *override])
        == 2
    )
    captured = capsys.readouterr()
    assert field in captured.err and captured.out == ""


def test_routing_and_tiny_sizes_are_typed():
    from vedas.method.routing import RoutingConfig
    from vedas.train.config import ModelConfig, load_config

    cfg = load_config(
        str(ROOT / "configs/synthetic_tiny.yaml"), ["--routing.alpha", "4", "--model.tiny.layers", "3"]
    )
    assert cfg.routing == RoutingConfig(alpha=4) and cfg.model.tiny["layers"] == 3
    with pytest.raises(ConfigError, match=r"^routing.alpha: a token count must be ≥ 1"):
        load_config(None, ["--routing.alpha", "0"])
    with pytest.raises(ConfigError, match=r"^model.tiny.seed: unknown key"):  # the recipe passes optim.seed
        load_config(None, ["--model.tiny.seed", "3"])
    with pytest.raises(ConfigError, match=r"^tiny.hiden: unknown key"):  # built directly, as the demo does
        ModelConfig(tiny={"hiden": 64})


@pytest.mark.parametrize(
    "text, key, lines",
    [
        ("method: vedas\noptim:\n  lr: 1e-3\n  batch_size: 4\n  lr: 2e-3\n", "lr", (3, 5)),
        ("method: vedas\nmethod: cot\n", "method", (1, 2)),
        ("latent: {latents: 2, latents: 4}\n", "latents", (1, 1)),
    ],
)
def test_a_duplicate_yaml_key_is_refused_naming_it_and_both_lines(tmp_path, text, key, lines):
    """PyYAML keeps the last of two equal keys silently; a config that says lr twice is a mistake."""
    from vedas.config import load_yaml

    path = tmp_path / "dup.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"duplicate key '{key}' \(lines {lines[0]} and {lines[1]}\)") as e:
        load_yaml(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_yaml_merge_keys_and_repeated_keys_in_sibling_mappings_still_load(tmp_path):
    from vedas.config import load_yaml

    path = tmp_path / "ok.yaml"
    path.write_text("base: &b {lr: 1}\noptim:\n  <<: *b\n  batch_size: 4\nrun:\n  lr: 2\n")
    assert load_yaml(path) == {"base": {"lr": 1}, "optim": {"lr": 1, "batch_size": 4}, "run": {"lr": 2}}
