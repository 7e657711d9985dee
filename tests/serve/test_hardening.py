"""``vedas serve`` against careless or hostile clients: what one client can do to the server and the others.

A real server process on loopback and the official ``openai`` client, one test per point of
docs/serve.md#security-model: local files, image memory, FIFOs, over-long prompts, ``stop``
and refused fields, backpressure, the API key, streaming and SIGTERM. A batch that still
fails in the engine is re-run row by row: that is shown in process, with the real engine.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import signal
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from PIL import Image
from serve_helpers import MAX_TOKENS, health, random_image, start_server, stop_server, user

from vedas.errors import InputError
from vedas.serve.batcher import Batcher
from vedas.serve.media import NOT_ALLOWED
from vedas.serve.protocol import BatchKey, ChatJob
from vedas.serve.runner import run_jobs

QUESTION = "How many red squares are there?"
PARAM = "messages[0].content[1].image_url.url"


def ask(client, server, messages, **kw):
    return client.chat.completions.create(model=server.name, messages=messages, **kw)


def refused(client, server, messages, **kw) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as e:
        ask(client, server, messages, **kw)
    return e.value


def vm_rss_peak_kb(pid: int) -> int:
    """The process's peak resident memory so far (VmHWM), in KiB."""
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmHWM:\s+(\d+) kB", f.read()).group(1))


@pytest.fixture(scope="module")
def plain_server(checkpoint, tmp_path_factory):
    """The default flags: no local media path, 32 MiB bodies."""
    s = start_server(checkpoint, tmp_path_factory.mktemp("plain") / "serve.log")
    yield s
    stop_server(s)


@pytest.fixture(scope="module")
def plain_client(plain_server):
    c = openai.OpenAI(base_url=f"{plain_server.url}/v1", api_key="unused", max_retries=0, timeout=120)
    yield c
    c.close()


# --- 1. a request fails alone -----------------------------------------------------------------
def _job(image: Image.Image, question: str = QUESTION) -> ChatJob:
    return ChatJob(
        question=question, images=[image], choices=None, key=BatchKey("vedas", None, MAX_TOKENS, 0.0)
    )


def test_a_batch_the_engine_refuses_is_rerun_row_by_row(local_vm):
    """Second line of defence, with the real engine: a job the arrival checks never saw (an aspect ratio of
    214) sits in a batch of good ones; only it gets the engine's error, the others their solo answers."""
    good = [random_image(56, 84, seed=40 + i) for i in range(3)]
    alone = [run_jobs(local_vm, [_job(im)])[0].text for im in good]
    batcher = Batcher(lambda jobs: run_jobs(local_vm, jobs), max_batch_size=8, timeout_s=0.05)
    # queued before the worker starts: all four go into one engine call
    futures = [batcher.submit(_job(im), key="k") for im in good[:2]]
    poisoned = batcher.submit(_job(random_image(28, 6000, seed=1)), key="k")
    futures.append(batcher.submit(_job(good[2]), key="k"))
    batcher.start()
    try:
        with pytest.raises(InputError, match="aspect ratio"):
            poisoned.result(timeout=120)
        assert [f.result(timeout=120).text for f in futures] == alone
    finally:
        batcher.stop()
    assert batcher.stats.failed_batches == 1 and batcher.stats.retried_rows == 4
    assert batcher.stats.failed_rows == 1 and batcher.stats.sizes[0] == 4


# --- 2. no local files unless the operator says so --------------------------------------------
def test_local_files_are_refused_by_default(plain_server, plain_client, tmp_path):
    random_image(56, 56, seed=1).save(tmp_path / "a.png")
    for url in (str(tmp_path / "a.png"), f"file://{tmp_path / 'a.png'}", "/etc/passwd"):
        e = refused(plain_client, plain_server, [user(QUESTION, url)])
        assert e.status_code == 400 and e.body["param"] == PARAM
        assert "--allowed-local-media-path" in e.body["message"]


