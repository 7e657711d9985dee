"""The rationale splitter (docs/design.md#curriculum), pinned on real-looking rationales.

Run with ``.venv/bin/pytest -q tests/data/test_steps.py``.
"""

from __future__ import annotations

import pytest

from vedas.data import split_steps
from vedas.data.steps import regroup

# An M3CoT-style rationale: one paragraph, seven sentences, a stray newline inside.
SEVEN = (
    "The image shows a wooden plank on a workbench. The task is to cut the plank. "
    "A hammer drives nails. A saw has a toothed blade. "
    "A drill makes holes.\nA wrench turns bolts. Only the saw cuts through wood."
)


def test_blank_lines_make_the_steps() -> None:
    text = "There are 3 red squares.\n\nThere are 5 blue circles.\n\n5 - 3 = 2."
    assert split_steps(text) == ["There are 3 red squares.", "There are 5 blue circles.", "5 - 3 = 2."]


def test_whitespace_only_lines_count_as_blank_and_single_newlines_stay() -> None:
    text = "Maps have four directions.\nNorth is up.\n  \nWest Virginia is farthest north.\r\n\r\nSo A."
    assert split_steps(text) == [
        "Maps have four directions.\nNorth is up.",
        "West Virginia is farthest north.",
        "So A.",
    ]


def test_sentence_fallback_regroups_seven_sentences_into_four() -> None:
    assert split_steps(SEVEN, max_steps=4) == [
        "The image shows a wooden plank on a workbench. The task is to cut the plank.",
        "A hammer drives nails. A saw has a toothed blade.",
        "A drill makes holes. A wrench turns bolts.",
        "Only the saw cuts through wood.",
    ]


def test_sentence_fallback_regroups_seven_sentences_into_three() -> None:
    steps = split_steps(SEVEN, max_steps=3)
    assert [s.count(". ") + 1 for s in steps] == [3, 2, 2]
    assert steps[0].startswith("The image shows") and steps[0].endswith("A hammer drives nails.")


def test_paragraphs_are_regrouped_with_their_separator() -> None:
    text = "\n\n".join(f"Step {i}." for i in range(1, 6))
    assert split_steps(text, max_steps=2) == ["Step 1.\n\nStep 2.\n\nStep 3.", "Step 4.\n\nStep 5."]


def test_fewer_pieces_than_max_steps_each_become_a_step() -> None:
    assert split_steps("Look at the map. Maine is in the north-east.") == [
        "Look at the map.",
        "Maine is in the north-east.",
    ]
    assert split_steps("One sentence without a final period") == ["One sentence without a final period"]


@pytest.mark.parametrize("text", ["", "   ", "\n\n \n", None])
def test_empty_rationale_has_no_steps(text: str | None) -> None:
    assert split_steps(text) == []


def test_period_without_space_does_not_split() -> None:
    assert split_steps("The value is 3.5 cm. Therefore x is 7.") == [
        "The value is 3.5 cm.",
        "Therefore x is 7.",
    ]


@pytest.mark.parametrize(
    ("n", "max_steps", "sizes"),
    [
        (7, 4, [2, 2, 2, 1]),
        (7, 3, [3, 2, 2]),
        (8, 4, [2, 2, 2, 2]),
        (3, 4, [1, 1, 1]),
        (9, 1, [9]),
        (0, 4, []),
    ],
)
def test_regroup_sizes(n: int, max_steps: int, sizes: list[int]) -> None:
    groups = regroup([str(i) for i in range(n)], max_steps)
    assert [len(g) for g in groups] == sizes
    assert [p for g in groups for p in g] == [str(i) for i in range(n)]  # contiguous, in order


def test_max_steps_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_steps"):
        split_steps("a. b.", max_steps=0)
