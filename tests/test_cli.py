"""The ``vedas`` command line: every subcommand has --help and the shared flags read the same everywhere."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest
import torch

from vedas import cli_args
from vedas.cli import build_parser, main
from vedas.methods import LATENT_METHODS, METHODS

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


@pytest.mark.parametrize("name", ["norms", "gradients", "crops", "latents", "latent-use", "replay"])
def test_analyze_subcommands_exist(name, capsys):
    with pytest.raises(SystemExit) as e:
        main(["analyze", name, "--help"])
    assert e.value.code == 0


def test_infer_end_to_end(tiny, arch, tmp_path, make_image):
    if arch == "qwen3_vl":  # a 25 s subprocess each; run in process in tests/backbones/test_qwen3_vl.py
        pytest.skip(
            "qwen3_vl: vedas eval/infer are covered in process by test_train_eval_infer_analyze_on_qwen3_vl"
        )
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
    assert "[method=vedas latents=2 ar_steps=" in out.stdout


def _leaf_parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """Every (command path, parser) that has no subcommands of its own."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
    for action in subs:
        for name, child in action.choices.items():
            yield from _leaf_parsers(child, (*path, name))


def _method_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The options that take a method name: named like one, or choosing among the method names."""
    return [
        a
        for a in parser._actions
        if a.dest in ("method", "methods", "mode") or (a.choices and set(a.choices) & set(METHODS))
    ]


# the analyses that inspect latent steps offer only the latent methods
LATENT_ONLY = {("analyze", "crops"), ("analyze", "latents"), ("analyze", "latent-use"), ("analyze", "replay")}


def test_every_method_flag_is_spelled_method_with_the_method_names():
    seen = set()
    for path, parser in _leaf_parsers(build_parser()):
        for action in _method_actions(parser):
            assert action.option_strings == ["--method"], (path, action.option_strings)
            expected = LATENT_METHODS if path in LATENT_ONLY else METHODS
            assert tuple(action.choices) == expected, path
            assert action.help, path
            seen.add(path)
    expected_commands = {("eval",), ("infer",), ("demo",), ("serve",), ("data", "difficulty"), *LATENT_ONLY}
    assert seen == expected_commands


def test_every_flag_has_a_help_string():
    for path, parser in _leaf_parsers(build_parser()):
        for action in parser._actions:
            assert action.help, (path, action.option_strings or action.dest)


def test_device_auto_is_cuda_when_visible_else_cpu():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert cli_args.resolve_device("auto") == expected
    assert cli_args.resolve_device(None) == expected
    args = build_parser().parse_args(["eval", "--checkpoint", "c", "--data", "synthetic:d"])
    assert args.device == "auto" and cli_args.resolve_device(args.device) == expected


@pytest.mark.parametrize("value", ["graphics", "cuda:x", "cuda:99"])
def test_bad_device_is_an_argument_error_naming_the_flag(value, capsys):
    with pytest.raises(SystemExit) as e:
        main(["eval", "--checkpoint", "c", "--data", "synthetic:d", "--device", value])
    assert e.value.code == 2
    assert "argument --device:" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--device"):
        cli_args.resolve_device(value)


def test_the_command_table_matches_each_module_and_help_imports_no_torch():
    """`vedas --help` built every subcommand, importing torch (about 4 s); now only the table is read."""
    import importlib
    import subprocess
    import sys

    from vedas.cli import COMMANDS

    for name, (path, line) in COMMANDS.items():
        module = importlib.import_module(path)
        assert line == module.HELP, name
        assert callable(module.add_arguments), name
    code = (
        "import sys\nfrom vedas.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'deepspeed', 'PIL', 'ray') if m in sys.modules)\n"
        "print('imported:', heavy)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "imported: []" in res.stdout
    for name in COMMANDS:
        assert name in res.stdout


@pytest.mark.parametrize("name", ["train", "eval", "serve", "infer"])
def test_subcommand_help_shows_no_restructuredtext_markup(name, capsys):
    with pytest.raises(SystemExit):
        main([name, "--help"])
    out = capsys.readouterr().out
    assert "``" not in out and ":func:" not in out and ":class:" not in out and ":mod:" not in out


def test_plain_turns_roles_and_literals_into_text():
    from vedas.cli import plain

    text = "Run ``vedas train``; see :func:`~vedas.model.load` and :class:`vedas.config.LatentConfig`."
    assert plain(text) == "Run `vedas train`; see vedas.model.load and vedas.config.LatentConfig."


@pytest.mark.parametrize("name", ["eval", "infer", "serve", "data", "demo"])
def test_these_subcommands_show_help_without_torch(name):
    import subprocess
    import sys

    code = (
        f"import sys\nfrom vedas.cli import main\ntry:\n    main([{name!r}, '--help'])\nexcept SystemExit:\n    pass\n"
        "print('torch imported:', 'torch' in sys.modules)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.rstrip().endswith("torch imported: False"), res.stdout[-500:]


def test_the_written_out_tto_defaults_are_the_configs():
    from vedas import cli_args
    from vedas.method.tto import TTOConfig

    assert (TTOConfig().steps, TTOConfig().lr) == (cli_args.TTO_STEPS, cli_args.TTO_LR)
