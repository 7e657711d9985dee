"""The OpenAI chat-completions format, in and out: parse a request body into a :class:`ChatJob`.

    job = parse_chat(body, limits, served="my-model", default_mode="vedas")   # raises ApiError (4xx)
    reply = completion(job_id, served, job, result)                          # the response object
    user_message("How many?", image)          # a client's message: text part + image parts (data URLs)

A request is one user question with its images, as the batched engine takes it:

- ``messages``: ``system`` messages and ``user`` messages; every text part of them, in
  order, makes the question (system text first); every ``image_url`` part is an image, given
  as a ``data:`` URL (base64), or a local file (``file://`` URL or an absolute path) only under
  ``--allowed-local-media-path`` (:mod:`vedas.serve.media`). An ``assistant`` turn is refused:
  the latent engine answers one question, it is not a chat.
- ``max_tokens`` (or ``max_completion_tokens``), ``temperature`` (0 is greedy), ``seed``,
  ``stop`` (a string or up to 4), ``stream``, ``stream_options.include_usage``, ``n`` (1 only).
  Fields the engine cannot honour (``logprobs``, ``response_format`` other than text,
  ``tools``…) are refused with a 400 naming them, never silently ignored.
- vedas fields, sent as extra body fields: ``mode`` (a method name), ``latents`` (T_r, an int
  ≥ 0; latent modes only) and ``choices`` (options, lettered (A), (B), … in the prompt exactly
  as ``vedas eval`` renders them).

Every refusal is an :class:`ApiError` whose ``param`` names the field, rendered as an
OpenAI error object (``{"error": {"message", "type", "param", "code"}}``).
"""

from __future__ import annotations

import base64
import io
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from PIL import Image

from vedas.methods import LATENT_METHODS, METHODS
from vedas.prompts import LETTERS
from vedas.serve.errors import ApiError, bad

if TYPE_CHECKING:
    from vedas.serve.media import MediaPolicy

MAX_TEMPERATURE = 2.0  # OpenAI's range for temperature
# below this, logits / temperature overflow float32 to inf and sampling fails: 0 is the greedy answer
MIN_TEMPERATURE = 1e-4
MAX_STOP = 4  # OpenAI's limit on stop sequences
# fields of the OpenAI request the engine cannot honour: refused, so a harness never trusts an ignored one
UNSUPPORTED = {
    "logprobs": "token log-probabilities are not returned",
    "top_logprobs": "token log-probabilities are not returned",
    "response_format": "only plain text answers (response_format type 'text')",
    "tools": "tool calls are not supported",
    "tool_choice": "tool calls are not supported",
    "functions": "function calls are not supported",
    "function_call": "function calls are not supported",
    "logit_bias": "logit bias is not supported",
}


@dataclass(frozen=True)
class Limits:
    """What one request may ask for (``vedas serve`` flags)."""

    max_images: int = 4
    max_tokens: int = 2048
    default_max_tokens: int = 64
    media: MediaPolicy = field(default_factory=lambda: _default_media())


def _default_media() -> MediaPolicy:
    from vedas.serve.media import MediaPolicy  # media imports this module's errors

    return MediaPolicy()


@dataclass(frozen=True)
class BatchKey:
    """Requests run in one engine call only when these agree: ``vm.generate`` takes them once per call."""

    mode: str
    latents: int | None
    max_tokens: int
    temperature: float


@dataclass
class ChatJob:
    """One parsed request, ready for the engine."""

    question: str
    images: list[Image.Image]
    choices: list[str] | None
    key: BatchKey
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False
    created: int = field(default_factory=lambda: int(time.time()))
    text_stream: Any = None
    """A :class:`vedas.serve.runner.TextStream` the app attaches to a streamed job: new text as it is decoded."""


@dataclass
class JobResult:
    """What the engine produced for one job."""

    text: str
    prompt_tokens: int
    generated_tokens: int  # EOS included
    latent_steps: int
    finish_reason: str  # "stop" (EOS or a stop sequence) or "length"
    batch_size: int
    timings_ms: dict[str, float]


