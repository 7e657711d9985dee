"""Scoring rules: named pure functions that read the answer out of a model's output.

Every reported accuracy names the rule that produced it: the same outputs can
score very differently under a strict and a lenient reader. Each rule has the signature
``rule(prediction, choices) -> str | None``: the option letter (multiple choice) or the
answer string (open-ended) it finds, or None when it finds no answer.

- ``vedas`` (default, strict): the text after the LAST "the answer is". Multiple choice:
  it must start with one upper-case option letter, bare or in parentheses (``B``,
  ``(B)``, ``B.``, ``B) 5``); a lower-case letter, a letter inside a word, a second
  letter joined by "or"/"and"/","/"/" ("A or B") or no letter at all is no answer.
  Open-ended: the rest of that line, trailing period dropped.
- ``m3cot``: the official M3CoT rule (LightChen233/M3CoT ``utils/metric.py``): keep the
  text after ``[Answer]`` (up to ``[Rationale]``/``[Context]``) if present; the last
  parenthesised letter ``(X)``; else, of the choices whose text occurs in the output
  (case-insensitive), the last in option order; else the last option letter, in option
  order, that stands as its own token once ``\\n.,!?`` become spaces; else the same with
  lower-case letters. (Empty choice texts are not matched; the original would match them.)
- ``lmms_sqa``: lmms-eval's ScienceQA rule: the stripped output is the letter itself
  (any case), or starts with an upper-case letter and a period (``"B. 5"``).
  Nothing is searched inside longer text.
- ``lmms_mcq``: lmms-eval's format-priority letter extractor (MMStar and newer tasks, as
  of lmms-eval 75571cf): candidates in the formats start-of-answer > end-of-answer >
  after an answer phrase > ``(X)`` > ``X.`` > ``X:`` > ``X)`` > ``X`` followed by a space
  > any standalone capital; the best format wins, ties go to the latest position.
- ``gqa``: normalised exact match (lmms-eval GQA): strip, lower-case, drop a trailing
  period, remove every punctuation character. Returns the normalised output.

Example::

    >>> from vedas.evaluation.scoring import score
    >>> score("There are 3. Therefore, the answer is B.", record)   # record.answer == "B"
    True
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Sequence

from vedas.data.record import Record
from vedas.errors import UserError
from vedas.prompts import ANSWER_PREFIX, option_letter

Rule = Callable[[str, Sequence[str]], str | None]

# The phrase the trained answer target ends in ("Therefore, the answer is" -> "the answer is").
_ANSWER_IS = re.compile(r"\b" + re.escape(ANSWER_PREFIX.rsplit(", ", 1)[-1]) + r"\b", re.IGNORECASE)
_LEADING_LETTER = re.compile(r"\s*[:：]?\s*\(?([A-Za-z])\)?(?![A-Za-z0-9])")
_ANOTHER_LETTER = re.compile(
    r"\s*(?:,|/|&|\+|\bor\b|\band\b)\s*\(?([A-Za-z])\)?(?![A-Za-z0-9])", re.IGNORECASE
)


def _letters(choices: Sequence[str]) -> list[str]:
    return [option_letter(i) for i in range(len(choices))]


def normalize(text: str) -> str:
    """GQA normalisation: strip, lower-case, drop one trailing period, remove punctuation."""
    text = text.strip().lower()
    if text.endswith("."):
        text = text[:-1]
    return text.translate(str.maketrans("", "", string.punctuation)).strip()


def vedas(prediction: str, choices: Sequence[str]) -> str | None:
    """Strict: the answer right after the last "the answer is" (module docstring)."""
    matches = list(_ANSWER_IS.finditer(prediction))
    if not matches:
        return None
    tail = prediction[matches[-1].end() :]
    if not choices:
        line = tail.strip().split("\n", 1)[0].strip()
        return line.rstrip(".").strip() or None
    letters = _letters(choices)
    first = _LEADING_LETTER.match(tail)
    if first is None or first.group(1) not in letters:
        return None
    second = _ANOTHER_LETTER.match(tail, first.end())
    if second is not None and second.group(1).upper() in letters:
        return None
    return first.group(1)


def m3cot(prediction: str, choices: Sequence[str]) -> str | None:
    """The official M3CoT rule, in its order (module docstring)."""
    text = prediction
    if "[Answer]" in text:
        text = text.split("[Answer]")[-1].split("[Rationale]")[0].split("[Context]")[0]
    parenthesised = re.findall(r"\(([A-Za-z])\)", text)
    if parenthesised:
        return parenthesised[-1].upper()
    letters = _letters(choices)
    named = [letters[i] for i, choice in enumerate(choices) if choice and choice.lower() in text.lower()]
    if named:
        return named[-1]
    tokens = re.sub(r"[\n.,!?]", " ", text).split(" ")
    for case in (str.upper, str.lower):
        found = [letter for letter in letters if case(letter) in tokens]
        if found:
            return found[-1]
    return None


def lmms_sqa(prediction: str, choices: Sequence[str]) -> str | None:
    """lmms-eval ScienceQA: the letter alone, or ``"X."`` at the start (module docstring)."""
    text = prediction.strip()
    if len(text) == 1 and text.isascii() and text.isalpha():
        return text.upper()
    if len(text) >= 2 and text[0].isascii() and text[0].isupper() and text[1] == ".":
        return text[0]
    return None


_PHRASE = r"(?:\b(?:the\s+)?(?:correct\s+|final\s+|best\s+)?(?:answer|option|choice)\s*(?:is\b|[:：])|\bi\s+(?:choose|select|pick)\b)"
# (format, pattern): earlier formats win over later ones; case matters where a bare
# lower-case letter would mostly be the English article "a".
_MCQ_FORMATS: list[tuple[str, re.Pattern[str]]] = [
    ("start", re.compile(r"^(?:\(([A-Za-z])\)|([A-Z])(?=[.:,)]|$)|([a-z])$)")),
    ("end", re.compile(r"(?:^|(?<=[\s(]))\(?([A-Z])\)?$")),
    ("phrase", re.compile(_PHRASE + r"\s*\(?([A-Za-z])\)?(?![A-Za-z0-9])", re.IGNORECASE)),
    ("parentheses", re.compile(r"\(([A-Za-z])\)")),
    ("period", re.compile(r"(?<![A-Za-z0-9])([A-Z])\.(?=\s|$)")),
    ("colon", re.compile(r"(?<![A-Za-z0-9])([A-Z]):")),
    ("right-paren", re.compile(r"(?<![A-Za-z0-9(])([A-Z])\)")),
    ("space", re.compile(r"(?<![A-Za-z0-9])([A-Z])(?=\s)")),
    ("fallback", re.compile(r"(?<![A-Za-z0-9])([A-Z])(?![A-Za-z0-9])")),
]
_EDGE_PUNCTUATION = " \t\r\n.,;:!?*\"'`"


def lmms_mcq(prediction: str, choices: Sequence[str]) -> str | None:
    """lmms-eval's format-priority extractor (module docstring); None without choices."""
    allowed = set(_letters(choices))
    text = prediction.strip().strip(_EDGE_PUNCTUATION)
    for _, pattern in _MCQ_FORMATS:
        found = [
            (match.start(), letter)
            for match in pattern.finditer(text)
            if (letter := next(g for g in match.groups() if g).upper()) in allowed
        ]
        if found:
            return max(found)[1]
    return None


