"""One batch of parsed requests through the batched engine: ``VedasModel.generate``, once.

    admit(vm, job)                    # at arrival: ApiError 400 for anything the engine would refuse
    results = run_jobs(vm, jobs)      # jobs share one BatchKey; one JobResult per job, in order

Every request of a batch goes into the same ``vm.generate`` call, so a row's answer is the
one ``vm.generate`` gives for that request alone (the engine's rows equal their solo runs).
A sampled request (temperature > 0) without a ``seed`` gets a random one, so each row
samples from its own generator and never from what else is in the batch.

``stop`` sequences and streaming work through the engine's per-step callback: after every
decoded token each such row's text is decoded again, a row whose text holds a stop sequence
ends there (the engine stops decoding it), and a streamed row's new text goes to its
:class:`TextStream`. A batch with neither runs exactly as before, without the callback.
"""

from __future__ import annotations

import copy
import secrets
import threading
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch

from vedas.engine.generate import Details
from vedas.methods import LATENT_METHODS
from vedas.serve.protocol import ChatJob, JobResult, bad


class TextStream:
    """The text of one streamed answer as it is decoded: ``emit`` gets each new piece, once.

    Text is held back while it may still change: trailing whitespace (the final answer is
    stripped), an unfinished UTF-8 character, and the last characters that could start a stop
    sequence. :meth:`finish` sends the rest of the final answer.
    """

    def __init__(self, emit: Callable[[str], None], stop: Sequence[str] = ()) -> None:
        self.emit = emit
        self.sent = ""
        self._hold = max((len(s) for s in stop), default=1) - 1
        self._lock = threading.Lock()

    def push(self, text: str, final: bool = False) -> None:
        if not final:
            text = text.rstrip().rstrip("\ufffd")
            text = text[: len(text) - self._hold] if self._hold else text
        with self._lock:
            # a row re-run alone after its batch failed decodes the same prefix again: send only what is new
            if len(text) > len(self.sent) and text.startswith(self.sent):
                piece, self.sent = text[len(self.sent) :], text
                self.emit(piece)

    def finish(self, text: str) -> None:
        self.push(text, final=True)


