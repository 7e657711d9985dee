"""Fixtures for the data tests: the committed real-schema files, and writable copies of them.

Run with ``.venv/bin/pytest -q tests/data``. The files come from
``tests/fixtures/make_fixtures.py`` (described in ``tests/fixtures/README.md``).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.fixture(scope="session")
def fixtures() -> Path:
    """The committed fixture folder (read only: copy before changing anything)."""
    return FIXTURES


@pytest.fixture
def fixture_copy(tmp_path: Path) -> Callable[[str], Path]:
    """``fixture_copy("m3cot/raw")`` -> a private copy of that fixture folder to break."""

    def copy(name: str) -> Path:
        target = tmp_path / name
        shutil.copytree(FIXTURES / name, target)
        return target

    return copy