def test_local_files_are_confined_to_the_allowed_directory(server, client, media_dir, tmp_path):
    outside = tmp_path / "secret.png"
    random_image(56, 56, seed=2).save(outside)
    inside = media_dir / "ok.png"
    random_image(56, 56, seed=3).save(inside)
    (media_dir / "escape.png").unlink(missing_ok=True)
    (media_dir / "escape.png").symlink_to(outside)
    fifo = media_dir / "pipe.png"
    if not fifo.exists():
        os.mkfifo(fifo)
    (media_dir / "folder.png").mkdir(exist_ok=True)
    hostile = {
        "symlink out": str(media_dir / "escape.png"),
        "dot-dot out": f"{media_dir}/../{outside.parent.name}/secret.png",
        "existing outside": str(outside),
        "missing inside": str(media_dir / "missing.png"),
        "missing outside": "/nonexistent/x.png",
        "fifo": str(fifo),
        "directory": str(media_dir / "folder.png"),
        "device": "/dev/zero",
        "stdin": "/dev/stdin",
        "file url with a host": f"file://otherhost{inside}",
    }
    messages = {}
    for name, url in hostile.items():
        e = refused(client, server, [user(QUESTION, url)])
        assert e.status_code == 400 and e.body["param"] == PARAM, name
        messages[name] = e.body["message"]
    same = {m for name, m in messages.items() if name != "file url with a host"}
    assert same == {f"{PARAM}: {NOT_ALLOWED}"}  # existing, missing, escaping: one message, no oracle
    assert ask(client, server, [user(QUESTION, str(inside))], max_tokens=2).choices[0].message is not None


def test_a_fifo_cannot_wedge_the_server(server, client, media_dir):
    fifo = media_dir / "wedge.png"
    if not fifo.exists():
        os.mkfifo(fifo)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(40) as pool:
        errors = list(pool.map(lambda _: refused(client, server, [user(QUESTION, str(fifo))]), range(40)))
    assert {e.status_code for e in errors} == {400}
    assert time.perf_counter() - t0 < 20
    r = ask(client, server, [user(QUESTION, random_image(56, 56, 5))], max_tokens=2)  # still serving
    assert r.choices[0].message.content is not None


