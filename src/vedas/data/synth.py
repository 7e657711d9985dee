"""The synthetic multi-step visual benchmark: small shapes on a cluttered background.

    vedas data synth --out data/synth --train 2000 --test 500 --seed 0
    vedas.data.load("synthetic", path="data/synth", split="test")

Each image (default 112x112 px) holds a dozen small shapes (default 7 px) of a few colours
and kinds on a noisy grey background with thin grey clutter strokes, so telling a red
square from a red diamond or a stroke takes a close look (a zoomed crop helps). Every
question needs 2-4 reasoning steps and its answer is a computed quantity, not something
one glance reads off the image:

========  =====  ==========================================================================
template  steps  question and rationale (one step per paragraph)
========  =====  ==========================================================================
locate    2      "Which shape is nearest to the black cross?" -- where is the cross;
                 which shape is nearest to it (options: kinds that are all in the image).
sum       3      "How many red squares and blue circles are there in total?" -- count,
                 count, add.
diff      3      "What is the difference between the number of red squares and the number
                 of blue circles?" -- count, count, subtract.
most      4      "Which are the most numerous: red squares, blue circles or green
                 triangles?" -- count three kinds, compare (a tie is an option).
net       4      "How many more red squares and blue circles are there together than
                 green triangles?" -- count three kinds, add and subtract.
========  =====  ==========================================================================

``--rationale verbose`` writes each count as an enumeration ("I look for the red squares and
count them one by one: 1, 2, 3. There are 3 red squares.") and adds a last step matching the
value to its letter ("The answer 2 is option (C)."): about three times the tokens of the
terse default, closer to the length of real CoT rationales (the paper's CoT baselines
write 77-185 tokens).

Four options per question; the correct letter is balanced exactly (each block of four
consecutive samples uses every letter once). Each template draws its answer uniformly
(a value in a fixed range, a winner or a tie, a kind in the image) and then counts and
distractors from the same range, so the options alone do not give the answer away: the
correct number is equally often the smallest, second, third or largest option.

Output, in the raw M3CoT schema so it loads through the same code as real data::

    DIR/train.jsonl, DIR/test.jsonl   one row per sample: id, category, image_id, question,
                                       choices, context, answer (letter), rationale, split,
                                       image ("images/<id>.png"), domain, topic
    DIR/images/<id>.png               the images
    DIR/synth_config.json             the seed, the counts and every knob

``--context-sentences N`` fills the row's ``context`` with N irrelevant sentences (the prompt puts
it between the image and the question); ``--texture PX`` draws the kinds as striped and checked
squares (``--frame PX``: inside a solid frame); ``--input-size`` and ``--grid`` render an image finer than the
model sees it (preset ``far``).

Determinism: sample ``i`` of a split depends only on (seed, split, i) and the knobs, so the
same command writes byte-identical files, and the test set does not change with ``--train``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (214, 39, 40),
    "blue": (31, 90, 210),
    "green": (34, 150, 60),
    "yellow": (230, 190, 20),
}
SHAPES = ("square", "circle", "triangle", "diamond")
TEXTURED = ("striped square", "checked square")
"""The shape kinds with ``--texture``: squares half colour, half background, in vertical stripes or a
checkerboard, so the two have the same colour mass and only detail finer than the texture tells them apart."""
SPLIT_CODES = {"train": 0, "test": 1}
_LETTER_STREAM = 1  # separate random stream for the balanced answer letters
_REGIONS = (
    ("top left", "top", "top right"),
    ("left", "centre", "right"),
    ("bottom left", "bottom", "bottom right"),
)

Kind = tuple[str, str]  # (colour, shape)
RATIONALE_STYLES = ("terse", "verbose")


@dataclass(frozen=True)
class SynthConfig:
    """The difficulty knobs; every field is a ``vedas data synth`` flag of the same name."""

    image_size: int = field(default=112, metadata={"help": "side of the square image in pixels"})
    shape_size: int = field(
        default=7, metadata={"help": "side of one shape in pixels; small, so fine detail matters"}
    )
    max_objects: int = field(
        default=12, metadata={"help": "most shapes in one image, counted and distractors together"}
    )
    max_count: int = field(default=4, metadata={"help": "most shapes of one asked-about kind"})
    colors: int = field(default=3, metadata={"help": "colours drawn, 2-4 (red, blue, green, yellow)"})
    shapes: int = field(
        default=3,
        metadata={
            "help": "shape kinds drawn, 1-4 (square, circle, triangle, diamond); 1: colour alone tells kinds apart"
        },
    )
    min_steps: int = field(default=2, metadata={"help": "fewest reasoning steps a question may need, 2-4"})
    max_steps: int = field(default=4, metadata={"help": "most reasoning steps a question may need, 2-4"})
    noise: float = field(
        default=0.08, metadata={"help": "background noise amplitude, a fraction of 255 (0: flat)"}
    )
    clutter: int = field(default=10, metadata={"help": "most thin grey clutter strokes per image"})
    templates: str = field(
        default="",
        metadata={"help": "comma-separated templates to draw from (locate,sum,diff,most,net); '' = all"},
    )
    fixed_kinds: bool = field(
        default=False,
        metadata={
            "help": "always ask about the first kinds (red, then blue, ...): no kind to copy from the question"
        },
    )
    sorted_options: bool = field(
        default=False,
        metadata={
            "help": "numeric options in ascending order (the letter then follows the value, balanced "
            "in expectation rather than per block of four)"
        },
    )
    rationale: str = field(
        default="terse",
        metadata={
            "help": "rationale style: 'terse' (one short sentence per step) or 'verbose' (each count "
            "enumerated shape by shape, and a last step matching the value to its option letter: "
            "about 3x the tokens, closer to the length of real CoT data)"
        },
    )

    input_size: int = field(
        default=0,
        metadata={
            "help": "side in px the model is meant to see the image at (its processor's max_pixels = "
            "input-size^2): a larger image-size is downscaled in the prompt, and only a re-encoded crop "
            "sees the rendering's finer detail; 0: image-size"
        },
    )
    grid: int = field(
        default=0,
        metadata={
            "help": "shapes sit in distinct cells of a grid x grid layout (e.g. the merged-token grid, "
            "so no token holds two shapes); 0: image-size / (2 x shape-size)"
        },
    )
    texture: int = field(
        default=0,
        metadata={
            "help": "px of one stripe or check: > 0 draws the kinds as striped and checked squares (--shapes "
            "1-2), the same colour mass, told apart only by detail of that size; 0: plain shapes"
        },
    )
    frame: int = field(
        default=0,
        metadata={
            "help": "with --texture: px of solid colour around each textured square, so the texture fills only "
            "its core (the tiny model reads a solid fill's colour, not a fully striped one's); 0: none"
        },
    )
    context_sentences: int = field(
        default=0,
        metadata={
            "help": "sentences of irrelevant text (earlier conversation) placed as the context between "
            "the image and the question, so the question and the reasoning sit far from the image; 0: none"
        },
    )

    def __post_init__(self) -> None:
        def check(ok: bool, flag: str, why: str) -> None:
            if not ok:
                raise ValueError(f"--{flag.replace('_', '-')}: {why}")

        check(32 <= self.image_size <= 2048, "image_size", f"must be in 32..2048, got {self.image_size}")
        check(
            3 <= self.shape_size <= self.image_size // 4,
            "shape_size",
            f"must be in 3..image_size/4, got {self.shape_size}",
        )
        check(2 <= self.colors <= len(COLORS), "colors", f"must be in 2..{len(COLORS)}, got {self.colors}")
        names = self.shape_names
        check(1 <= self.shapes <= len(names), "shapes", f"must be in 1..{len(names)}, got {self.shapes}")
        check(
            self.colors * self.shapes >= 4,
            "shapes",
            f"colours x shapes must give at least 4 kinds (locate's options), got {self.colors} x {self.shapes}",
        )
        check(
            2 <= self.min_steps <= self.max_steps <= 4, "min_steps", "need 2 <= min-steps <= max-steps <= 4"
        )
        check(
            0 <= self.texture <= self.shape_size // 2,
            "texture",
            f"must be 0 or in 1..shape_size/2 (a stripe and a gap fit a shape), got {self.texture}",
        )
        check(
            self.frame == 0 or (self.texture and 2 * (self.frame + self.texture) <= self.shape_size),
            "frame",
            f"needs --texture and 2 x (frame + texture) <= shape_size (a stripe and a gap fit the core), "
            f"got frame {self.frame}, texture {self.texture}",
        )
        check(
            self.input_size == 0 or MERGED_CELL_PX <= self.input_size <= self.image_size,
            "input_size",
            f"must be 0 or in {MERGED_CELL_PX}..image_size, got {self.input_size}",
        )
        check(
            self.grid == 0 or 1 <= self.grid <= self.image_size // (self.shape_size + 2),
            "grid",
            f"must be 0 or in 1..image_size/(shape_size+2) (a cell must hold a shape), got {self.grid}",
        )
        check(
            0 <= self.context_sentences <= 200,
            "context_sentences",
            f"must be in 0..200, got {self.context_sentences}",
        )
        check(self.max_count >= 1, "max_count", f"must be at least 1, got {self.max_count}")
        kinds_needed = 3 if self.max_steps == 4 else 2
        check(
            self.max_objects >= kinds_needed * self.max_count,
            "max_objects",
            f"must be at least {kinds_needed} x max-count = {kinds_needed * self.max_count}",
        )
        check(
            self.max_objects + 1 <= self.cells**2,
            "max_objects",
            f"at most {self.cells**2 - 1} shapes fit this image",
        )
        check(0.0 <= self.noise <= 0.5, "noise", f"must be in 0..0.5, got {self.noise}")
        check(0 <= self.clutter <= 100, "clutter", f"must be in 0..100, got {self.clutter}")
        check(
            self.rationale in RATIONALE_STYLES,
            "rationale",
            f"must be one of {list(RATIONALE_STYLES)}, got {self.rationale!r}",
        )
        unknown = [t for t in self.template_names() if t not in TEMPLATES]
        check(not unknown, "templates", f"unknown {unknown}; choose from {list(TEMPLATES)}")
        check(bool(self.eligible()), "templates", "no template fits --min-steps/--max-steps")

    def template_names(self) -> list[str]:
        return [t.strip() for t in self.templates.split(",") if t.strip()]

    def eligible(self) -> list[str]:
        """The templates this config draws from, in table order."""
        chosen = self.template_names()
        return [
            n
            for n, (steps, _, _) in TEMPLATES.items()
            if self.min_steps <= steps <= self.max_steps and (not chosen or n in chosen)
        ]

    @property
    def cells(self) -> int:
        """Shapes sit in distinct cells of a cells x cells grid, so they never overlap."""
        return self.grid or self.image_size // (2 * self.shape_size)

    @property
    def input_side(self) -> int:
        """The side the model sees the image at (``input_size``, else the rendered ``image_size``)."""
        return self.input_size or self.image_size

    @property
    def kinds(self) -> list[Kind]:
        return [(c, s) for c in list(COLORS)[: self.colors] for s in self.shape_names[: self.shapes]]

    @property
    def shape_names(self) -> tuple[str, ...]:
        return TEXTURED if self.texture else SHAPES


# Named presets of the knobs (``vedas data synth --preset NAME``; explicit flags override them).
# ``easy`` is the demo's earlier benchmark: 112-px images (16 merged visual tokens) of clean 12-px
# squares, one 3-step question. ``fine`` (docs/design.md#fine-preset; the demo's) is built so that
# replay has to choose and detail matters: 168-px images (36 merged tokens of 28 px, of which the
# demo's T_r·K = 4·2 replays 8), 14-px squares (half a merged cell, each alone in its cell), up to
# 12 shapes, counts up to 3, and 3- or 4-step questions (difference of two counts, or two counts
# added and a third subtracted). The first ``fine`` (224 px, 8-px shapes) was abandoned: the
# design note says why. ``far`` (docs/design.md#far-preset; not calibrated yet) is where visual replay's
# premise can be tested: ``fine``'s 36 merged tokens in the prompt, but 16 irrelevant sentences (~170 BPE
# tokens) between the image and the question, so attention to the image has room to decay, and images
# rendered at 504 px (3x the 168-px prompt side) whose kinds (striped vs checked squares, 3-px texture,
# the same colour mass) are much weaker at the prompt's resolution than in SCF-VR's re-encoded crop.
# ``long`` keeps ``fine``'s render and takes only ``far``'s context: ``cot`` reads the image on it,
# where on ``far`` it did not. ``detail`` is ``far``'s render with the texture inside a 6-px solid frame on
# 54-px squares and no context: the kinds are 2.1x stronger in SCF-VR's crop than in the prompt, and ``cot``
# reads them on a wider random tower (``vedas demo`` gives it ``vision_hidden`` 256).
PRESETS: dict[str, dict[str, Any]] = {
    "easy": dict(
        image_size=112,
        shape_size=12,
        max_objects=8,
        max_count=3,
        colors=4,
        shapes=1,
        noise=0.0,
        clutter=0,
        min_steps=3,
        max_steps=3,
        templates="diff",
        fixed_kinds=True,
        sorted_options=True,
        rationale="verbose",
    ),
    "fine": dict(
        image_size=168,
        shape_size=14,
        max_objects=12,
        max_count=3,
        colors=4,
        shapes=1,
        noise=0.0,
        clutter=0,
        min_steps=3,
        max_steps=4,
        templates="diff,net",
        fixed_kinds=True,
        sorted_options=True,
        rationale="verbose",
    ),
}
PRESETS["far"] = {  # fine's questions and layout, rendered finer and placed far from the reasoning
    **PRESETS["fine"],
    "image_size": 504,
    "input_size": 168,
    "grid": 6,
    "shape_size": 42,
    "shapes": 2,
    "texture": 3,
    "context_sentences": 16,
}
PRESETS[
    "long"
] = {  # fine's image, far's context: attention to the image has room to decay (design#long-preset)
    **PRESETS["fine"],
    "context_sentences": 16,
}
PRESETS[
    "detail"
] = {  # far's render, framed, on 54-px squares, no context: SCF-VR's crop (design#detail-preset)
    **PRESETS["far"],
    "shape_size": 54,
    "frame": 6,
    "context_sentences": 0,
}
MERGED_CELL_PX = 28
"""Side of one merged visual token in pixels for Qwen2-VL-style towers (14-px patches, 2×2 merge)."""


def preset(name: str, **overrides: Any) -> SynthConfig:
    """The :class:`SynthConfig` of preset ``name`` with ``overrides`` on top."""
    if name not in PRESETS:
        raise ValueError(f"--preset: unknown {name!r}; choose from {list(PRESETS)}")
    return SynthConfig(**{**PRESETS[name], **overrides})


def merged_tokens(cfg: SynthConfig) -> int:
    """Merged visual tokens of one image of ``cfg`` at the side the model sees it (``input_side``, a
    multiple of 28 px: the processor's resize lands on it exactly)."""
    return (cfg.input_side // MERGED_CELL_PX) ** 2


ADDED_KNOBS = {"input_size": 0, "grid": 0, "texture": 0, "frame": 0, "context_sentences": 0}
"""Knobs added after ``easy`` and ``fine`` were measured, with the values that leave them as they were."""


def config_dict(cfg: SynthConfig) -> dict[str, Any]:
    """``cfg``'s knobs as ``synth_config.json`` records them: the :data:`ADDED_KNOBS` only where set, so
    an ``easy`` or ``fine`` folder (and any settings compared against one written before) stays the same."""
    return {k: v for k, v in asdict(cfg).items() if ADDED_KNOBS.get(k, object()) != v}


@dataclass(frozen=True)
class Shape:
    color: str
    shape: str
    x: float
    y: float


@dataclass(frozen=True)
class Sample:
    """One generated sample: its M3CoT-schema row and its image."""

    row: dict[str, Any]
    image: Image.Image


# --------------------------------------------------------------------------- text


def plural(kind: Kind, n: int = 2) -> str:
    color, shape = kind
    return f"{color} {shape}" if n == 1 else f"{color} {shape}s"


def count_sentence(kind: Kind, n: int) -> str:
    if n == 0:
        return f"There are no {plural(kind)}."
    return f"There is 1 {plural(kind, 1)}." if n == 1 else f"There are {n} {plural(kind)}."


def counted_sentence(kind: Kind, n: int) -> str:
    """The verbose count step: the shapes enumerated one by one, then the count."""
    if n == 0:
        return f"I look for the {plural(kind)} and find none. {count_sentence(kind, n)}"
    numbers = ", ".join(str(i) for i in range(1, n + 1))
    return f"I look for the {plural(kind)} and count them one by one: {numbers}. {count_sentence(kind, n)}"


def verbose_steps(plan: _Plan, letter: str) -> list[str]:
    """``plan``'s steps in the verbose style: every count template writes one count sentence per
    asked-about kind first (``plan.kinds``, ``plan.counts``), which become enumerations; the
    remaining steps stay; a last step matches the answer to its option letter."""
    counts = [counted_sentence(k, n) for k, n in zip(plan.kinds, plan.counts)]
    return [*counts, *plan.steps[len(counts) :], f"The answer {plan.answer} is option ({letter})."]


# The distractor context: sentences about other things, built from words that never name a colour,
# a shape, a number or a position, so nothing in it bears on the question (a model that reads it
# for the answer learns nothing); drawn from their own random stream, so a sample's scene, question
# and letter are the same with or without it.
_CONTEXT_STREAM = 2
_CONTEXT_WORDS = (
    ("The gardener", "A child", "My neighbour", "The old teacher", "Someone", "The baker", "A traveller",
     "The pilot", "Her cousin", "The farmer"),
    ("painted", "carried", "found", "lost", "borrowed", "cleaned", "repaired", "sold", "watched",
     "described"),
    ("wooden", "heavy", "tiny", "broken", "shiny", "dusty", "soft", "strange", "quiet", "warm"),
    ("chair", "kettle", "bicycle", "lamp", "basket", "ladder", "blanket", "window", "letter",
     "umbrella"),
    ("near the river", "in the kitchen", "after lunch", "on the train", "at the market",
     "behind the barn", "during the storm", "before sunrise", "at the station", "in the garden"),
)  # fmt: skip


def distractor_text(seed: int, split: str, index: int, sentences: int) -> str:
    """``sentences`` irrelevant sentences for sample ``index`` ('' for 0): the preset's long context."""
    if sentences == 0:
        return ""
    rng = np.random.default_rng([seed, SPLIT_CODES[split], _CONTEXT_STREAM, index])
    picks = rng.integers(0, len(_CONTEXT_WORDS[0]), size=(sentences, len(_CONTEXT_WORDS)))
    return " ".join(
        "{} {} the {} {} {}.".format(*(words[int(i)] for words, i in zip(_CONTEXT_WORDS, row)))
        for row in picks
    )


# --------------------------------------------------------------------------- templates
# A template draws counts and writes the question; it returns the shapes that must appear
# (positions are assigned later), the question, the steps and the answer with three
# distractors. Distractor shapes of other kinds are added afterwards by ``_scene``.


@dataclass
class _Plan:
    kinds: list[Kind]  # the kinds the question is about; other kinds may be distractors
    counts: list[int]
    question: str
    steps: list[str]
    answer: str
    distractors: list[str]


def _numeric_options(rng: np.random.Generator, value: int, support: int) -> list[str]:
    """Three distractors drawn uniformly from ``0..support-1`` (at least ``0..3``).

    The templates draw ``value`` uniformly from the same range, so given the four options
    each one is equally likely to be the answer: neither the smallest option nor the
    middle one is a shortcut.
    """
    pool = [v for v in range(max(support, 4)) if v != value]
    return [str(pool[int(i)]) for i in rng.choice(len(pool), size=3, replace=False)]


def _split(rng: np.random.Generator, total: int, cap: int) -> tuple[int, int]:
    """Two counts in ``0..cap`` that add up to ``total``, the first uniform over what fits."""
    first = int(rng.integers(max(0, total - cap), min(total, cap) + 1))
    return first, total - first


# Each template draws its ANSWER uniformly first and then counts that produce it, so the
# answer distribution carries no hint (drawing counts first piles answers onto small values).


def _sum(rng: np.random.Generator, cfg: SynthConfig, kinds: list[Kind]) -> _Plan:
    top = 2 * cfg.max_count
    total = int(rng.integers(0, top + 1))
    a, b = _split(rng, total, cfg.max_count)
    return _Plan(
        kinds,
        [a, b],
        f"How many {plural(kinds[0])} and {plural(kinds[1])} are there in total?",
        [count_sentence(kinds[0], a), count_sentence(kinds[1], b), f"{a} + {b} = {total}."],
        str(total),
        _numeric_options(rng, total, top + 1),
    )


def _diff(rng: np.random.Generator, cfg: SynthConfig, kinds: list[Kind]) -> _Plan:
    difference = int(rng.integers(0, cfg.max_count + 1))
    small = int(rng.integers(0, cfg.max_count - difference + 1))
    big = small + difference
    a, b = (big, small) if rng.random() < 0.5 else (small, big)
    return _Plan(
        kinds,
        [a, b],
        f"What is the difference between the number of {plural(kinds[0])} and the number of {plural(kinds[1])}?",
        [count_sentence(kinds[0], a), count_sentence(kinds[1], b), f"{big} - {small} = {difference}."],
        str(difference),
        _numeric_options(rng, difference, cfg.max_count + 1),
    )


def _net(rng: np.random.Generator, cfg: SynthConfig, kinds: list[Kind]) -> _Plan:
    top = 2 * cfg.max_count
    value = int(rng.integers(0, top + 1))
    c = int(rng.integers(0, min(cfg.max_count, top - value) + 1))
    a, b = _split(rng, value + c, cfg.max_count)
    return _Plan(
        kinds,
        [a, b, c],
        f"How many more {plural(kinds[0])} and {plural(kinds[1])} are there together than {plural(kinds[2])}?",
        [
            count_sentence(kinds[0], a),
            count_sentence(kinds[1], b),
            count_sentence(kinds[2], c),
            f"{a} + {b} - {c} = {value}.",
        ],
        str(value),
        _numeric_options(rng, value, top + 1),
    )


def _most(rng: np.random.Generator, cfg: SynthConfig, kinds: list[Kind]) -> _Plan:
    # Four equally likely outcomes: one of the three kinds wins, or a tie (a win needs a
    # count of 2 or more, so with --max-count 1 every question is a tie).
    outcome = int(rng.integers(4)) if cfg.max_count > 1 else 3
    if outcome < 3:
        top = int(rng.integers(2, cfg.max_count + 1))
        counts = [int(rng.integers(1, top)) for _ in range(3)]
        counts[outcome] = top
    else:
        top = int(rng.integers(1, cfg.max_count + 1))
        tied = 3 if top == 1 else int(rng.integers(2, 4))
        leaders = set(rng.choice(3, size=tied, replace=False).tolist())
        counts = [top if i in leaders else int(rng.integers(1, top)) for i in range(3)]
    winners = [k for k, n in zip(kinds, counts) if n == top]
    names = [plural(k) for k in kinds]
    tie = "there is a tie"
    if len(winners) == 1:
        answer = plural(winners[0])
        last = f"{top} is the largest count, so the {answer} are the most numerous."
    else:
        answer = tie
        last = f"{' and '.join(plural(k) for k in winners)} are tied at {top}, so there is a tie."
    return _Plan(
        kinds,
        counts,
        f"Which are the most numerous: {names[0]}, {names[1]} or {names[2]}?",
        [*(count_sentence(k, n) for k, n in zip(kinds, counts)), last],
        answer,
        [o for o in [*names, tie] if o != answer],
    )


_Template = Callable[[np.random.Generator, SynthConfig, list[Kind]], _Plan]
# name -> (steps, number of asked-about kinds, builder); "locate" is built in _locate.
TEMPLATES: dict[str, tuple[int, int, _Template | None]] = {
    "locate": (2, 0, None),
    "sum": (3, 2, _sum),
    "diff": (3, 2, _diff),
    "most": (4, 3, _most),
    "net": (4, 3, _net),
}


# --------------------------------------------------------------------------- scene


def _place(rng: np.random.Generator, cfg: SynthConfig, n: int) -> list[tuple[float, float]]:
    """Centres of ``n`` shapes in distinct grid cells, jittered inside each cell."""
    cell = cfg.image_size / cfg.cells
    chosen = rng.choice(cfg.cells * cfg.cells, size=n, replace=False)
    margin = cfg.shape_size / 2 + 1
    jitter = rng.uniform(margin, cell - margin, size=(n, 2))
    return [
        (float(c % cfg.cells * cell + jx), float(c // cfg.cells * cell + jy))
        for c, (jx, jy) in zip(chosen, jitter)
    ]


def _with_distractors(
    rng: np.random.Generator, cfg: SynthConfig, kinds: list[Kind], counts: list[int]
) -> list[Kind]:
    """The asked-about shapes plus a random number of shapes of the other kinds."""
    others = [k for k in cfg.kinds if k not in kinds]
    drawn = [k for k, n in zip(kinds, counts) for _ in range(n)]
    room = cfg.max_objects - len(drawn)
    if others and room > 0:
        extra = int(rng.integers(0, room + 1))
        drawn += [others[int(i)] for i in rng.integers(0, len(others), size=extra)]
    order = rng.permutation(len(drawn))
    return [drawn[int(i)] for i in order]


def _locate(rng: np.random.Generator, cfg: SynthConfig) -> tuple[list[Shape], tuple[float, float], _Plan]:
    """Shapes and a black cross such that one shape is clearly the nearest to the cross.

    At least four kinds are drawn and every option names a kind in the image, so finding
    which option is present at all does not answer the question: it takes locating.
    """
    kinds = cfg.kinds
    while True:  # rejection sampling; an unambiguous layout comes within a few tries
        n = int(rng.integers(4, cfg.max_objects + 1))
        centres = _place(rng, cfg, n + 1)
        cross, spots = centres[0], centres[1:]
        dist = sorted((np.hypot(x - cross[0], y - cross[1]), i) for i, (x, y) in enumerate(spots))
        if dist[0][0] < 0.7 * dist[1][0]:
            break
    picks = [*rng.choice(len(kinds), size=4, replace=False), *rng.integers(0, len(kinds), size=n - 4)]
    picks = [picks[int(i)] for i in rng.permutation(n)]
    shapes = [Shape(*kinds[int(k)], x, y) for k, (x, y) in zip(picks, spots)]
    nearest = shapes[dist[0][1]]
    answer = f"{nearest.color} {nearest.shape}"
    present = sorted({f"{s.color} {s.shape}" for s in shapes} - {answer})
    distractors = [present[int(i)] for i in rng.choice(len(present), size=3, replace=False)]
    third = cfg.image_size / 3
    region = _REGIONS[min(int(cross[1] // third), 2)][min(int(cross[0] // third), 2)]
    where = "in the centre" if region == "centre" else f"at the {region}"
    plan = _Plan(
        [],
        [],
        "Which shape is nearest to the black cross?",
        [f"The black cross is {where} of the image.", f"The shape nearest to it is a {answer}."],
        answer,
        distractors,
    )
    return shapes, cross, plan


def render(
    rng: np.random.Generator, cfg: SynthConfig, shapes: list[Shape], cross: tuple[float, float] | None
) -> Image.Image:
    """Noisy grey background, clutter strokes, then the shapes (and the cross) on top."""
    size = cfg.image_size
    base = rng.integers(170, 200)
    noise = (
        rng.integers(-int(cfg.noise * 255), int(cfg.noise * 255) + 1, size=(size, size, 1))
        if cfg.noise
        else 0
    )
    # Grey noise (same on all channels) keeps the shapes' colours the only colour cue.
    # (the full-size grey plane is built first: with noise=0 a scalar would make a 1x1 image)
    plane = np.full((size, size, 1), base, dtype=np.int64) + noise
    pixels = np.clip(plane, 0, 255).astype(np.uint8) * np.ones((1, 1, 3), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(0, cfg.clutter + 1))):
        x, y = rng.uniform(0, size, size=2)
        dx, dy = rng.uniform(-1.5, 1.5, size=2) * cfg.shape_size
        grey = int(rng.integers(100, 150))
        draw.line([(x, y), (x + dx, y + dy)], fill=(grey, grey, grey), width=1)
    h = cfg.shape_size / 2
    for s in shapes:
        fill = COLORS[s.color]
        if s.shape in TEXTURED:
            _textured_square(image, s, h, fill, cfg.texture, cfg.frame)
        elif s.shape == "square":
            draw.rectangle([s.x - h, s.y - h, s.x + h, s.y + h], fill=fill)
        elif s.shape == "circle":
            draw.ellipse([s.x - h, s.y - h, s.x + h, s.y + h], fill=fill)
        elif s.shape == "triangle":
            draw.polygon([(s.x, s.y - h), (s.x + h, s.y + h), (s.x - h, s.y + h)], fill=fill)
        else:  # diamond
            draw.polygon([(s.x, s.y - h), (s.x + h, s.y), (s.x, s.y + h), (s.x - h, s.y)], fill=fill)
    if cross is not None:
        x, y = cross
        draw.line([(x - h, y - h), (x + h, y + h)], fill=(0, 0, 0), width=2)
        draw.line([(x - h, y + h), (x + h, y - h)], fill=(0, 0, 0), width=2)
    return image


def _textured_square(
    image: Image.Image, s: Shape, h: float, fill: tuple[int, int, int], px: int, frame: int = 0
) -> None:
    """A square of side 2h at (s.x, s.y): solid for ``frame`` px from its edge, its core coloured on half
    its pixels (vertical stripes or checks of ``px`` pixels from the core's top-left corner). Whatever was
    drawn before (background noise, clutter) shows through the core's gaps, framed or not."""
    # drawn in masks over the square's box only (shifted by whole pixels: PIL rasterises them the same)
    x0, y0 = int(np.floor(s.x - h)), int(np.floor(s.y - h))
    w, hh = int(np.ceil(s.x + h)) + 1 - x0, int(np.ceil(s.y + h)) + 1 - y0

    def box(half: float) -> np.ndarray:
        mask = Image.new("L", (w, hh), 0)
        ImageDraw.Draw(mask).rectangle(
            [s.x - half - x0, s.y - half - y0, s.x + half - x0, s.y + half - y0], fill=1
        )
        return np.asarray(mask).astype(bool)

    core = h - frame
    rows, cols = np.mgrid[0:hh, 0:w]
    rows, cols = (rows + y0 - int(np.floor(s.y - core))) // px, (cols + x0 - int(np.floor(s.x - core))) // px
    on = cols % 2 == 0 if s.shape == "striped square" else (cols + rows) % 2 == 0
    paint = box(h) & (on | ~box(core))  # unframed, the core is the whole square
    image.paste(fill, (x0, y0, x0 + w, y0 + hh), mask=Image.fromarray(paint.astype(np.uint8) * 255))


# --------------------------------------------------------------------------- samples


def answer_letter(seed: int, split: str, index: int) -> int:
    """The correct option's position: every block of four samples uses each letter once."""
    block = np.random.default_rng([seed, SPLIT_CODES[split], _LETTER_STREAM, index // 4])
    return int(block.permutation(4)[index % 4])


@dataclass(frozen=True)
class Scene:
    """Where everything is drawn in one sample's image (pixels), and which of it the question needs."""

    template: str
    shapes: list[Shape]
    cross: tuple[float, float] | None
    relevant: list[int]
    """Indices into ``shapes`` the question is about (its kinds; for ``locate``, the nearest shape)."""
    size: int
    shape_size: int


def _draw(
    index: int, split: str, seed: int, cfg: SynthConfig
) -> tuple[np.random.Generator, str, list[Shape], tuple[float, float] | None, _Plan]:
    if split not in SPLIT_CODES:
        raise ValueError(f"split must be one of {list(SPLIT_CODES)}, got {split!r}")
    rng = np.random.default_rng([seed, SPLIT_CODES[split], 0, index])
    names = cfg.eligible()
    name = names[int(rng.integers(len(names)))]
    cross = None
    _, n_kinds, build = TEMPLATES[name]
    if build is None:
        shapes, cross, plan = _locate(rng, cfg)
    else:
        picked = rng.choice(len(cfg.kinds), size=n_kinds, replace=False)
        if cfg.fixed_kinds:  # drawn above all the same: every later draw of the sample stays as it was
            picked = np.arange(n_kinds)
        plan = build(rng, cfg, [cfg.kinds[int(i)] for i in picked])
        drawn = _with_distractors(rng, cfg, plan.kinds, plan.counts)
        shapes = [Shape(*k, x, y) for k, (x, y) in zip(drawn, _place(rng, cfg, len(drawn)))]
    return rng, name, shapes, cross, plan


def scene(index: int, split: str = "test", seed: int = 0, cfg: SynthConfig | None = None) -> Scene:
    """The layout of sample ``index`` (the same draws as :func:`make_sample`, without rendering):
    what ``vedas analyze replay`` scores the replayed tokens against."""
    cfg = cfg or SynthConfig()
    _, name, shapes, cross, plan = _draw(index, split, seed, cfg)
    if cross is None:
        wanted = set(plan.kinds)
        relevant = [i for i, s in enumerate(shapes) if (s.color, s.shape) in wanted]
    else:
        dist = [np.hypot(s.x - cross[0], s.y - cross[1]) for s in shapes]
        relevant = [int(np.argmin(dist))]
    return Scene(name, shapes, cross, relevant, cfg.image_size, cfg.shape_size)


def make_sample(index: int, split: str = "test", seed: int = 0, cfg: SynthConfig | None = None) -> Sample:
    """Sample ``index`` of ``split``; a pure function of its arguments."""
    cfg = cfg or SynthConfig()
    rng, name, shapes, cross, plan = _draw(index, split, seed, cfg)
    correct = answer_letter(seed, split, index)
    wrong = [plan.distractors[int(i)] for i in rng.permutation(3)]
    choices = [*wrong[:correct], plan.answer, *wrong[correct:]]
    if cfg.sorted_options and all(c.isdigit() for c in choices):
        choices = sorted(choices, key=int)
        correct = choices.index(plan.answer)
    sample_id = f"synth-{split}-{index:06d}"
    row = {
        "id": sample_id,
        "category": name,
        "image_id": sample_id,
        "question": plan.question,
        "choices": choices,
        "context": distractor_text(seed, split, index, cfg.context_sentences),
        "answer": "ABCD"[correct],
        "rationale": "\n\n".join(
            verbose_steps(plan, "ABCD"[correct]) if cfg.rationale == "verbose" else plan.steps
        ),
        "split": split,
        "image": f"images/{sample_id}.png",
        "domain": "synthetic",
        "topic": name,
    }
    return Sample(row=row, image=render(rng, cfg, shapes, cross))


def write(
    out: str | Path,
    train: int,
    test: int,
    seed: int = 0,
    cfg: SynthConfig | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Write the benchmark under ``out`` (layout in the module docstring); returns a summary.

    The summary holds the counts per split, per template and per answer letter.
    """
    cfg = cfg or SynthConfig()
    if train < 0 or test < 0:
        raise ValueError(f"--train and --test must be >= 0, got {train} and {test}")
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"seed": seed, "config": config_dict(cfg), "splits": {}}
    bar = _progress_bar(train + test, progress)
    for split, count in (("train", train), ("test", test)):
        letters = dict.fromkeys("ABCD", 0)
        templates = dict.fromkeys(TEMPLATES, 0)
        with open(out / f"{split}.jsonl", "w", encoding="utf-8", newline="\n") as f:
            for index in range(count):
                sample = make_sample(index, split, seed, cfg)
                # Low compression: noisy images barely shrink, and writing speed matters more.
                sample.image.save(out / sample.row["image"], format="PNG", compress_level=1)
                f.write(json.dumps(sample.row, ensure_ascii=False) + "\n")
                letters[sample.row["answer"]] += 1
                templates[sample.row["category"]] += 1
                if bar is not None:
                    bar.update(1)
        summary["splits"][split] = {"samples": count, "answers": letters, "templates": templates}
    if bar is not None:
        bar.close()
    with open(out / "synth_config.json", "w", encoding="utf-8", newline="\n") as f:
        json.dump(summary, f, indent=2, sort_keys=True)
        f.write("\n")
    return summary


def _progress_bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="sample", desc="vedas data synth")
