"""``vedas analyze crops`` and ``vedas infer --show-replay``: the figure, and its numbers checked by hand."""

from __future__ import annotations

import json
import math

import pytest

import vedas
from vedas.cli import main


def _densest_window(cells, gh, gw, w):
    """Brute force: the first (row-major) W×W window holding most cells."""
    wh, ww = min(w, gh), min(w, gw)
    best, arg = -1, None
    for r in range(gh - wh + 1):
        for c in range(gw - ww + 1):
            n = sum(r <= y < r + wh and c <= x < c + ww for y, x in cells)
            if n > best:
                best, arg = n, (r, c, wh, ww)
    return arg, best


def test_crops_command_matches_a_plain_generate_and_brute_force_windows(
    checkpoint, synth_dir, test_records, tmp_path, assert_png, capsys
):
    out = tmp_path / "crops"
    argv = ["analyze", "crops", "--checkpoint", str(checkpoint), "--data", f"synthetic:{synth_dir}"]
    flags = ["--n", "3", "--batch-size", "2", "--max-new-tokens", "8", "--no-progress"]
    assert main([*argv, *flags, "--out", str(out)]) == 0
    assert "share of replayed tokens inside the crop window" in capsys.readouterr().out
    assert_png(out / "crops.png", min_w=400, min_h=400)
    report = json.loads((out / "crops.json").read_text())
    assert report["latents"] == 2 and report["replay_k"] == 4 and len(report["samples"]) == 3

    # an independent run: the replayed indices of a plain generate call, one sample at a time
    vm = vedas.load(checkpoint)
    for rec, sample in zip(test_records[:3], report["samples"]):
        d = vm.generate([rec.images], [rec.question], [rec.choices], return_details=True, max_new_tokens=8)
        assert sample["id"] == rec.id and sample["prediction"] == d.texts[0]
        assert [s["indices"] for s in sample["steps"]] == d.replay_indices[0]
        (gh, gw), (w, h) = sample["grids"][0], sample["image_sizes"][0]
        seen = set()
        for step in sample["steps"]:
            assert len(step["indices"]) == 4 and not seen & set(step["indices"])  # K tokens, never revisited
            seen |= set(step["indices"])
            # one image: visual token i sits at raster cell (i // G_w, i % G_w)
            assert [tuple(c) for c in step["cells"]] == [(i // gw, i % gw) for i in step["indices"]]
            window, inside = _densest_window([tuple(c) for c in step["cells"]], gh, gw, 3)
            assert tuple(step["window"]) == window and step["inside"] == inside
            r, c, wh, ww = window
            box = (
                math.floor(r * h / gh),
                math.floor(c * w / gw),
                math.ceil((r + wh) * h / gh),
                math.ceil((c + ww) * w / gw),
            )
            assert tuple(step["box"]) == box


def test_infer_show_replay_draws_one_sample(checkpoint, test_records, tmp_path, assert_png, capsys):
    image = tmp_path / "img.png"
    test_records[0].images[0].save(image)
    png = tmp_path / "replay.png"
    argv = ["infer", "--checkpoint", str(checkpoint), "--image", str(image), "--question", "How many?"]
    assert main([*argv, "--choices", "1", "2", "--show-replay", str(png), "--max-new-tokens", "4"]) == 0
    assert f"wrote {png}" in capsys.readouterr().out
    assert_png(png, min_w=300, min_h=150)


@pytest.mark.parametrize(
    ("extra", "flag"),
    [(["--method", "no_cot"], "--show-replay"), (["--replay-window", "0"], "--replay-window")],
)
def test_infer_show_replay_rejects_bad_flags_before_loading(tmp_path, capsys, extra, flag):
    argv = ["infer", "--checkpoint", str(tmp_path / "missing"), "--image", "x.png", "--question", "Q?"]
    assert main([*argv, "--show-replay", str(tmp_path / "r.png"), *extra]) == 2
    assert f"vedas infer: {flag}:" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("change", "flag"),
    [
        ({"--n": "0"}, "--n"),
        ({"--data": "nosuchset:x"}, "--data"),
        ({"--window": "0"}, "--window"),
        ({"--checkpoint": "/nonexistent/ckpt"}, "--checkpoint"),
        ({"--scoring": "lenient"}, "--scoring"),
    ],
)
def test_crops_bad_arguments_name_the_flag(checkpoint, synth_dir, tmp_path, capsys, change, flag):
    args = {
        "--checkpoint": str(checkpoint),
        "--data": f"synthetic:{synth_dir}",
        "--out": str(tmp_path),
        "--n": "1",
        **change,
    }
    argv = ["analyze", "crops"] + [x for kv in args.items() for x in kv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"vedas analyze crops: {flag}"), err
    assert not (tmp_path / "crops.png").exists()
