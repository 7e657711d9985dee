"""``--synth KNOB=VALUE``: benchmark knobs on top of a preset, typed as a config file's, with errors naming the item."""

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
