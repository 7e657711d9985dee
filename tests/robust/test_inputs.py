"""Images follow the model's own processor (small ones upsampled, ``min_pixels``/``max_pixels``
bound the resize), and a prompt over the context limit is an error naming the record and the
lengths, or, when asked, has its context cut to fit."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

from vedas.config import ConfigError, LatentConfig
from vedas.data.record import Record
from vedas.errors import InputError

FIXTURES = __import__("pathlib").Path(__file__).resolve().parents[1] / "fixtures"


@pytest.mark.parametrize("size", [(10, 10), (300, 20), (4, 4), (20, 300)])
def test_small_images_are_resized_as_the_processor_itself_does(vm, make_image, size):
    """Item 6: images under 28 px were rejected, though the processor resizes them."""
    image = make_image(size[1], size[0], 0)
    batch = vm.prepare([image], ["How many?"])
    own = vm.processor.image_processor(images=[image], return_tensors="pt")  # the reference
    if "image_grid_thw" in own:  # Chameleon's image processor has no grid: it always crops one square
        assert batch.image_grid_thw.tolist() == own["image_grid_thw"].tolist()
    assert torch.equal(batch.pixel_values, own["pixel_values"].to(batch.pixel_values.dtype))
    texts, steps = vm.generate([image], ["How many?"], max_new_tokens=2)
    assert len(texts) == 1 and steps[0] >= 1


@pytest.mark.parametrize(
    ("name", "path"), [("m3cot", "m3cot/raw"), ("m3cot", "m3cot/hf"), ("scienceqa", "scienceqa")]
)
def test_the_shipped_fixtures_evaluate(vedas_cli, ckpt, tmp_path, name, path):
    """Item 6: the shipped M3CoT and ScienceQA fixtures (4×4 px images) could not be evaluated."""
    out = tmp_path / "report.json"
    code, _, err = vedas_cli.main(
        "eval",
        "--checkpoint",
        str(ckpt),
        "--data",
        f"{name}:{FIXTURES / path}",
        "--max-new-tokens",
        "2",
        "--out",
        str(out),
    )
    assert code == 0, err
    assert json.loads(out.read_text())["n"] == 3


def test_max_and_min_pixels_bound_the_resize(vm, make_image):
    """Item 8: no resolution control: a 4000×3000 photo became 15,301 visual tokens."""
    photo = make_image(300, 400, 0).resize((4000, 3000))
    if vm.model.config.model_type == "chameleon":  # a fixed-size processor: the bounds do not apply
        vm.config = LatentConfig(latents=1, replay_k=2, max_new_tokens=2, max_pixels=28 * 28 * 16)
        with pytest.raises(
            InputError, match=r"min_pixels/max_pixels .* chameleon processor resizes to a fixed"
        ):
            vm.prepare([photo], ["How many?"])
        return
    merge, p = vm.backbone.merge_size, vm.backbone.patch_size
    f = p * merge  # 28 px on Qwen2-VL, 32 on Qwen3-VL
    for lo, hi in [(None, f * f * 16), (f * f * 4, f * f * 64)]:
        vm.config = LatentConfig(latents=1, replay_k=2, max_new_tokens=2, min_pixels=lo, max_pixels=hi)
        grid = vm.prepare([photo], ["How many?"]).image_grid_thw[0].tolist()
        own = vm.processor.image_processor.size
        h, w = smart_resize(3000, 4000, f, lo or own["shortest_edge"], hi)  # the processor's own rule
        assert grid == [1, h // p, w // p]
        assert grid[1] * grid[2] // merge**2 <= hi // (f * f)
    vm.config = LatentConfig(min_pixels=f * f * 64)  # small images upsampled to at least that
    grid = vm.prepare([make_image(10, 10, 0)], ["How many?"]).image_grid_thw[0].tolist()
    assert grid[1] * grid[2] * p * p >= f * f * 64
    with pytest.raises(ConfigError, match=r"min_pixels: must be ≤ max_pixels"):
        LatentConfig(min_pixels=10_000, max_pixels=5_000)
    with pytest.raises(ConfigError, match=r"max_pixels: must be None or an int ≥ 784"):
        LatentConfig(max_pixels=100)


def test_eval_and_infer_take_min_and_max_pixels(vedas_cli, ckpt, tmp_path, make_image):
    photo = tmp_path / "photo.png"
    make_image(300, 400, 0).save(photo)
    code, _, err = vedas_cli.main(
        "infer",
        "--checkpoint",
        str(ckpt),
        "--image",
        str(photo),
        "--question",
        "How many?",
        "--max-pixels",
        str(28 * 28 * 4),
        "--max-new-tokens",
        "2",
        "--show-replay",
        str(tmp_path / "r.png"),
    )
    assert code == 0, err
    assert (tmp_path / "r.png").is_file()
    code, _, err = vedas_cli.main("infer", "--checkpoint", str(ckpt), "--question", "q", "--min-pixels", "5")
    assert code == 2 and "min_pixels: must be None or an int ≥ 784" in err
    code, _, err = vedas_cli.main("train", "--print-config", "--latent.max_pixels", "1003520")
    assert code == 0


def test_a_prompt_over_the_context_limit_names_the_record_and_the_lengths(vm, make_image):
    """Item 8: a prompt longer than max_position_embeddings ran without a word."""
    limit = vm.context_limit()
    image = make_image(56, 56, 0)
    long = Record(
        id="long-ctx",
        images=[image],
        question="Which?",
        choices=["a", "b"],
        answer="A",
        answer_index=0,
        context="the " * (limit + 100),
    )
    short = Record(
        id="fine", images=[image], question="Which?", choices=["a", "b"], answer="B", answer_index=1
    )
    vm.config = LatentConfig(latents=2, replay_k=4, max_new_tokens=8)
    with pytest.raises(InputError) as e:
        vm.generate_records([short, long])
    msg = str(e.value)
    assert msg.startswith("record 'long-ctx': ") and e.value.record_id == "long-ctx"
    assert f"+ {2 * 5 + 1} for the latent steps + 8 for the answer (max_new_tokens)" in msg
    assert f"over the model's context limit of {limit} tokens" in msg
    vm.config = LatentConfig(latents=2, replay_k=4, max_new_tokens=8, truncate_context=True)
    reserve = 2 * 5 + 1 + 8
    batch = vm.prepare(**vm.record_inputs([short, long]), mode="vedas", reserve=reserve)
    assert limit - 16 <= int(batch.attention_mask[1].sum()) + reserve <= limit  # cut to fit, not much more
    texts, _ = vm.generate_records([short, long])
    assert len(texts) == 2


def test_the_context_hint_names_latents_when_they_overflow_and_not_a_flag_already_set(vm, make_image):
    """The hint never named --latents, and told a user who had set truncate_context to set it."""
    limit = vm.context_limit()
    image = make_image(56, 56, 0)
    latents = limit // 5  # the latent passes alone (replay_k + 1 = 5 positions each) fill the context
    vm.config = LatentConfig(latents=2, replay_k=4, max_new_tokens=8)
    with pytest.raises(InputError) as e:
        vm.generate([image], ["Which?"], latents=latents)
    msg = str(e.value)
    assert f"+ {latents * 5 + 1} for the latent steps + 8 for the answer" in msg
    assert "lower latents (--latents; each step takes replay_k + 1 positions)" in msg
    assert "set truncate_context (--truncate-context)" in msg
    vm.config = LatentConfig(latents=2, replay_k=4, max_new_tokens=8, truncate_context=True)
    with pytest.raises(InputError) as e:
        vm.generate([image], ["Which?"], latents=latents)
    msg = str(e.value)
    assert "(truncate_context is on, but it has no context to cut)" in msg
    assert "set truncate_context" not in msg and "lower latents (--latents" in msg
    with pytest.raises(InputError) as e:  # no latent steps: no latent advice
        vm.generate([image], ["Which?"], mode="cot", max_new_tokens=limit)
    assert "latent" not in str(e.value)


def test_training_skip_bad_drops_a_record_the_model_cannot_take(vedas_cli, train_args, synth_dir, tmp_path):
    import shutil

    data = shutil.copytree(synth_dir, tmp_path / "synth")
    Image.new("RGB", (600, 2), "white").save(data / "images" / "synth-train-000005.png")
    args = train_args(tmp_path / "run", **{"data.path": data})
    code, _, err = vedas_cli.main(*args)
    assert code == 2 and "record 'synth-train-000005': 600×2 px has an aspect ratio of 300" in err
    code, text, err = vedas_cli.main(
        *train_args(tmp_path / "run2", **{"data.path": data, "data.skip_bad": "true"})
    )
    assert code == 0, err
    assert "skipped synth-train-000005: bad_input" in text
    rows = json.loads((tmp_path / "run2" / "skipped.json").read_text())
    assert [(r["id"], r["reason"]) for r in rows] == [("synth-train-000005", "bad_input")]