def gqa(prediction: str, choices: Sequence[str]) -> str | None:
    """The normalised output (module docstring); None if nothing is left."""
    return normalize(prediction) or None


RULES: dict[str, Rule] = {
    "vedas": vedas,
    "m3cot": m3cot,
    "lmms_sqa": lmms_sqa,
    "lmms_mcq": lmms_mcq,
    "gqa": gqa,
}


def get_rule(rule: str) -> Rule:
    """The rule function by name; ValueError naming it and listing the valid names."""
    if rule not in RULES:
        raise UserError(f"unknown scoring rule {rule!r}; valid rules: {', '.join(RULES)}")
    return RULES[rule]


def extract(prediction: str, record: Record, rule: str = "vedas") -> str | None:
    """The letter or answer string ``rule`` reads from ``prediction`` for ``record``, or None."""
    return get_rule(rule)(prediction or "", record.choices)


def score(prediction: str, record: Record, rule: str = "vedas") -> bool:
    """Whether ``prediction`` answers ``record`` correctly under ``rule``.

    Multiple choice compares option letters; open-ended answers compare after
    :func:`normalize`.
    """
    found = extract(prediction, record, rule)
    if found is None:
        return False
    if record.choices:
        return found.upper() == record.answer.upper()
    return normalize(found) == normalize(record.answer)
