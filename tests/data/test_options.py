"""Options written inside question text, and the answer forms datasets use for them.

Run with ``.venv/bin/pytest -q tests/data/test_options.py``.
"""

from __future__ import annotations

import pytest

from vedas.data.options import answer_index, parse_options, split_question, strip_label


@pytest.mark.parametrize(
    ("text", "options"),
    [
        (
            "A: The cat is on the mat., B: The mat is on the cat., C: Both",
            ["The cat is on the mat.", "The mat is on the cat.", "Both"],
        ),
        ("(a) Open (b) Closed", ["Open", "Closed"]),
        ("\nA. 2\nB. 3\nC. 5\nAnswer with the letter.", ["2", "3", "5"]),
        ("(A) red; (B) blue", ["red", "blue"]),
        ("A: only one option", []),
        ("No labels here at all", []),
        ("B: starts at B, C: no A", []),
    ],
)
def test_parse_options(text: str, options: list[str]) -> None:
    assert parse_options(text) == options


def test_labels_inside_words_do_not_count() -> None:
    # "PLAN:" ends in "N:" but is not preceded by a separator; only A: and B: are labels.
    assert parse_options("A: PLAN: go, B: stay") == ["PLAN: go", "stay"]


def test_split_question_uses_the_last_options_marker() -> None:
    question, options = split_question("Pick the best options: see below.\nOptions: A: 1, B: 2")
    assert question == "Pick the best options: see below." and options == ["1", "2"]
    assert split_question("What is shown?") == ("What is shown?", [])


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("B", 1),
        ("b", 1),
        ("(b)", 1),
        ("B. blue", 1),
        ("blue", 1),
        ("BLUE", 1),
        (1, 1),
        ("E", None),
        (7, None),
        ("B. red", None),
        ("violet", None),
        (True, None),
        (None, None),
    ],
)
def test_answer_index(value: object, expected: int | None) -> None:
    assert answer_index(value, ["red", "blue", "green"]) == expected


def test_strip_label() -> None:
    assert strip_label("B. blue") == ("B", "blue")
    assert strip_label("(c) green") == ("C", "green")
    assert strip_label("blue") == (None, "blue")
