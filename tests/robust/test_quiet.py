"""Friction a new user hits: DeepSpeed imported (and its "Setting accelerator to CPU" on stdout) by a
plain save, and the documented flows leaving untracked data in the source tree."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_save_and_load_import_no_deepspeed_and_print_nothing(tmp_path):
    code = (
        "import sys, vedas\n"
        "m, p = vedas.tiny_model('qwen2_vl', hidden=32, layers=1)\n"
        f"vm = vedas.load(vedas.VedasModel(m, p).save({str(tmp_path / 'c')!r}))\n"
        "print('deepspeed imported:', 'deepspeed' in sys.modules)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout == "deepspeed imported: False\n"  # nothing else on stdout
    assert "Setting accelerator" not in res.stderr


def test_the_documented_flows_write_only_ignored_paths():
    """README: `vedas data synth --out data/synth`; docs/integrations.md: export to
    integrations/lmms_eval/data/*.parquet."""
    paths = ["data/synth/train.jsonl", "integrations/lmms_eval/data/synth_test.parquet"]
    res = subprocess.run(["git", "check-ignore", *paths], cwd=ROOT, capture_output=True, text=True)
    assert res.stdout.split() == paths, res.stderr
