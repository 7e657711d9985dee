"""OneThinker training data: the SFT cold-start JSON (and its RL JSON) for image questions.

Public id: ``OneThink/OneThinker-train-data`` on the hub. It is not a ``datasets`` table but
JSON files plus zipped media: ``onethinker_sft_image.json`` (LLaMA-Factory "sharegpt"
form, chains of thought written by Seed1.5-VL), ``onethinker_sft_video.json`` and
``onethinker_rl_train.json`` (EasyR1 form). Image paths are relative to the JSON's
folder. The files have no splits; ``split`` only labels the records::

    vedas.data.load("onethinker", path="OneThinker-train-data/onethinker_sft_image.json", split="train")

SFT row (``messages`` with ``user``/``assistant`` roles, one ``<image>`` placeholder per
image in the user text, the reply ``<think>...</think><answer>...</answer>``)::

    {"messages": [{"role": "user", "content": "<image>How many apples are left?\\nOptions:\\nA. 2\\nB. 3"},
                  {"role": "assistant", "content": "<think>There are 5 apples.\\n\\nTwo are eaten.</think><answer>B</answer>"}],
     "images": ["images/sft/000001.jpg"]}

RL row: ``{"problem": "<image>...", "answer": "<answer>3</answer>", "problem_type":
"numerical", "data_type": "image", "options": ["A. 2", "B. 3"], "images": [...]}``.

Mapping: ``id`` is the row's ``id`` if it has one, else ``<file stem>-<position>``; the
question is the user text without ``<image>`` placeholders, its ``Options:`` list (or the RL
``options``) the choices; the answer is the ``<answer>`` content, turned into a letter
when the question has choices; the rationale is the ``<think>`` content (escaped ``\\n``
sequences become newlines). Skipped and counted: ``video`` rows (``videos``, or
``data_type`` "video"), ``grounding`` rows (a grounding/detection/segmentation/tracking
``problem_type``, or an answer that is a JSON box or point list), and ``no_image`` rows.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

from vedas.data.images import ImageReader
from vedas.data.options import choice_answer, split_question, strip_label
from vedas.data.record import Dataset, Record, SkipRow
from vedas.data.rows import Row, collect
from vedas.data.sources import rows_of, split_files
from vedas.data.steps import split_steps

HUB_ID = "OneThink/OneThinker-train-data"
GROUNDING_TYPES = ("grounding", "detection", "segmentation", "tracking", "bbox")
_THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL | re.IGNORECASE)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_IMAGE_TAG = re.compile(r"<image>", re.IGNORECASE)


def is_grounding_answer(answer: str) -> bool:
    """A JSON list or object (boxes, points), not a plain number or word."""
    try:
        return isinstance(json.loads(answer), (list, dict))
    except ValueError:
        return False


def load(path: str | Path, split: str = "train", limit: int | None = None, skip_bad: bool = False) -> Dataset:
    """Image question rows of one OneThinker JSON file (or the first found in a folder)."""
    root = Path(path)
    patterns = [f"{split}.json", "onethinker_sft_image.json", "onethinker_rl_train.json", "*.json"]
    file = root if root.is_file() else split_files(root, patterns)[0]
    reader = ImageReader(bases=[file.parent])

    def rows() -> Iterator[Row]:
        for index, row in enumerate(rows_of(file, "onethinker")):
            if row.data.get("id") in (None, ""):
                row.id = f"{file.stem}-{index}"
            yield row

    def convert(row: Row) -> Record:
        if (
            row.data.get("videos")
            or row.data.get("video")
            or str(row.data.get("data_type", "")).lower() == "video"
        ):
            raise SkipRow("video")
        problem_type = str(row.data.get("problem_type", "")).lower()
        if any(t in problem_type for t in GROUNDING_TYPES):
            raise SkipRow("grounding")
        if "messages" in row.data:
            text, reply = _sharegpt(row)
            options: list[str] = []
        else:
            text, reply = row.text("problem"), row.text("answer")
            options = [strip_label(o)[1] for o in row.strings("options")] if row.data.get("options") else []
        answers = _ANSWER.findall(reply)
        if "messages" in row.data and not answers:
            raise row.error("missing_field", "assistant reply has no <answer>...</answer>")
        answer = (answers[-1] if answers else reply).strip()
        if is_grounding_answer(answer):
            raise SkipRow("grounding")
        paths = row.strings("images") if row.data.get("images") else []
        if not paths:
            raise SkipRow("no_image")
        question, choices = split_question(_IMAGE_TAG.sub("", text))
        choices = options or choices
        think = _THINK.search(reply)
        rationale = think.group(1).replace("\\n", "\n").strip() if think else ""
        letter, index = choice_answer(row, answer, choices) if choices else (answer, None)
        if not question:
            raise row.error("missing_field", "the question text is empty")
        return Record(
            id=row.id,
            images=[reader(p, row, field="images") for p in paths],
            question=question,
            choices=choices,
            answer=letter,
            answer_index=index,
            rationale=rationale,
            steps=split_steps(rationale),
            meta={k: row.data[k] for k in ("problem_type", "data_type") if row.data.get(k)},
            source=f"onethinker/{split}",
        )

    return collect("onethinker", split, rows(), convert, limit=limit, skip_bad=skip_bad, path=str(root))


def _sharegpt(row: Row) -> tuple[str, str]:
    """The first user text and the last assistant reply of a ``messages`` list."""
    messages = row.get("messages")
    if not isinstance(messages, list):
        raise row.error("bad_field", "field 'messages' must be a list of {role, content}")
    user = [m.get("content", "") for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    assistant = [
        m.get("content", "") for m in messages if isinstance(m, dict) and m.get("role") == "assistant"
    ]
    if not user or not isinstance(user[0], str) or not user[0].strip():
        raise row.error("missing_field", "field 'messages' has no user turn with text")
    if not assistant or not isinstance(assistant[-1], str) or not assistant[-1].strip():
        raise row.error("missing_field", "field 'messages' has no assistant turn with text")
    return user[0], assistant[-1]
