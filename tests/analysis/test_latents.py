"""``vedas analyze latents``: the projection and distances against direct computations, and the command."""

from __future__ import annotations

import importlib.util
import itertools
import json

import numpy as np
import pytest
import torch

import vedas
from vedas.analysis.latents import distances, pca_2d
from vedas.cli import main


def test_pca_matches_numpy_svd():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 6, generator=g) * torch.tensor([5.0, 3.0, 1.0, 0.5, 0.2, 0.1])
    coords, share = pca_2d(x)
    xc = x.double().numpy() - x.double().numpy().mean(0)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    expected = xc @ vt[:2].T
    for j in range(2):  # same axes up to sign
        assert np.allclose(np.abs(coords[:, j].numpy()), np.abs(expected[:, j]), atol=1e-9)
    assert np.allclose(share.numpy(), (s**2)[:2] / (s**2).sum())
    # pairwise distances in 2-D equal the distances of the direct projection
    d_ours = torch.cdist(coords, coords, compute_mode="donot_use_mm_for_euclid_dist").numpy()
    d_direct = np.linalg.norm(expected[:, None] - expected[None], axis=-1)
    assert np.allclose(d_ours, d_direct, atol=1e-9)


def test_distances_against_brute_force():
    g = torch.Generator().manual_seed(1)
    groups = {"a": torch.randn(5, 3, generator=g), "b": torch.randn(4, 3, generator=g) + 2}
    d = distances(groups)
    a, b = groups["a"].double(), groups["b"].double()
    within_a = np.mean([float((a[i] - a[j]).norm()) for i, j in itertools.permutations(range(5), 2)])
    between = np.mean([float((x - y).norm()) for x in a for y in b])
    assert d["within"]["a"] == pytest.approx(within_a)
    assert d["between"]["a-b"] == pytest.approx(between)
    assert d["centroid"]["a-b"] == pytest.approx(float((a.mean(0) - b.mean(0)).norm()))
    assert d["mean_norm"]["b"] == pytest.approx(float(b.norm(dim=1).mean()))
    assert d["count"] == {"a": 5, "b": 4}


def test_latents_command(checkpoint, synth_dir, test_records, tmp_path, assert_png, capsys):
    out = tmp_path / "lat"
    argv = ["analyze", "latents", "--checkpoint", str(checkpoint), "--data", f"synthetic:{synth_dir}"]
    # the latents come before decoding: two new tokens are enough
    flags = ["--n", "4", "--batch-size", "4", "--max-new-tokens", "2", "--no-progress"]
    assert main([*argv, *flags, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "centroid distance:" in printed and "mean pairwise distance within:" in printed
    assert_png(out / "latents.png", min_w=600, min_h=250)
    report = json.loads((out / "latents.json").read_text())
    dist = report["distances"]
    assert dist["count"]["latent"] == 4 * 2 and report["latents"] == 2
    # the latents as a plain generate call produces them (an independent run)
    vm = vedas.load(checkpoint)
    recs = test_records[:4]
    images, questions, choices = (
        [r.images for r in recs],
        [r.question for r in recs],
        [r.choices for r in recs],
    )
    d = vm.generate(images, questions, choices, return_details=True, max_new_tokens=2)
    lat = d.latents.reshape(-1, d.latents.shape[-1]).double()
    assert dist["mean_norm"]["latent"] == pytest.approx(float(lat.norm(dim=1).mean()), rel=1e-5)
    assert dist["within"]["latent"] == pytest.approx(float(torch.pdist(lat).mean()), rel=1e-5)
    # the text group is the distinct text tokens' input embeddings: its norms come from the embedding table
    assert dist["count"]["text"] > 10
    # the 2-D numbers are those of the coordinates written beside them
    coords = {k: torch.tensor(v, dtype=torch.float64) for k, v in report["coords"].items()}
    assert report["projected"]["centroid"]["text-latent"] == pytest.approx(
        float((coords["text"].mean(0) - coords["latent"].mean(0)).norm())
    )
    assert len(report["latent_steps"]) == 2
    assert 0 < report["explained_variance"][1] <= report["explained_variance"][0] <= 1


@pytest.mark.skipif(importlib.util.find_spec("sklearn") is not None, reason="scikit-learn is installed")
def test_tsne_without_sklearn_names_the_flag(checkpoint, synth_dir, tmp_path, capsys):
    argv = ["analyze", "latents", "--checkpoint", str(checkpoint), "--data", f"synthetic:{synth_dir}"]
    assert main([*argv, "--out", str(tmp_path), "--projection", "tsne"]) == 2
    assert "--projection: t-SNE needs scikit-learn" in capsys.readouterr().err
