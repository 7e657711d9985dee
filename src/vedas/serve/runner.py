"""One batch of parsed requests through the batched engine: ``VedasModel.generate``, once.

    results = run_jobs(vm, jobs)      # jobs share one BatchKey; one JobResult per job, in order

Every request of a batch goes into the same ``vm.generate`` call, so a row's answer is the
one ``vm.generate`` gives for that request alone (the engine's rows equal their solo runs).
A sampled request (temperature > 0) without a ``seed`` gets a random one, so each row
samples from its own generator and never from what else is in the batch.
"""

from __future__ import annotations

import secrets
import warnings
from collections.abc import Sequence
from typing import Any

from vedas.engine.generate import Details
from vedas.serve.protocol import ChatJob, JobResult


def prompt_tokens(
    vm: Any,
    questions: Sequence[str],
    images: Sequence[Sequence[Any]],
    choices: Sequence[Sequence[str] | None],
    mode: str,
) -> list[int]:
    """Each prompt's length in tokens, image tokens included, without running the image processor.

    The chat template holds one placeholder per image, which the processor expands to the
    image's merged-token count; that count follows from the image's size alone.
    """
    texts = vm.prompt_texts(questions, [len(im) for im in images], choices, None, mode)
    ip = vm.processor.image_processor
    merge = ip.merge_size**2
    ids = vm.tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [
        len(row) + sum(ip.get_number_of_image_patches(im.height, im.width) // merge - 1 for im in ims)
        for row, ims in zip(ids, images)
    ]


def _seeds(jobs: Sequence[ChatJob]) -> list[int] | None:
    if jobs[0].key.temperature == 0:
        return None
    return [secrets.randbits(62) if j.seed is None else j.seed for j in jobs]


def run_jobs(vm: Any, jobs: Sequence[ChatJob]) -> list[JobResult]:
    """Answer ``jobs`` (all with the same :class:`~vedas.serve.protocol.BatchKey`) in one engine call."""
    key = jobs[0].key
    if any(j.key != key for j in jobs):
        raise ValueError("jobs: one engine call takes one mode, latent count, max_tokens and temperature")
    with warnings.catch_warnings():
        # a text-only request turns replay off for its row; the engine's warning would repeat per batch
        warnings.filterwarnings("ignore", message=".*have no image: visual replay is off")
        d = vm.generate(
            [j.images or None for j in jobs],
            [j.question for j in jobs],
            choices=[j.choices for j in jobs],
            mode=key.mode,
            latents=key.latents,
            max_new_tokens=key.max_tokens,
            temperature=key.temperature,
            seed=_seeds(jobs),
            return_details=True,
        )
    assert isinstance(d, Details)
    eos = _eos_id(vm)
    prompts = prompt_tokens(
        vm, [j.question for j in jobs], [j.images for j in jobs], [j.choices for j in jobs], key.mode
    )
    return [
        JobResult(
            text=text,
            prompt_tokens=p,
            generated_tokens=len(ids),
            latent_steps=steps - len(ids),
            finish_reason="stop" if ids and ids[-1] == eos else "length",
            batch_size=len(jobs),
            timings_ms=dict(d.timings_ms),
        )
        for text, ids, steps, p in zip(d.texts, d.token_ids, d.ar_steps, prompts)
    ]


def _eos_id(vm: Any) -> int:
    """The id that ends an answer: ``<|im_end|>`` where the vocabulary has it (as ``VedasModel`` decodes)."""
    tok = vm.tokenizer
    return tok.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tok.get_vocab() else tok.eos_token_id