# --- 3. bounded memory per request ------------------------------------------------------------
def _png(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def test_decompression_bombs_are_refused_and_large_images_stay_within_the_memory_bound(
    plain_server, plain_client
):
    bomb = _png(Image.new("RGB", (13000, 13000)))  # ~0.5 GB decoded, a few hundred KB sent
    largest = random_image(896, 896, seed=6)  # exactly the default bound: 16 × the processor's 50176 px
    warm = ask(plain_client, plain_server, [user(QUESTION, random_image(84, 84, 1))], max_tokens=2)
    assert warm.choices[0].message.content is not None
    before = vm_rss_peak_kb(plain_server.process.pid)
    t0 = time.perf_counter()
    e = refused(plain_client, plain_server, [user(QUESTION, bomb, bomb, bomb, bomb)])
    assert e.status_code == 400 and "--max-image-pixels" in e.body["message"]
    assert time.perf_counter() - t0 < 5
    r = ask(plain_client, plain_server, [user(QUESTION, *[largest] * 4)], max_tokens=2)
    assert r.choices[0].message.content is not None
    grown_mb = (vm_rss_peak_kb(plain_server.process.pid) - before) / 1024
    print(f"peak RSS growth: {grown_mb:.0f} MB (4 bombs refused, 4 images of 896×896 served)")
    assert grown_mb < 300


# --- 5. an over-long prompt is refused at arrival ---------------------------------------------
def test_an_over_long_prompt_gets_400_fast_while_others_are_served(plain_server, plain_client):
    huge = "How many? " * 800_000  # 8 MB of question
    image = random_image(56, 56, seed=7)
    with ThreadPoolExecutor(2) as pool:
        short = pool.submit(lambda: ask(plain_client, plain_server, [user(QUESTION, image)], max_tokens=2))
        t0 = time.perf_counter()
        e = refused(plain_client, plain_server, [user(huge, image)])
        took = time.perf_counter() - t0
        assert short.result().choices[0].message.content is not None
    assert e.status_code == 400 and e.body["param"] == "messages" and "context" in e.body["message"]
    assert took < 1.0, f"the refusal took {took:.2f} s"
    # just over the context, found by the exact token count
    e = refused(plain_client, plain_server, [user("x " * 2100, image)])
    assert e.status_code == 400 and "prompt tokens" in e.body["message"]


# --- 6. stop honoured, unsupported fields refused ---------------------------------------------
def _long_answer(client, server, image):
    """A question whose free answer is at least 6 characters (a random tiny model: searched, bounded)."""
    for i in range(20):
        messages = [user(f"{QUESTION} ({i})", image)]
        r = ask(client, server, messages, max_tokens=24)
        if len(r.choices[0].message.content) >= 6:
            return messages, r
    pytest.fail("no answer of 6 characters in 20 questions")


def test_stop_cuts_the_answer_as_openai_does(server, client):
    image = random_image(56, 84, seed=8)
    messages, full = _long_answer(client, server, image)
    text = full.choices[0].message.content
    stop = text[3:5]
    cut = ask(client, server, messages, max_tokens=24, stop=[stop, "never-said"])
    assert cut.choices[0].message.content == text[: text.find(stop)]
    assert cut.choices[0].finish_reason == "stop"
    assert cut.usage.completion_tokens < full.usage.completion_tokens  # generation stopped early
    streamed = ask(client, server, messages, max_tokens=24, stop=stop, stream=True)
    parts = [c.choices[0].delta.content or "" for c in streamed if c.choices]
    assert "".join(parts) == text[: text.find(stop)]


@pytest.mark.parametrize(
    "field, value",
    [
        ("logprobs", True),
        ("top_logprobs", 2),
        ("response_format", {"type": "json_object"}),
        ("tools", [{"type": "function", "function": {"name": "f", "parameters": {}}}]),
        ("tool_choice", "required"),
        ("n", 2),
        ("stop", ["a", "b", "c", "d", "e"]),
    ],
)
def test_unsupported_fields_are_refused_naming_them(server, client, field, value):
    e = refused(client, server, [user(QUESTION)], **{field: value})
    assert e.status_code == 400 and e.body["param"] == field and e.body["message"].startswith(field)


# --- 8. real streaming ------------------------------------------------------------------------
def test_streaming_sends_text_as_it_is_decoded(plain_server, plain_client):
    image = random_image(84, 84, seed=9)
    messages = [user(QUESTION, image)]
    t0 = time.perf_counter()
    stream = ask(
        plain_client,
        plain_server,
        messages,
        max_tokens=400,
        stream=True,
        stream_options={"include_usage": True},
    )
    arrivals, parts, usage_chunk = [], [], None
    for chunk in stream:
        if chunk.usage is not None:
            usage_chunk = chunk
        for c in chunk.choices:
            if c.delta.content:
                arrivals.append(time.perf_counter() - t0)
                parts.append(c.delta.content)
    plain = ask(plain_client, plain_server, messages, max_tokens=400)
    assert "".join(parts) == plain.choices[0].message.content
    assert len(parts) > 1
    decode_s = usage_chunk.model_extra["vedas"]["timings_ms"]["decode"] / 1e3
    # the first text left the server while most of the answer was still being decoded
    assert arrivals[-1] - arrivals[0] > decode_s / 2, (arrivals[0], arrivals[-1], decode_s)


# --- backpressure and the API key -------------------------------------------------------------
def _post(url: str, body: dict, key: str | None = None) -> tuple[int, dict, dict]:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, dict(r.headers), json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), json.loads(e.read())


