"""``vedas serve`` as a client sees it: a real server process, the official ``openai`` client.

Answers equal ``VedasModel.generate`` on the same input (greedy) in every mode; ``usage``
counts the prompt, the AR steps and the latent steps; every bad request gets its 4xx with
an error object naming the field, and the server answers normally afterwards.
"""

from __future__ import annotations

import json
import socket
import threading
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from serve_helpers import LATENTS, MAX_TOKENS, data_url, health, http, random_image, user

from vedas.methods import LATENT_METHODS, METHODS

QUESTION = "How many red squares are there?"


def ask(client, server, messages, **kw):
    return client.chat.completions.create(model=server.name, messages=messages, **kw)


def reference(vm, images, question, mode, **kw):
    return vm.generate(images, [question], mode=mode, return_details=True, max_new_tokens=MAX_TOKENS, **kw)


@pytest.mark.parametrize("mode", METHODS)
def test_each_mode_answers_like_generate(server, client, local_vm, mode):
    image = random_image(84, 140, seed=3)
    latents = {"latents": LATENTS + 1} if mode in LATENT_METHODS else {}
    r = ask(
        client,
        server,
        [user(QUESTION, image)],
        max_tokens=MAX_TOKENS,
        temperature=0,
        extra_body={"mode": mode, **latents},
    )
    d = reference(local_vm, [image], QUESTION, mode, **latents)
    assert r.choices[0].message.content == d.texts[0]
    assert r.choices[0].message.role == "assistant" and r.model == server.name
    steps = latents.get("latents", 0)
    prompt = int(local_vm.prepare([image], [QUESTION], mode=mode).attention_mask.sum())
    assert r.usage.prompt_tokens == prompt
    assert r.usage.completion_tokens == d.ar_steps[0]  # latent passes + generated tokens
    assert r.usage.completion_tokens_details.reasoning_tokens == steps
    assert r.usage.latent_steps == steps and r.usage.total_tokens == prompt + d.ar_steps[0]
    assert r.choices[0].finish_reason in ("stop", "length")


def test_file_paths_choices_system_text_and_two_images(server, client, local_vm, media_dir):
    a, b = random_image(112, 84, seed=5), random_image(56, 84, seed=6)
    a.save(media_dir / "a.png")
    b.save(media_dir / "b b.png")
    file_url = "file://" + urllib.parse.quote(str(media_dir / "b b.png"))
    messages = [
        {"role": "system", "content": "Answer briefly."},
        user(QUESTION, str(media_dir / "a.png"), file_url),
    ]
    r = ask(client, server, messages, max_tokens=MAX_TOKENS, extra_body={"choices": ["1", "2", "3"]})
    question = f"Answer briefly.\n{QUESTION}"
    d = local_vm.generate(
        [[a, b]], [question], choices=[["1", "2", "3"]], return_details=True, max_new_tokens=MAX_TOKENS
    )
    assert r.choices[0].message.content == d.texts[0]
    assert r.usage.latent_steps == LATENTS  # the checkpoint's count when the request names none


def test_sampling_with_a_seed_is_reproducible_and_equals_generate(server, client, local_vm):
    image = random_image(84, 84, seed=8)
    kw = dict(max_tokens=MAX_TOKENS, temperature=0.8, seed=11)
    texts = {ask(client, server, [user(QUESTION, image)], **kw).choices[0].message.content for _ in range(2)}
    d = reference(local_vm, [image], QUESTION, "vedas", temperature=0.8, seed=11)
    assert texts == {d.texts[0]}


def test_streaming_sends_the_same_answer_and_usage(server, client):
    image = random_image(84, 112, seed=9)
    plain = ask(client, server, [user(QUESTION, image)], max_tokens=MAX_TOKENS)
    stream = ask(
        client,
        server,
        [user(QUESTION, image)],
        max_tokens=MAX_TOKENS,
        stream=True,
        stream_options={"include_usage": True},
    )
    parts, usage, finish = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            parts.append(c.delta.content or "")
            finish = c.finish_reason or finish
    assert "".join(parts) == plain.choices[0].message.content
    assert finish == plain.choices[0].finish_reason
    assert usage is not None and usage.completion_tokens == plain.usage.completion_tokens


def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == [server.name]
    h = health(server)
    assert h["status"] == "ok" and h["model"] == server.name
    assert {"submitted", "batches", "rows", "failed_batches", "dropped", "queued"} <= h.keys()


