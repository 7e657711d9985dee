"""``--synth KNOB=VALUE`` and ``--tiny KNOB=VALUE``: benchmark and tiny-model knobs on top of a preset
and a size, typed as a config file's, with errors naming the item."""

from __future__ import annotations

import argparse

import pytest

from vedas.errors import UserError
from vedas.experiments import sizes


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    sizes.add_preset(parser)
    for flag in ("--train", "--test", "--epochs", "--latent-epochs", "--max-new-tokens"):
        parser.add_argument(flag, type=int, default=None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--arch", default="qwen2_vl")
    return parser.parse_args(list(argv))


def test_synth_knobs_go_on_top_of_the_preset_with_their_types():
    size = sizes.sized(
        _args("--preset", "far", "--synth", "context_sentences=0", "texture=4", "fixed_kinds=false")
    )
    assert size.synth == {"context_sentences": 0, "texture": 4, "fixed_kinds": False}
    cfg = size.synth_config()
    assert (cfg.context_sentences, cfg.texture, cfg.fixed_kinds) == (0, 4, False)
    assert cfg.image_size == 504 and cfg.input_size == 168  # the rest is the preset's
    assert sizes.sized(_args("--preset", "far")).synth == {}


@pytest.mark.parametrize(
    "item, message",
    [
        ("texture", "--synth: 'texture' is not KNOB=VALUE"),
        ("colour=3", r"--synth.colour: unknown key; valid keys: \['clutter', 'colors'"),
        ("texture=fine", "--synth.texture: expected an integer, got 'fine'"),
        ("fixed_kinds=maybe", "--synth.fixed_kinds: expected true/false, got 'maybe'"),
    ],
)
def test_a_bad_knob_is_named(item, message):
    with pytest.raises(UserError, match=message):
        sizes.sized(_args("--synth", item))


def test_tiny_knobs_go_on_top_of_the_size_and_reach_the_model():
    from vedas.experiments.ablation import settings

    size = sizes.sized(_args("--tiny", "vision_hidden=96", "layers=3"))
    assert size.tiny == {**sizes.FULL.tiny, "vision_hidden": 96, "layers": 3}
    # recorded, so a resumed run of another width is refused
    assert settings(size)["size"]["tiny"]["vision_hidden"] == 96
    args = size.tiny_model_args()
    assert args["vision_hidden"] == 96 and args["max_pixels"] == sizes.demo_pixels("qwen2_vl", 168)
    assert sizes.sized(_args()).tiny == sizes.FULL.tiny
    assert sizes.sized(_args("--quick", "--tiny", "hidden=32")).tiny["vision_hidden"] == 32  # QUICK's


@pytest.mark.parametrize(
    "item, message",
    [
        ("vision_hidden", "--tiny: 'vision_hidden' is not KNOB=VALUE"),
        ("vision_width=3", "--tiny.vision_width: unknown key"),
        ("vision_seed=3", "--tiny.vision_seed: unknown key"),  # --vision-seed sets it
        ("max_pixels=3136", "--tiny.max_pixels: unknown key"),  # the preset sets it
        ("vision_hidden=wide", "--tiny.vision_hidden: expected an integer, got 'wide'"),
    ],
)
def test_a_bad_tiny_knob_is_named(item, message):
    with pytest.raises(UserError, match=message):
        sizes.sized(_args("--tiny", item))


def test_detail_is_far_framed_on_larger_squares_with_a_wider_tower():
    from vedas.data.synth import preset

    size = sizes.sized(_args("--preset", "detail"))
    assert size.synth_config() == preset("far", context_sentences=0, frame=6, shape_size=54)
    assert size.tiny == {**sizes.FULL.tiny, "vision_hidden": 256} and size.replay_k == 2
    # the 504-px render, seen at 168
    assert size.tiny_model_args()["max_pixels"] == sizes.demo_pixels("qwen2_vl", 168)
    assert sizes.sized(_args("--preset", "detail", "--tiny", "vision_hidden=64")).tiny["vision_hidden"] == 64
    assert sizes.sized(_args("--preset", "far")).tiny == sizes.FULL.tiny  # only detail widens the tower