def prompt_tokens(
    vm: Any,
    questions: Sequence[str],
    images: Sequence[Sequence[Any]],
    choices: Sequence[Sequence[str] | None],
    mode: str,
    tokenizer: Any = None,
) -> list[int]:
    """Each prompt's length in tokens, image tokens included, without running the image processor.

    The chat template holds one placeholder per image, which the processor expands to the
    image's merged-token count; that count follows from the image's size alone. ``tokenizer``:
    another copy of ``vm.tokenizer`` (a fast tokenizer must not be used by two threads at once).
    """
    texts = vm.prompt_texts(questions, [len(im) for im in images], choices, None, mode)
    ip = vm.processor.image_processor
    merge = ip.merge_size**2
    ids = (tokenizer or vm.tokenizer)(texts, add_special_tokens=False)["input_ids"]
    return [
        len(row) + sum(ip.get_number_of_image_patches(im.height, im.width) // merge - 1 for im in ims)
        for row, ims in zip(ids, images)
    ]


def _seeds(jobs: Sequence[ChatJob]) -> list[int] | None:
    if jobs[0].key.temperature == 0:
        return None
    return [secrets.randbits(62) if j.seed is None else j.seed for j in jobs]


def _reserve(vm: Any, job: ChatJob) -> int:
    """What the engine appends after the prompt (``VedasModel.generate``'s reserve): latent passes, the end token,
    the answer."""
    latent = job.key.mode in LATENT_METHODS
    steps = (vm.config.latents if job.key.latents is None else job.key.latents) if latent else 0
    return steps * (vm.config.replay_k + 1) + int(latent) + job.key.max_tokens


class _Admission:
    """What the arrival checks need of ``vm``'s tokenizer, on their own copy of it.

    The checks run on the server's thread pool while the batch worker tokenises with
    ``vm.tokenizer``; a fast (Rust) tokenizer used by two threads at once raises "Already
    borrowed", which failed whole batches. The copy is used under a lock.
    """

    def __init__(self, vm: Any) -> None:
        self.tokenizer = copy.deepcopy(vm.tokenizer)
        self.lock = threading.Lock()
        tok = self.tokenizer
        self.specials = sorted({str(t) for t in [*tok.all_special_tokens, *tok.get_added_vocab()] if t})
        self.longest_token = max(len(t) for t in tok.get_vocab())


_ADMISSION: dict[int, _Admission] = {}
_ADMISSION_LOCK = threading.Lock()


def admission(vm: Any) -> _Admission:
    """The arrival checks' tokenizer copy for ``vm`` (made once; the app makes it at start, before any batch)."""
    with _ADMISSION_LOCK:
        if id(vm) not in _ADMISSION:
            _ADMISSION[id(vm)] = _Admission(vm)
        return _ADMISSION[id(vm)]


def admit(vm: Any, job: ChatJob) -> None:
    """Refuse at arrival, with a 400 naming the field, what ``vm.generate`` would refuse for this request.

    The image checks (size, aspect ratio, one merged patch) are made when the image is decoded
    (:mod:`vedas.serve.media`); here: special tokens in the text (the processor would miscount the
    image tokens, or the prompt would be forged) and a prompt that leaves no room in the model's
    context for the latent steps and ``max_tokens``. A text too long to fit even at the
    vocabulary's longest token is refused before it is tokenised, so the check stays fast.
    """
    adm = admission(vm)
    texts = [("messages", job.question)] + [(f"choices[{i}]", c) for i, c in enumerate(job.choices or [])]
    for param, text in texts:
        found = next((t for t in adm.specials if t in text), None)
        if found is not None:
            raise bad(param, f"contains the special token {found!r}, which a client may not send")
    limit = vm.context_limit()
    if limit is None:
        return
    reserve = _reserve(vm, job)
    chars = sum(len(t) for _, t in texts)
    if chars > limit * adm.longest_token:
        raise bad(
            "messages",
            f"{chars} characters cannot fit the model's context of {limit} tokens "
            f"(at most {adm.longest_token} characters a token)",
        )
    with adm.lock:
        n = prompt_tokens(vm, [job.question], [job.images], [job.choices], job.key.mode, adm.tokenizer)[0]
    if n + reserve > limit:
        raise bad(
            "messages",
            f"{n} prompt tokens + {reserve} for the latent steps and max_tokens = {n + reserve}, over the "
            f"model's context limit of {limit} tokens; shorten the question or lower max_tokens",
        )


def _cut(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to its first stop sequence (not included), and whether one was found."""
    at = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text, False) if at < 0 else (text[:at], True)


class _Steps:
    """The engine's per-step callback for a batch: decodes the rows that stream or have ``stop``."""

    def __init__(self, vm: Any, jobs: Sequence[ChatJob]) -> None:
        self.vm = vm
        self.jobs = jobs
        self.ids: list[list[int]] = [[] for _ in jobs]
        self.done = [False] * len(jobs)
        self.watched = [i for i, j in enumerate(jobs) if j.stop or j.text_stream is not None]

    def __call__(self, tokens: torch.Tensor, finished: torch.Tensor) -> torch.Tensor:
        toks, fin = tokens.tolist(), finished.tolist()
        stop = [False] * len(toks)
        for i in self.watched:
            if self.done[i]:
                continue
            self.ids[i].append(toks[i])
            job = self.jobs[i]
            text = self.vm.tokenizer.decode(self.ids[i], skip_special_tokens=True).lstrip()
            text, stop[i] = _cut(text, job.stop)
            if job.text_stream is not None:
                job.text_stream.push(text, final=stop[i])
            self.done[i] = fin[i] or stop[i]
        return torch.tensor(stop, dtype=torch.bool)


def run_jobs(vm: Any, jobs: Sequence[ChatJob]) -> list[JobResult]:
    """Answer ``jobs`` (all with the same :class:`~vedas.serve.protocol.BatchKey`) in one engine call."""
    key = jobs[0].key
    if any(j.key != key for j in jobs):
        raise ValueError("jobs: one engine call takes one mode, latent count, max_tokens and temperature")
    steps = _Steps(vm, jobs)
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
            on_step=steps if steps.watched else None,
        )
    assert isinstance(d, Details)
    eos = _eos_id(vm)
    prompts = prompt_tokens(
        vm, [j.question for j in jobs], [j.images for j in jobs], [j.choices for j in jobs], key.mode
    )
    results = []
    for job, text, ids, ar, p in zip(jobs, d.texts, d.token_ids, d.ar_steps, prompts):
        stopped = False
        if job.stop:  # cut the raw text: the engine's strip() would drop a whitespace stop sequence
            cut, stopped = _cut(vm.tokenizer.decode(ids, skip_special_tokens=True).lstrip(), job.stop)
            text = cut if stopped else text
        if job.text_stream is not None:
            job.text_stream.finish(text)
        results.append(
            JobResult(
                text=text,
                prompt_tokens=p,
                generated_tokens=len(ids),
                latent_steps=ar - len(ids),
                finish_reason="stop" if stopped or (ids and ids[-1] == eos) else "length",
                batch_size=len(jobs),
                timings_ms=dict(d.timings_ms),
            )
        )
    return results


def _eos_id(vm: Any) -> int:
    """The id that ends an answer: ``<|im_end|>`` where the vocabulary has it (as ``VedasModel`` decodes)."""
    tok = vm.tokenizer
    return tok.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tok.get_vocab() else tok.eos_token_id