def test_a_full_queue_gets_429_with_retry_after_and_the_key_is_checked(checkpoint, tmp_path):
    s = start_server(
        checkpoint, tmp_path / "serve.log", "--max-batch-size", "1", "--max-queued", "2", "--api-key", "k3y"
    )
    try:
        url = f"{s.url}/v1/chat/completions"
        body = {"messages": [user(QUESTION, random_image(56, 56, 1))], "max_tokens": 300}
        assert _post(url, body)[0] == 401 and _post(url, body, "wrong")[0] == 401
        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(lambda _: _post(url, body, "k3y"), range(12)))
        statuses = sorted(a[0] for a in answers)
        assert set(statuses) == {200, 429} and statuses.count(200) >= 3, statuses
        throttled = [a for a in answers if a[0] == 429]
        assert all(h.get("retry-after") or h.get("Retry-After") for _, h, _ in throttled)
        assert all(b["error"]["type"] == "rate_limit_error" for *_, b in throttled)
        h = health(s)  # /health stays open without the key
        assert h["max_queued"] == 2 and h["refused_full"] == len(throttled) and h["queued"] == 0
    finally:
        stop_server(s)


# --- 7. clean shutdown ------------------------------------------------------------------------
def test_sigterm_with_a_queue_answers_200_or_json_503_and_exits_0(checkpoint, tmp_path):
    log = tmp_path / "serve.log"
    # a grace period the running batch (2 × 400 tokens) cannot outrun even on a loaded machine: past
    # it uvicorn cancels the running requests with its own plain-text 500, which is not what this tests
    s = start_server(checkpoint, log, "--max-batch-size", "2", "--shutdown-grace-s", "300")
    url = f"{s.url}/v1/chat/completions"
    body = {"messages": [user(QUESTION, random_image(56, 56, 1))], "max_tokens": 400}
    results: list[tuple[int, dict]] = []

    def one() -> None:
        status, _, answer = _post(url, body)
        results.append((status, answer))

    threads = [threading.Thread(target=one) for _ in range(16)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while health(s)["batches"] < 1 and time.monotonic() < deadline:  # the first batch runs, others wait
        time.sleep(0.05)
    s.process.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(120)
    code = s.process.wait(60)
    s.process.stdout.close()
    statuses = sorted(st for st, _ in results)
    assert len(results) == 16 and set(statuses) <= {200, 503} and 503 in statuses, statuses
    assert all(b["error"]["type"] == "server_error" for st, b in results if st == 503)
    assert code == 0
    assert "Traceback" not in log.read_text()


@pytest.mark.slow  # ~20 s: a 2000-token answer runs to its end after its client got the 504
def test_a_request_past_its_timeout_gets_504_and_the_server_goes_on(checkpoint, tmp_path):
    s = start_server(
        checkpoint, tmp_path / "serve.log", "--max-batch-size", "1", "--request-timeout-s", "0.3"
    )
    try:
        url = f"{s.url}/v1/chat/completions"
        body = {"messages": [user(QUESTION, random_image(56, 56, 1))], "max_tokens": 2000}
        with ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(lambda _: _post(url, body), range(3)))
        # three requests of up to 2000 tokens, one at a time, cannot all be answered in 0.3 s each
        timed_out = [b for st, _, b in answers if st == 504]
        assert timed_out and all(st in (200, 504) for st, _, _ in answers), [a[0] for a in answers]
        assert all("--request-timeout-s" in b["error"]["message"] for b in timed_out)
        # the request that was running when its client got the 504 is computed to its end and thrown
        # away; once it is done, a short request is answered again (bounded wait)
        deadline, status = time.monotonic() + 60, 0
        while status != 200 and time.monotonic() < deadline:
            status = _post(url, {**body, "max_tokens": 2})[0]
        assert status == 200
        assert health(s)["dropped"] >= 1  # the timed-out requests still queued never ran
    finally:
        stop_server(s)
