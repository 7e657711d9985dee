"""A bounded load generator for ``vedas serve``: a fixed list of requests at a fixed concurrency.

    requests = [{"messages": [...], "max_tokens": 8, "extra_body": {"mode": "vedas"}}, ...]
    r = run_load("http://127.0.0.1:8000/v1", "tiny", requests, concurrency=32)
    r.throughput, r.percentile(50), r.percentile(99), r.answers   # answers in request order
    s = run_load(url, "tiny", requests, concurrency=8, stream=True)
    s.ttft_s                                                      # time to the first text, per request

Each request is sent exactly once (the client never retries), by ``concurrency`` threads
sharing one official ``openai`` client, and the run ends when every request has been
answered or has failed. It only talks to loopback addresses: a load test never leaves the
machine. The tests (``tests/serve/test_load.py``) and ``benchmarks/serve.py`` use it.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse


@dataclass
class LoadResult:
    concurrency: int
    wall_s: float
    latencies_s: list[float]  # per request, in request order
    answers: list[str]
    ids: list[str]  # the response ids
    batch_sizes: list[int]  # the size of the engine batch each answer came from
    errors: list[str] = field(default_factory=list)
    ttft_s: list[float] = field(default_factory=list)  # streamed runs: time to the first text chunk

    @property
    def n(self) -> int:
        return len(self.latencies_s)

    @property
    def throughput(self) -> float:
        """Requests per second over the whole run."""
        return self.n / self.wall_s

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile of the latencies in seconds (linear interpolation)."""
        import numpy as np

        return float(np.percentile(self.latencies_s, q))


def check_loopback(base_url: str) -> None:
    """Refuse any address outside the loopback range: load is only ever sent to this machine."""
    host = urlparse(base_url).hostname or ""
    addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    if not addresses or not all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses):
        raise ValueError(
            f"base_url: {host!r} is not a loopback address; load is only sent to 127.0.0.0/8 or ::1"
        )


def _streamed(client: Any, model: str, request: dict[str, Any], t0: float) -> tuple[str, str, int, float]:
    """One streamed request: its text, id, batch size and the time its first text chunk arrived."""
    stream = client.chat.completions.create(
        model=model, stream=True, stream_options={"include_usage": True}, **request
    )
    parts, rid, size, first = [], "", 0, 0.0
    for chunk in stream:
        rid = chunk.id
        if chunk.usage is not None:
            size = int((chunk.model_extra or {}).get("vedas", {}).get("batch_size", 0))
        for c in chunk.choices:
            if c.delta.content:
                first = first or time.perf_counter() - t0
                parts.append(c.delta.content)
    return "".join(parts), rid, size, first


def run_load(
    base_url: str,
    model: str,
    requests: Sequence[dict[str, Any]],
    concurrency: int,
    timeout_s: float = 300.0,
    stream: bool = False,
) -> LoadResult:
    """Send every request once, ``concurrency`` at a time; ``requests`` are ``chat.completions.create`` kwargs.

    ``stream``: as streamed requests, recording each one's time to its first text (``ttft_s``).
    """
    import openai

    check_loopback(base_url)
    if concurrency < 1:
        raise ValueError(f"concurrency: must be ≥ 1, got {concurrency}")
    n = len(requests)
    latencies, answers, ids, ttft = [0.0] * n, [""] * n, [""] * n, [0.0] * n
    sizes, errors = [0] * n, []
    next_index = iter(range(n))
    lock = threading.Lock()
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=timeout_s)

    def worker() -> None:
        while True:
            with lock:
                i = next(next_index, None)
            if i is None:
                return
            t0 = time.perf_counter()
            try:
                if stream:
                    answers[i], ids[i], sizes[i], ttft[i] = _streamed(client, model, requests[i], t0)
                else:
                    r = client.chat.completions.create(model=model, **requests[i])
                    answers[i], ids[i] = r.choices[0].message.content or "", r.id
                    sizes[i] = int((r.model_extra or {}).get("vedas", {}).get("batch_size", 0))
            except openai.APIError as e:
                with lock:
                    errors.append(f"request {i}: {e}")
                continue
            latencies[i] = time.perf_counter() - t0

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(min(concurrency, n))]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    client.close()
    return LoadResult(concurrency, wall, latencies, answers, ids, sizes, errors, ttft if stream else [])
