"""The README's Python examples run as written.

Every ```python block of README.md runs on its own in a fresh interpreter (the one running
the tests), in an empty temporary working directory, offline, so a block that drifts from
the API fails here, and the failure names the block by its first line.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"^```python[^\n]*\n(.*?)^```", re.DOTALL | re.MULTILINE)


def python_blocks(text: str) -> list[str]:
    """The code of every ```python fenced block, in order."""
    return [m.group(1) for m in BLOCK.finditer(text)]


def first_line(code: str) -> str:
    return next((line.strip() for line in code.splitlines() if line.strip()), "<empty block>")


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def test_readme_has_a_python_example():
    assert BLOCKS, f"{README} has no ```python block"


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_block_runs(code: str, tmp_path: Path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    # the checkout's sources win over any installed copy, as for the rest of the suite
    src = str(README.parent / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        pytest.fail(
            f"README block starting {first_line(code)!r} exited {done.returncode}:\n{done.stderr[-4000:]}",
            pytrace=False,
        )
