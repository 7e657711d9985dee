"""Bad inputs to ``vedas infer`` that used to end in a traceback, and an empty answer that printed as
an empty line. The bad ones get one line and exit 2 (the troubleshooting table shows them too)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import torch

import vedas


def huge_png(path: Path, side: int = 30000) -> Path:
    """A valid PNG header claiming ``side``² pixels (PIL refuses it as a decompression bomb on open)."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    data = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    path.write_bytes(data + struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND")))
    return path


def test_a_decompression_bomb_image_is_one_line(vedas_cli, ckpt, tmp_path):
    png = huge_png(tmp_path / "huge.png")
    code, _, err = vedas_cli.main("infer", "--checkpoint", str(ckpt), "--image", str(png), "--question", "q")
    assert code == 2
    line = err.strip()
    assert line.startswith(
        f"vedas infer: --image: cannot read image file '{png}': Image size (900000000 pixels)"
    )
    assert "\n" not in line and "Traceback" not in err


def test_27_choices_are_one_line(vedas_cli, ckpt):
    choices = [f"option {i}" for i in range(27)]
    code, _, err = vedas_cli.main(
        "infer", "--checkpoint", str(ckpt), "--question", "q", "--choices", *choices
    )
    assert code == 2
    assert err.strip() == "vedas infer: --choices: 27 options; at most 26 can be lettered (A–Z)"


def test_invalid_utf8_in_the_question_is_one_line_in_a_real_process(vedas_cli, ckpt):
    """Bytes that are not UTF-8 on the command line reach Python as lone surrogates (PEP 383)."""
    res = vedas_cli.run_env(
        {"LC_ALL": "C.UTF-8"}, "infer", "--checkpoint", str(ckpt), "--question", b"caf\xe9 ?"
    )
    assert res.returncode == 2, res.stderr[-2000:]
    assert res.stderr.strip() == (
        "vedas infer: --question: not valid UTF-8 (byte 0xe9 at character 3); pass the text in UTF-8"
    )


def test_the_library_names_undecodable_text_too():
    from vedas.arguments import check_batch
    from vedas.errors import InputError

    for args, where in (
        (([None], ["caf\udce9"]), "questions[0]"),
        (([None], ["q"], [["a", "b\udcff"]]), "choices[0]"),
        (([None], ["q"], None, ["ctx \udc80"]), "contexts[0]"),
    ):
        try:
            check_batch(*args)
        except InputError as e:
            assert str(e).startswith(f"{where}: not valid UTF-8 (byte 0x"), e
        else:
            raise AssertionError(f"{where}: accepted")


def test_an_empty_answer_is_said_not_printed_as_an_empty_line(vedas_cli, ckpt, tmp_path):
    """A checkpoint whose first token is always EOS for this prompt: lm_head has only an EOS row, set to
    the prompt's last hidden state (so the EOS logit is positive and every other one is 0)."""
    vm = vedas.load(ckpt)
    captured = {}

    def keep_first(module, inputs, output) -> None:  # the prompt's pass comes first
        captured.setdefault("h", output[0, -1].detach().clone())

    handle = vm.model.model.language_model.norm.register_forward_hook(keep_first)
    vm.generate([None], ["Why?"], mode="no_cot", max_new_tokens=1)
    handle.remove()
    with torch.no_grad():
        vm.model.lm_head.weight.zero_()
        vm.model.lm_head.weight[vm.eos_id] = captured["h"]
    silent = vm.save(tmp_path / "silent")
    code, out, err = vedas_cli.main(
        "infer", "--checkpoint", str(silent), "--question", "Why?", "--method", "no_cot"
    )
    assert code == 0, err
    first = out.splitlines()[0]
    assert first == "(empty answer: the model generated no text before it stopped)"
