"""API misuse at the door of ``generate``: the message says what was passed and what is expected."""

from __future__ import annotations

import pytest

from vedas.errors import InputError

Q = "How many red squares?"


@pytest.fixture
def image(make_image):
    return make_image(56, 84, 0)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        # item 10: "the lengths differ (1 vs 9)": a bare question string
        (
            lambda im: {"images": [im], "questions": Q},
            r"questions: expected a list of strings, one per sample; got a str \('How many red squares\?'\); for one question pass \['How many red squares\?'\]",
        ),
        # item 10: "a PNG has no len()": a bare image
        (
            lambda im: {"images": im, "questions": [Q]},
            r"images: expected a list with one entry per question .*; got a PIL image \(84×56\); for one sample pass \[image\]",
        ),
        (
            lambda im: {"images": "cat.png", "questions": [Q]},
            r"images: expected a list .*; got a str \('cat.png'\); for one sample pass \[image\]",
        ),
        (lambda im: {"images": [im, im], "questions": [Q]}, r"images: 2 entries for 1 questions"),
        (
            lambda im: {"images": [3], "questions": [Q]},
            r"images\[0\]: expected a PIL image, a path, a list of them, or None; got a int",
        ),
        (
            lambda im: {"images": [im], "questions": [Q], "choices": ["1", "2"]},
            r"choices: 2 entries for 1 questions; expected one entry per question; for one question pass \[\['1', '2'\]\]",
        ),
        (
            lambda im: {"images": [im], "questions": [Q], "choices": [[1, 2]]},
            r"choices\[0\]: expected a list of option strings or None; got a list",
        ),
        (lambda im: {"images": [im], "questions": []}, r"questions: the batch is empty"),
        (
            lambda im: {"images": [im], "questions": [Q], "latents": True},
            r"latents: must be an int ≥ 0, got True",
        ),
    ],
)
def test_misuse_is_named_at_the_door(vm, image, call, match):
    with pytest.raises(InputError, match=match):
        vm.generate(**call(image))


def test_an_error_about_one_record_names_the_record(vm, image, tmp_path):
    from vedas.data.record import Record

    good = Record(id="ok-1", images=[image], question=Q, answer="x")
    bad = Record(id="broken-7", images=[image], question=Q, answer="x")
    bad.images = [tmp_path / "gone.png"]  # a path that is no longer there
    with pytest.raises(InputError, match=r"^record 'broken-7': cannot read image file") as e:
        vm.generate_records([good, bad], max_new_tokens=2)
    assert e.value.record_id == "broken-7"