def _big_image_url() -> str:
    url = data_url(random_image(700, 700, seed=1))  # ~1.4 MB of PNG noise: over the 1 MiB limit
    assert len(url) > 2**20
    return url


BAD_REQUESTS = {
    # name: (messages, extra_body, status, param)
    "no messages": ([], {}, 400, "messages"),
    "no user text": ([user("  ")], {}, 400, "messages"),
    "assistant turn": ([user("hi"), {"role": "assistant", "content": "x"}], {}, 400, "messages[1].role"),
    "unreadable image bytes": (
        [user("q", "data:image/png;base64,aGVsbG8gd29ybGQ=")],
        {},
        400,
        "messages[0].content[1].image_url.url",
    ),
    "bad base64": ([user("q", "data:image/png;base64,@@@")], {}, 400, "messages[0].content[1].image_url.url"),
    "missing file": ([user("q", "/nonexistent/x.png")], {}, 400, "messages[0].content[1].image_url.url"),
    "remote url": ([user("q", "https://example.com/x.png")], {}, 400, "messages[0].content[1].image_url.url"),
    "image under one patch": (
        [user("q", random_image(20, 60, 0))],
        {},
        400,
        "messages[0].content[1].image_url.url",
    ),
    "too many images": (
        [user("q", *[random_image(28, 28, i) for i in range(5)])],
        {},
        400,
        "messages[0].content[5].image_url.url",
    ),
    "bad part type": (
        [{"role": "user", "content": [{"type": "audio"}]}],
        {},
        400,
        "messages[0].content[0].type",
    ),
    "bad mode": ([user("q")], {"mode": "fast"}, 400, "mode"),
    "negative latents": ([user("q")], {"latents": -1}, 400, "latents"),
    "latents with cot": ([user("q")], {"mode": "cot", "latents": 2}, 400, "latents"),
    "bad choices": ([user("q")], {"choices": "A"}, 400, "choices"),
    "max_tokens 0": ([user("q")], {"max_tokens": 0}, 400, "max_tokens"),
    "max_tokens over the limit": ([user("q")], {"max_tokens": 10**6}, 400, "max_tokens"),
    "temperature 3": ([user("q")], {"temperature": 3}, 400, "temperature"),
    "n 2": ([user("q")], {"n": 2}, 400, "n"),
    "body over the limit": ([user("q", "BIG")], {}, 413, "body"),
}


@pytest.mark.parametrize("name", sorted(BAD_REQUESTS))
def test_bad_request_gets_its_4xx_naming_the_field(server, client, name):
    messages, extra, status, param = BAD_REQUESTS[name]
    if name == "body over the limit":
        messages = [user("q", _big_image_url())]
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(model=server.name, messages=messages, extra_body=extra)
    assert e.value.status_code == status, e.value.body
    assert e.value.body["param"] == param and e.value.body["message"].startswith(param)
    assert e.value.body["type"] == "invalid_request_error"
    # and the server still answers
    ok = ask(client, server, [user(QUESTION, random_image(56, 56, 2))], max_tokens=2)
    assert ok.choices[0].message.content is not None


def test_unknown_model_is_404_and_bad_json_is_400(server, client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=[user("q")])
    assert e.value.body["param"] == "model"
    status, body = http("POST", f"{server.url}/v1/chat/completions", b"{not json")
    assert status == 400 and body["error"]["param"] == "body"
    status, body = http("GET", f"{server.url}/v1/nothing")
    assert status == 404 and "error" in body


# requests the parser used to accept and the engine refused, failing every request batched with them
POISON = {
    "extreme aspect ratio": ([user(QUESTION, random_image(28, 6000, 0))], {}, "image_url.url"),
    "special token in the text": (
        [user("What is <|image_pad|> here?", random_image(56, 56, 1))],
        {},
        "messages",
    ),
    "prompt over the context": ([user("x " * 3000, random_image(56, 56, 1))], {}, "messages"),
    "tiny temperature": ([user(QUESTION)], {"temperature": 1e-45}, "temperature"),
    "27 choices": ([user(QUESTION)], {"choices": [str(i) for i in range(27)]}, "choices"),
}


