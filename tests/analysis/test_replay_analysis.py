"""``vedas analyze replay``: cell labels from a known layout, hit shares of a constructed selection,
the oracle/anti probe selections, and the command on a trained checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vedas.analysis.replay import (
    EMPTY,
    OTHER,
    RELEVANT,
    RelevanceReplay,
    SynthRelevance,
    auc,
    cell_labels,
    layer_aucs,
    selection_stats,
)
from vedas.cli import main
from vedas.data import synth


def _scene() -> synth.Scene:
    # 112 px on a 4 x 4 grid: 28-px cells; shapes 8 px wide (half-side 4)
    shapes = [
        synth.Shape("red", "square", 14, 14),  # cell (0, 0), asked about
        synth.Shape("blue", "circle", 70, 98),  # cell (3, 2), a distractor
        synth.Shape("red", "square", 56, 42),  # on the column boundary 56: cells (1, 1) and (1, 2)
    ]
    return synth.Scene("sum", shapes, None, [0, 2], size=112, shape_size=8)


def test_cell_labels_of_a_known_layout():
    labels = cell_labels(_scene(), 4, 4)
    expect = np.zeros((4, 4), dtype=int)
    expect[0, 0] = expect[1, 1] = expect[1, 2] = RELEVANT
    expect[3, 2] = OTHER
    assert labels.tolist() == expect.tolist()
    # a locate question: the cross counts as relevant too
    cross = synth.Scene("locate", _scene().shapes[:2], (100.0, 10.0), [1], size=112, shape_size=8)
    lab = cell_labels(cross, 4, 4)
    assert lab[0, 3] == RELEVANT and lab[3, 2] == RELEVANT and lab[0, 0] == OTHER


def test_relevant_hit_share_of_a_constructed_selection():
    labels = cell_labels(_scene(), 4, 4)
    # raster indices on the 4 x 4 grid: 0 = (0,0) relevant, 14 = (3,2) other, 5 = (1,1) relevant,
    # 15 = (3,3) empty; step 2 picks 6 = (1,2) relevant and 3 = (0,3) empty
    picks = [[0, 14, 5, 15], [6, 3]]
    stats = selection_stats([(picks, labels), ([[1, 2]], None)])  # an unlabelled sample is left out
    one, two = stats
    assert one["samples"] == 1 and one["picks"] == 4
    assert one["share"] == {"relevant": 0.5, "other": 0.25, "empty": 0.25}
    assert one["cell_share"] == {"relevant": 3 / 16, "other": 1 / 16, "empty": 12 / 16}
    assert one["row_share"] == [0.25, 0.25, 0.0, 0.5] and one["col_share"] == [0.25, 0.25, 0.25, 0.25]
    assert one["first_or_last_row_share"] == 0.75
    assert two["share"] == {"relevant": 0.5, "other": 0.0, "empty": 0.5}
    assert two["first_or_last_row_share"] == 0.5


def test_auc_against_a_hand_count():
    # pairs (pos > neg): 3 > 1, 3 > 2, 2 > 1, 2 = 2 (half): 3.5 of 4
    assert auc(np.array([3.0, 2.0]), np.array([1.0, 2.0])) == 3.5 / 4
    assert auc(np.array([1.0]), np.array([])) is None


def test_per_layer_and_per_head_auc_on_a_known_layout():
    """On the known 4 x 4 layout: a layer whose heads both rank relevant cells above empty ones has
    AUC 1, a layer ranking them the other way 0, and a head that sees nothing (flat) 0.5 beside a
    perfect head; an unlabelled sample and a padded one are left out of the means."""
    labels = cell_labels(_scene(), 4, 4).reshape(-1)
    good = np.where(labels == RELEVANT, 0.3, np.where(labels == OTHER, 0.2, 0.01))
    rows = np.zeros((3, 3, 2, 17))  # 3 samples, 3 layers, 2 heads, 16 tokens + 1 padded slot
    rows[:, 0, :, :16] = 0.4 - good  # layer 0: relevant lowest
    rows[:, 1, :, :16] = good  # layer 1: both heads right
    rows[:, 2, 0, :16] = good  # layer 2: head 0 right, head 1 flat
    rows[:, 2, 1, :16] = 0.05
    rows[2, :, :, :] = 1.0 - rows[2]  # the third sample is unlabelled: its reversed map must not count
    layers, heads = layer_aucs(
        rows, [16, 16, 16], [cell_labels(_scene(), 4, 4), cell_labels(_scene(), 4, 4), None]
    )
    assert layers == [0.0, 1.0, 1.0]  # layer 2's head mean still ranks relevant first
    assert heads == [[0.0, 0.0], [1.0, 1.0], [1.0, 0.5]]
    only_layers, none = layer_aucs(rows.mean(2), [16, 16, 16], [None, cell_labels(_scene(), 4, 4), None])
    assert only_layers == [0.0, 1.0, 1.0] and none is None


def test_oracle_and_anti_keys_put_relevant_or_empty_cells_first():
    from vedas.engine import replay
    from vedas.engine.replay import VisualTokens

    labels = cell_labels(_scene(), 4, 4)
    scores = torch.rand(1, 16, generator=torch.Generator().manual_seed(0)) / 16
    valid = torch.ones(1, 16, dtype=torch.bool)
    vis = VisualTokens(
        torch.arange(16)[None], valid, torch.randn(1, 16, 4), torch.zeros(3, 1, 16, dtype=torch.long)
    )
    flat = labels.reshape(-1)
    for order, want in (("oracle", RELEVANT), ("anti", EMPTY)):
        keys = RelevanceReplay([labels], order).keys(scores, valid)
        rep = replay.build(scores, vis, torch.zeros(1, 16, dtype=torch.bool), 3, keys=keys)
        assert all(flat[i] == want for i in rep.index[0].tolist()), order
        # the weights are still softmax over the picked tokens' attention
        assert torch.allclose(rep.weights[0], scores[0, rep.index[0]].softmax(0))
    oracle = RelevanceReplay([labels], "oracle").keys(scores, valid)[0]
    assert oracle.topk(3).indices.sort().values.tolist() == [0, 5, 6]
    with pytest.raises(ValueError, match="order='best'"):
        RelevanceReplay([labels], "best")


def test_regenerated_labels_match_the_written_pixels(synth_dir):
    """The layout regenerated from the seed is the one in the PNGs: no coloured or black pixel lies
    in a cell labelled empty, and every shape's centre cell shows its colour."""
    from PIL import Image

    rel = SynthRelevance(synth_dir)
    for line in (synth_dir / "test.jsonl").read_text().splitlines():
        row = json.loads(line)
        px = np.asarray(Image.open(synth_dir / row["image"]), dtype=int)
        labels = rel.labels(row["id"], 4, 4)
        assert labels is not None and px.shape[:2] == (112, 112)
        marked = (px.max(2) - px.min(2) > 60) | (px.max(2) < 60)  # shape colours or the black cross
        cells = marked.reshape(4, 28, 4, 28).any((1, 3))
        assert not (cells & (labels == EMPTY)).any(), row["id"]
        index = int(row["id"].rsplit("-", 1)[1])
        for s in synth.scene(index, "test", rel.seed, rel.cfg).shapes:
            assert marked[int(s.y), int(s.x)] and labels[int(s.y) // 28, int(s.x) // 28] != EMPTY
    assert rel.labels("not-synthetic", 4, 4) is None


def test_replay_command(checkpoint, synth_dir, tmp_path, assert_png, capsys):
    out = tmp_path / "replay"
    argv = ["analyze", "replay", "--checkpoint", str(checkpoint), "--data", f"synthetic:{synth_dir}"]
    assert main([*argv, "--n", "4", "--batch-size", "2", "--no-progress", "--out", str(out)]) == 0
    assert "step 1: relevant" in capsys.readouterr().out
    assert_png(out / "replay.png", min_w=600, min_h=250)
    report = json.loads((out / "replay.json").read_text())
    assert report["labelled"] == 4 and [s["step"] for s in report["steps"]] == [1, 2]
    for s in report["steps"]:  # K = 4 on 16 tokens, per sample
        assert s["picks"] == 16 and abs(sum(s["share"].values()) - 1) < 1e-9
        assert abs(sum(s["row_share"]) - 1) < 1e-9
    # the saliency rerun picked exactly what generate picked, so its attention is the choosing one
    assert report["saliency_samples_matching_generate"] == 4
    assert 0 <= report["steps"][0]["attention_auc"] <= 1
    first = report["steps"][0]
    assert len(first["layer_auc"]) == 2 and [len(h) for h in first["head_auc"]] == [
        4,
        4,
    ]  # 2 layers x 4 heads
    assert all(0 <= a <= 1 for a in first["layer_auc"]) and report["saliency"] == {}
    assert first["saliency_auc"] is None
    # step 1's attention on the image against eager output_attentions on the prompt (mean over layers
    # and heads of the last query's row, summed over the image-token positions the processor wrote)
    import vedas
    from vedas.data import load
    from vedas.engine.runners import eager_attention

    vm = vedas.load(str(checkpoint))
    records = list(load("synthetic", path=str(synth_dir), split="test"))[:4]
    ref = []
    for rec in records:  # one at a time: no padding
        batch = vm.prepare_records([rec], mode="latent")
        with eager_attention(vm.model), torch.no_grad():
            out = vm.model(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                pixel_values=batch.pixel_values,
                image_grid_thw=batch.image_grid_thw,
                mm_token_type_ids=batch.mm_token_type_ids,
                output_attentions=True,
            )
        row = torch.stack([a[0, :, -1, :] for a in out.attentions]).mean(dim=(0, 1))
        ref.append(float(row[batch.input_ids[0] == vm.model.config.image_token_id].sum()))
    assert first["image_attention"] == pytest.approx(float(np.mean(ref)), abs=1e-5)
    assert len(first["image_attention_layers"]) == 2 and 0 < first["image_attention"] < 1
    # the same checkpoint under a saliency option: the rerun follows the option's picks too
    opt = tmp_path / "replay_opt"
    flags = ["--replay-layers", "1", "--replay-debias", "rowcol", "--replay-random-share", "0.25"]
    assert main([*argv, "--n", "4", "--batch-size", "2", "--no-progress", "--out", str(opt), *flags]) == 0
    assert "saliency option: {'replay_layers': [1]" in capsys.readouterr().out
    option = json.loads((opt / "replay.json").read_text())
    assert option["saliency"] == {
        "replay_layers": [1],
        "replay_debias": "rowcol",
        "replay_random_share": 0.25,
    }
    assert option["saliency_samples_matching_generate"] == 4
    assert 0 <= option["steps"][0]["saliency_auc"] <= 1
    assert option["steps"][0]["layer_auc"] == pytest.approx(first["layer_auc"])  # step 1: the same prefill
    wrong = main([*argv, "--out", str(opt), "--replay-random-share", "2"])
    assert wrong == 2 and "--replay-random-share: must be a number in [0, 1]" in capsys.readouterr().err
    bad = main(
        ["analyze", "replay", "--checkpoint", str(checkpoint), "--data", "m3cot:/nowhere", "--out", str(out)]
    )
    assert bad == 2 and "--data: needs synthetic:PATH" in capsys.readouterr().err