def _int(value: Any, param: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(param, f"must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"≥ {low}" if high is None else f"in {low}..{high}"
        raise bad(param, f"must be {bound}, got {value}")
    return value


def _temperature(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad("temperature", f"must be a number, got {value!r}")
    if not 0 <= value <= MAX_TEMPERATURE:
        raise bad("temperature", f"must be in 0..{MAX_TEMPERATURE:g}, got {value}")
    if 0 < value < MIN_TEMPERATURE:
        raise bad("temperature", f"must be 0 (greedy) or ≥ {MIN_TEMPERATURE:g}, got {value}")
    return float(value)


def _content_parts(content: Any, where: str) -> list[tuple[str, Any, str]]:
    """``(kind, value, param)`` for each part of a message's content (a string is one text part)."""
    if isinstance(content, str):
        return [("text", content, where)]
    if not isinstance(content, list):
        raise bad(where, "must be a string or a list of content parts")
    parts = []
    for j, part in enumerate(content):
        p = f"{where}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            parts.append(("text", part.get("text"), f"{p}.text"))
        elif kind == "image_url":
            spec = part.get("image_url")
            url = spec.get("url") if isinstance(spec, dict) else spec
            parts.append(("image", url, f"{p}.image_url.url"))
        else:
            raise bad(f"{p}.type", f"must be 'text' or 'image_url', got {kind!r}")
    return parts


def parse_messages(messages: Any, limits: Limits) -> tuple[str, list[Image.Image]]:
    """The question text and the images of ``messages`` (system text first, then the user's)."""
    if not isinstance(messages, list) or not messages:
        raise bad("messages", "must be a non-empty list of messages")
    texts: list[tuple[int, str]] = []  # (0 system / 1 user, text), so system text comes first
    images: list[Image.Image] = []
    for i, msg in enumerate(messages):
        role = msg.get("role") if isinstance(msg, dict) else None
        if role not in ("system", "developer", "user"):
            raise bad(
                f"messages[{i}].role", f"must be 'system' or 'user' (one question, no chat), got {role!r}"
            )
        for kind, value, param in _content_parts(msg.get("content"), f"messages[{i}].content"):
            if kind == "text":
                if not isinstance(value, str):
                    raise bad(param, "must be a string")
                texts.append((0 if role != "user" else 1, value))
            elif role != "user":
                raise bad(param, "images belong in a user message")
            elif len(images) >= limits.max_images:
                raise bad(param, f"more than {limits.max_images} images in one request (--max-images)")
            else:
                images.append(limits.media.load(value, param))
    question = "\n".join(t.strip() for _, t in sorted(texts, key=lambda x: x[0]) if t.strip())
    if not any(r == 1 and t.strip() for r, t in texts):
        raise bad("messages", "no user text: the question is empty")
    return question, images


def _choices(value: Any) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(c, str) and c.strip() for c in value):
        raise bad("choices", "must be a list of non-empty strings")
    if len(value) > len(LETTERS):
        raise bad("choices", f"{len(value)} options, over the {len(LETTERS)} letters (A)..(Z)")
    return value or None


def _stop(value: Any) -> list[str]:
    if value is None:
        return []
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(x, str) and x for x in stops):
        raise bad("stop", "must be a non-empty string or a list of them")
    if len(stops) > MAX_STOP:
        raise bad("stop", f"at most {MAX_STOP} stop sequences, got {len(stops)}")
    return stops


def _refuse_unsupported(body: dict[str, Any]) -> None:
    for name, why in UNSUPPORTED.items():
        value = body.get(name)
        if value is None or value is False or value == [] or value == {}:
            continue  # an explicit "off" asks for what the server does anyway
        if name == "response_format" and isinstance(value, dict) and value.get("type") == "text":
            continue
        if name == "tool_choice" and value == "none":
            continue
        raise bad(name, f"not supported by this server: {why}")


def _key(body: dict[str, Any], limits: Limits, default_mode: str) -> BatchKey:
    mode = body.get("mode", default_mode)
    if mode not in METHODS:
        raise bad("mode", f"choose one of {list(METHODS)}, got {mode!r}")
    latents = body.get("latents")
    if latents is not None:
        latents = _int(latents, "latents", 0)
        if latents and mode not in LATENT_METHODS:
            raise bad("latents", f"{latents} latent steps asked with mode={mode!r}, which has none")
    name = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    max_tokens = body.get(name)
    max_tokens = (
        limits.default_max_tokens if max_tokens is None else _int(max_tokens, name, 1, limits.max_tokens)
    )
    return BatchKey(mode, latents, max_tokens, _temperature(body.get("temperature", 0.0)))


def parse_chat(body: Any, limits: Limits, served: str, default_mode: str) -> ChatJob:
    """Validate one ``POST /v1/chat/completions`` body; every refusal names its field."""
    if not isinstance(body, dict):
        raise bad("body", "must be a JSON object")
    model = body.get("model")
    if model is not None and model != served:
        raise ApiError(404, f"model: {model!r} is not served here (this server serves {served!r})", "model")
    n = body.get("n")
    if n is not None and _int(n, "n", 1) != 1:
        raise bad("n", "only n=1 is supported")
    _refuse_unsupported(body)
    question, images = parse_messages(body.get("messages"), limits)
    seed = body.get("seed")
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise bad("stream_options", "must be an object")
    return ChatJob(
        question=question,
        images=images,
        choices=_choices(body.get("choices")),
        key=_key(body, limits, default_mode),
        seed=None if seed is None else _int(seed, "seed", -(2**63)),
        stop=_stop(body.get("stop")),
        stream=bool(body.get("stream", False)),
        include_usage=bool(stream_options.get("include_usage", False)),
    )


def usage(r: JobResult) -> dict[str, Any]:
    """OpenAI's ``usage``: a latent step counts as one reasoning token, inside ``completion_tokens``.

    So ``completion_tokens`` equals the AR steps (latent passes + generated tokens, EOS
    included), the engine's sequential passes after the prefill.
    """
    completion = r.generated_tokens + r.latent_steps
    return {
        "prompt_tokens": r.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": r.prompt_tokens + completion,
        "completion_tokens_details": {"reasoning_tokens": r.latent_steps},
        "latent_steps": r.latent_steps,
    }


def vedas_info(job: ChatJob, r: JobResult) -> dict[str, Any]:
    return {"mode": job.key.mode, "batch_size": r.batch_size, "timings_ms": r.timings_ms}


def completion(job_id: str, served: str, job: ChatJob, r: JobResult) -> dict[str, Any]:
    """The ``chat.completion`` object for one finished job."""
    return {
        "id": job_id,
        "object": "chat.completion",
        "created": job.created,
        "model": served,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": r.text},
                "finish_reason": r.finish_reason,
            }
        ],
        "usage": usage(r),
        "vedas": vedas_info(job, r),
    }


def data_url(image: Image.Image) -> str:
    """A PIL image as a base64 PNG ``data:`` URL (lossless, so the server sees the same pixels)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def user_message(question: str, *images: Image.Image | str) -> dict[str, Any]:
    """A user message: the question's text part, then one ``image_url`` part per image (PIL, URL or path)."""
    parts: list[dict[str, Any]] = [{"type": "text", "text": question}]
    for im in images:
        url = im if isinstance(im, str) else data_url(im)
        parts.append({"type": "image_url", "image_url": {"url": url}})
    return {"role": "user", "content": parts}