def test_a_poisoned_batch_fails_only_the_bad_requests(server, client):
    """Bad requests sent among good ones get their 400 at arrival (naming the field, fast); the good ones
    get 200 and the answer each gets alone."""
    image = random_image(56, 84, seed=4)

    def greedy():
        return ask(client, server, [user(QUESTION, image)], max_tokens=MAX_TOKENS).choices[0].message.content

    def poisoned(name):
        messages, extra, _ = POISON[name]
        with pytest.raises(openai.BadRequestError) as e:
            ask(client, server, messages, max_tokens=MAX_TOKENS, extra_body=extra)
        return e.value

    alone = greedy()
    before = health(server)
    with ThreadPoolExecutor(10) as pool:
        good = [pool.submit(greedy) for _ in range(5)]
        bad = {name: pool.submit(poisoned, name) for name in POISON}
        texts = [f.result() for f in good]
        errors = {name: f.result() for name, f in bad.items()}
    assert texts == [alone] * 5
    for name, e in errors.items():
        assert e.body["param"].endswith(POISON[name][2]), (name, e.body)
    after = health(server)
    assert after["failed_batches"] == before["failed_batches"]  # refused at arrival: never queued
    assert after["submitted"] - before["submitted"] == 5


def _send_and_hang_up(url: str, body: bytes) -> None:
    """POST a full request on a raw socket, then close it without reading the answer."""
    u = urllib.parse.urlparse(url)
    with socket.create_connection((u.hostname, u.port), timeout=10) as s:
        head = (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: {u.hostname}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        s.sendall(head.encode() + body)


def test_clients_that_hang_up_do_not_stall_the_others(server, client):
    image = random_image(84, 84, seed=12)
    body = json.dumps({"messages": [user(QUESTION, image)], "max_tokens": MAX_TOKENS}).encode()
    before = health(server)
    hangups = [threading.Thread(target=_send_and_hang_up, args=(server.url, body)) for _ in range(8)]
    for t in hangups:
        t.start()
    with ThreadPoolExecutor(4) as pool:
        answers = list(
            pool.map(lambda _: ask(client, server, [user(QUESTION, image)], max_tokens=MAX_TOKENS), range(4))
        )
    for t in hangups:
        t.join()
    assert len({a.choices[0].message.content for a in answers}) == 1
    after = health(server)
    # every request was either run once or dropped before its batch: none lost, none run twice
    new = after["submitted"] - before["submitted"]
    assert (
        new == 12
        and after["rows"] - before["rows"] + after["dropped"] - before["dropped"] + after["queued"] == new
    )


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--max-batch-size", "0"),
        ("--batch-timeout-ms", "-1"),
        ("--port", "-5"),
        ("--max-queued", "0"),
        ("--max-image-pixels", "-1"),
        ("--allowed-local-media-path", "/nonexistent/dir"),
        ("--request-timeout-s", "0"),
        ("--replicas", "0"),
        ("--ray-address", "auto"),  # without --replicas
    ],
)
def test_bad_flags_exit_2_before_the_model_loads(tmp_path, capsys, flag, value):
    from vedas.cli import main

    assert main(["serve", "--checkpoint", str(tmp_path / "none"), flag, value]) == 2
    assert flag in capsys.readouterr().err


def test_a_vlmevalkit_style_request_is_answered(server, local_vm):
    """The body VLMEvalKit's ``OpenAIWrapper.generate_inner`` posts (its install is too heavy to import
    here, docs/integrations.md): a full chat-completions URL, a Bearer ``sk-`` key, ``n=1``, a JPEG
    data URL with ``detail``, and the wrapper's extra keyword arguments (``mode``, ``latents``) as body fields."""
    import base64
    import io

    image = random_image(84, 112, seed=21)
    buf = io.BytesIO()
    image.save(buf, format="JPEG")
    url = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
    content = [
        {"type": "text", "text": QUESTION},
        {"type": "image_url", "image_url": {"url": url, "detail": "low"}},
    ]
    payload = {
        "model": server.name,
        "messages": [{"role": "user", "content": content}],
        "n": 1,
        "temperature": 0,
        "max_tokens": MAX_TOKENS,
        "mode": "latent",
        "latents": 1,
    }
    status, body = http("POST", f"{server.url}/v1/chat/completions", json.dumps(payload).encode())
    assert status == 200, body
    buf.seek(0)
    from PIL import Image

    with Image.open(buf) as decoded:
        sent = decoded.convert("RGB")  # the server sees the JPEG's pixels
    d = reference(local_vm, [sent], QUESTION, "latent", latents=1)
    assert body["choices"][0]["message"]["content"] == d.texts[0]
    assert body["usage"]["latent_steps"] == 1
