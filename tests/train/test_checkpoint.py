"""Checkpoints: safetensors directories that load back to the same generations."""

from __future__ import annotations

import os

import pytest
import yaml

import vedas
from vedas.config import ConfigError, LatentConfig
from vedas.model import VedasModel


def test_save_load_round_trip(tiny, batch3, tmp_path):
    vm = VedasModel(*tiny, LatentConfig(latents=2, replay_k=5, max_new_tokens=5))
    path = vm.save(tmp_path / "ckpt")
    files = {p.name for p in path.rglob("*")}
    assert "config.yaml" in files and "model.safetensors" in files
    assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in files), "nothing is pickled"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temp dir left behind"
    meta = yaml.safe_load((path / "config.yaml").read_text())
    assert meta["latent"]["latents"] == 2
    again = vedas.load(path)
    assert again.config == vm.config
    images, questions, choices = batch3
    a = vm.generate(images, questions, choices, return_details=True)
    b = again.generate(images, questions, choices, return_details=True)
    assert a.token_ids == b.token_ids and a.replay_indices == b.replay_indices
    assert b.latents.shape[1] == 2  # the checkpoint's count, unless --latents overrides it
    assert again.generate(images, questions, choices, latents=1, return_details=True).latents.shape[1] == 1


def test_save_replaces_an_existing_checkpoint_atomically(tiny, tmp_path):
    vm = VedasModel(*tiny, LatentConfig(latents=1))
    vm.save(tmp_path / "ckpt")
    vm.config = LatentConfig(latents=3)
    vm.save(tmp_path / "ckpt")
    assert vedas.load(tmp_path / "ckpt").config.latents == 3
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]


def test_load_a_base_hf_directory_adds_latent_tokens(tiny, tmp_path):
    model, processor = tiny
    model.save_pretrained(tmp_path, safe_serialization=True)
    processor.save_pretrained(tmp_path)
    vm = vedas.load(tmp_path, latents=2)
    assert vm.config.latents == 2 and vm.token_ids == VedasModel(*tiny).token_ids


def test_bad_override_names_the_field(tiny, tmp_path):
    VedasModel(*tiny).save(tmp_path / "c")
    with pytest.raises(ConfigError, match="unknown key"):
        vedas.load(tmp_path / "c", lantents=2)
