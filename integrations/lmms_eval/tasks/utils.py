"""The lmms-eval task functions of the vedas tasks: prompt, images and scoring, all by vedas' own code.

A doc is a row in the M3CoT parquet schema (``id, question, choices, context, answer`` (a
letter)``, image``, ...), which the shipped fixture has and ``export_parquet.py`` writes for any vedas
dataset. The prompt is :func:`vedas.prompts.format_question` of the question, the
options and the context, exactly what ``vedas eval`` sends; images are converted to RGB as
vedas' loaders do (transparency composited on white); a prediction is scored by the named
rule of :mod:`vedas.evaluation.scoring`, the function ``vedas eval --scoring`` uses.
"""

from __future__ import annotations

from typing import Any

from vedas.data.images import to_rgb
from vedas.data.record import Record
from vedas.evaluation.scoring import score
from vedas.prompts import LETTERS, format_question


def _images(doc: dict[str, Any]) -> list[Any]:
    value = doc.get("images", doc.get("image"))
    items = value if isinstance(value, list) else [value]
    return [to_rgb(im) for im in items if im is not None]


def doc_to_visual(doc: dict[str, Any]) -> list[Any]:
    return _images(doc)


def doc_to_text(doc: dict[str, Any], lmms_eval_specific_kwargs: dict[str, Any] | None = None) -> str:
    return format_question(
        doc["question"], list(doc.get("choices") or []) or None, doc.get("context") or None
    )


def _record(doc: dict[str, Any]) -> Record:
    """The doc as the record ``vedas eval`` scores (the template keeps images in process_results' docs)."""
    choices = [str(c) for c in doc.get("choices") or []]
    answer = str(doc["answer"]).strip().upper()
    return Record(
        id=str(doc["id"]),
        images=_images(doc),
        question=doc["question"],
        choices=choices,
        answer=answer,
        answer_index=LETTERS.index(answer) if choices else None,
    )


def _accuracy(doc: dict[str, Any], results: list[str], rule: str) -> dict[str, float]:
    return {"accuracy": float(score(results[0], _record(doc), rule))}


def process_results_m3cot(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """The official M3CoT rule."""
    return _accuracy(doc, results, "m3cot")


def process_results_vedas(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """vedas' strict rule (the synthetic benchmark's own)."""
    return _accuracy(doc, results, "vedas")
