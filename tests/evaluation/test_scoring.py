"""Scoring rules on tricky outputs: each rule's documented behaviour, pinned.

Run with ``.venv/bin/pytest -q tests/evaluation/test_scoring.py``.
"""

from __future__ import annotations

import pytest
from PIL import Image

from vedas.data import Record
from vedas.evaluation.scoring import RULES, extract, normalize, score

CHOICES = ["red squares", "blue circles", "3", "5"]


def mcq(answer: str = "B", choices: list[str] = CHOICES) -> Record:
    return Record(
        id="q1",
        images=[Image.new("RGB", (2, 2))],
        question="Which are the most numerous?",
        choices=choices,
        answer=answer,
        answer_index="ABCDEFG".index(answer),
    )


def open_ended(answer: str) -> Record:
    return Record(id="q2", images=[Image.new("RGB", (2, 2))], question="What room is it?", answer=answer)


def found(prediction: str, choices: list[str] = CHOICES) -> dict[str, str | None]:
    return {name: rule(prediction, choices) for name, rule in RULES.items() if name != "gqa"}


# Expected letter per rule: (vedas, m3cot, lmms_sqa, lmms_mcq).
CASES = [
    ("Therefore, the answer is B.", ("B", "B", None, "B")),
    ("There are 3 red squares.\n\nTherefore, the answer is (B) blue circles.", ("B", "B", None, "B")),
    ("The answer is: C", ("C", "C", None, "C")),
    # Two letters: strict rule gives no answer; m3cot takes the later option; lmms_mcq the end one.
    ("Therefore, the answer is A or B.", (None, "B", None, "B")),
    ("the answer is A, C", (None, "C", None, "C")),
    ("the answer is AB", (None, None, None, None)),
    # Only the LAST "the answer is" counts for the strict rule.
    ("I first thought the answer is A. On reflection the answer is D.", ("D", "D", None, "D")),
    ("The answer is D at first, but then the answer is blue.", (None, "D", None, "D")),
    # Lower case.
    ("the answer is b", (None, "B", None, "B")),
    ("b", (None, "B", "B", "B")),
    # A letter inside a word is not a letter.
    ("Apples and Bananas", (None, None, None, None)),
    ("Therefore, the answer is Apple.", (None, None, None, None)),
    # (B) versus B.
    ("(B)", (None, "B", None, "B")),
    ("B.", (None, "B", "B", "B")),
    ("B. blue circles", (None, "B", "B", "B")),
    ("B", (None, "B", "B", "B")),
    # Choice text only: the official M3CoT rule matches choice texts.
    ("blue circles", (None, "B", None, None)),
    ("There are more red squares than 5 blue circles", (None, "D", None, None)),
    # The official M3CoT [Answer] section and its last-parenthesis rule.
    ("[Answer] (C) [Rationale] The answer is (A).", ("A", "C", None, "A")),
    # m3cot: the last (X); lmms_mcq: a choice at the very start outranks every other format.
    ("(A) looks wrong, (D) is right", (None, "D", None, "A")),
    # A letter beyond the options (lmms_sqa does not check; scoring then fails on the letter).
    ("Therefore, the answer is F.", (None, None, None, None)),
    ("F.", (None, None, "F", None)),
    # Nothing.
    ("", (None, None, None, None)),
    ("   \n", (None, None, None, None)),
]


@pytest.mark.parametrize(("prediction", "expected"), CASES)
def test_each_rule_on_tricky_outputs(prediction: str, expected: tuple[str | None, ...]) -> None:
    assert tuple(found(prediction).values()) == expected


def test_lmms_mcq_prefers_format_then_latest_position() -> None:
    rule = RULES["lmms_mcq"]
    assert rule("A red square is on the left, so C.", CHOICES) == "C"  # "A" is an article here
    assert rule("The correct option is B, because A is too small", CHOICES) == "B"  # phrase over bare letters
    assert rule("C. The answer is not A", CHOICES) == "C"  # the start of the answer ranks first
    assert rule("It is (A), not (C) and not (D) in the end, I think", CHOICES) == "D"


def test_score_compares_letters_for_multiple_choice() -> None:
    record = mcq("B")
    assert score("Therefore, the answer is B.", record)
    assert not score("Therefore, the answer is C.", record)
    assert not score("Therefore, the answer is A or B.", record)
    assert score("blue circles", record, rule="m3cot")
    assert not score("blue circles", record)
    assert not score("", record, rule="m3cot")
    assert score("B. blue circles", record, rule="lmms_sqa")
    assert extract("(b)", record, rule="m3cot") == "B"


def test_open_ended_answers_compare_normalised() -> None:
    record = open_ended("bedroom")
    assert score("Bedroom.", record, rule="gqa")
    assert score("  BEDROOM  ", record, rule="gqa")
    assert not score("It is a bedroom.", record, rule="gqa")
    assert score("The room has a bed. Therefore, the answer is bedroom.", record)
    assert extract("Therefore, the answer is Bedroom.\nMore text", record) == "Bedroom"
    assert not score("The room has a bed.", record)
    assert extract("", record, rule="gqa") is None


def test_gqa_normalisation() -> None:
    assert normalize("  Left. ") == "left"
    assert normalize("T-shirt!") == "tshirt"
    assert normalize("Mr. Smith's dog.") == "mr smiths dog"
    assert normalize("...") == ""


def test_multiple_choice_rules_need_choices() -> None:
    record = open_ended("b")
    assert extract("(B)", record, rule="m3cot") == "B"  # the (X) rule needs no choice list
    assert extract("B", record, rule="lmms_mcq") is None


def test_unknown_rule_is_named_with_the_valid_ones() -> None:
    with pytest.raises(
        ValueError, match=r"unknown scoring rule 'exact'; valid rules: vedas, m3cot, lmms_sqa, lmms_mcq, gqa"
    ):
        score("B", mcq(), rule="exact")
    assert set(RULES) == {"vedas", "m3cot", "lmms_sqa", "lmms_mcq", "gqa"}
