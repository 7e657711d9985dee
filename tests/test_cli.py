"""The ``vedas`` command line: every subcommand has --help."""

from __future__ import annotations

import subprocess
import sys

import pytest

from vedas.cli import build_parser, main

SUBCOMMANDS = ["demo", "train", "eval", "infer", "bench", "analyze", "data"]


def test_help_lists_every_subcommand():
    text = build_parser().format_help()
    for name in SUBCOMMANDS:
        assert name in text


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_each_subcommand_has_help(name, capsys):
    with pytest.raises(SystemExit) as e:
        main([name, "--help"])
    assert e.value.code == 0
    assert "usage: vedas" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["norms", "gradients", "crops", "latents", "latent-use"])
def test_analyze_subcommands_exist(name, capsys):
    with pytest.raises(SystemExit) as e:
        main(["analyze", name, "--help"])
    assert e.value.code == 0


def test_infer_end_to_end(tiny, tmp_path, make_image):
    from vedas.model import VedasModel

    VedasModel(*tiny).save(tmp_path / "ckpt")
    make_image(84, 112, 0).save(tmp_path / "img.png")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "vedas.cli",
            "infer",
            "--checkpoint",
            str(tmp_path / "ckpt"),
            "--image",
            str(tmp_path / "img.png"),
            "--question",
            "How many?",
            "--choices",
            "1",
            "2",
            "--latents",
            "2",
            "--max-new-tokens",
            "3",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "[mode=vedas latents=2 ar_steps=" in out.stdout
