"""Server benchmark: what dynamic batching in ``vedas serve`` keeps of the engine's own batching gain.

    .venv/bin/python benchmarks/serve.py [--quick] [--rounds 3] [--json out.json]

One tiny random Qwen2-VL of ``vedas bench``'s sizes (``vedas.experiments.bench.SIZES``: a 450-token
prompt with 128 visual tokens, T_r = 4, K = 32) is saved as a checkpoint and served by a real
``vedas serve --port 0`` process on loopback (``--max-batch-size 16``). Each round measures,
side by side:

- the engine alone, in this process: ``vedas bench``'s part (c), batch 16 vs batch 1
  throughput (its own measuring code, :func:`vedas.experiments.bench.interleaved`);
- the server: the same 64 requests (the bench's prompt and choices, one image each, sent as
  data URLs) at concurrency 1, 8 and 32 through the official ``openai`` client
  (:func:`vedas.serve.load.run_load`), with throughput and p50/p99 latency.

It prints the per-concurrency table and the ratio of concurrency-32 throughput to sequential
(concurrency 1), next to the engine's batch-16/batch-1 ratio; the target is ≥ 80 % of it.
Then streaming: the first 16 requests streamed at concurrency 1 and 8, each request's time to
its first text chunk (TTFT) against its time to the last (median over requests and rounds).
Ratios are medians over rounds of the ratio measured within one round. Both processes run
torch on one thread (``OMP_NUM_THREADS``, default 1); the client threads use the other core.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from vedas.experiments import bench
from vedas.serve.load import run_load
from vedas.serve.process import start_server, stop_server
from vedas.serve.protocol import data_url, user_message

N_REQUESTS = 64
CONCURRENCY = (1, 8, 32)
STREAM_CONCURRENCY = (1, 8)
N_STREAMED = 16


def requests_for(images: list, questions: list, choices: list, max_tokens: int) -> list[dict[str, Any]]:
    return [
        {
            "messages": [user_message(q, data_url(im))],
            "max_tokens": max_tokens,
            "temperature": 0,
            "extra_body": {"choices": c},
        }
        for im, q, c in zip(images, questions, choices)
    ]


def engine_round(vm: Any, images: list, questions: list, choices: list) -> dict[str, float]:
    """``vedas bench`` part (c) for one round: samples/s at batch 1 and 16 and their ratio."""
    calls = {
        "batch1": bench.generate_call(vm, images[:1], questions[:1], choices[:1]),
        "batch16": bench.generate_call(vm, images[:16], questions[:16], choices[:16]),
    }
    runs = bench.interleaved(calls, vm.device, 1)
    b1, b16 = runs["batch1"][0]["total"], runs["batch16"][0]["total"]
    return {"batch1": 1e3 / b1, "batch16": 16e3 / b16, "ratio": 16 * bench.ratio(runs, "batch1", "batch16")}


def server_round(url: str, name: str, requests: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    out = {}
    for c in CONCURRENCY:
        r = run_load(f"{url}/v1", name, requests, c)
        if r.errors:
            raise RuntimeError(f"concurrency {c}: {len(r.errors)} requests failed: {r.errors[:3]}")
        out[c] = {
            "throughput": r.throughput,
            "p50_ms": 1e3 * r.percentile(50),
            "p99_ms": 1e3 * r.percentile(99),
            "mean_batch": statistics.mean(r.batch_sizes),
            "answers": r.answers,
        }
    for c in STREAM_CONCURRENCY:
        r = run_load(f"{url}/v1", name, requests[:N_STREAMED], c, stream=True)
        if r.errors:
            raise RuntimeError(f"streamed, concurrency {c}: {len(r.errors)} requests failed: {r.errors[:3]}")
        out[f"stream{c}"] = {
            "ttft_ms": 1e3 * statistics.median(r.ttft_s),
            "last_ms": 1e3 * statistics.median(r.latencies_s),
            "ttft_over_last": statistics.median(t / t_last for t, t_last in zip(r.ttft_s, r.latencies_s)),
            "answers_equal": r.answers == out[1]["answers"][:N_STREAMED],
        }
    return out


def summarise(engine: list[dict[str, float]], server: list[dict[int, dict[str, Any]]]) -> dict[str, Any]:
    per_c = {
        c: {
            k: statistics.median(s[c][k] for s in server)
            for k in ("throughput", "p50_ms", "p99_ms", "mean_batch")
        }
        for c in CONCURRENCY
    }
    server_ratio = [s[32]["throughput"] / s[1]["throughput"] for s in server]
    kept = [sr / e["ratio"] for sr, e in zip(server_ratio, engine)]
    differ = sum(
        a != b for s in server for c in CONCURRENCY for a, b in zip(s[c]["answers"], s[1]["answers"])
    )
    return {
        "server": {str(c): v for c, v in per_c.items()},
        "engine_samples_per_s": {k: statistics.median(e[k] for e in engine) for k in ("batch1", "batch16")},
        "engine_ratio_batch16_over_batch1": statistics.median(e["ratio"] for e in engine),
        "server_ratio_c32_over_c1": statistics.median(server_ratio),
        "server_share_of_engine_ratio": statistics.median(kept),
        # the batching cost in absolute terms: served requests/s at concurrency 32 vs the engine's batch 16
        "server_c32_over_engine_batch16": statistics.median(
            s[32]["throughput"] / e["batch16"] for s, e in zip(server, engine)
        ),
        "answers_differing_from_sequential": differ,
        "streaming": {
            str(c): {
                "ttft_ms": statistics.median(s[f"stream{c}"]["ttft_ms"] for s in server),
                "last_ms": statistics.median(s[f"stream{c}"]["last_ms"] for s in server),
                "ttft_over_last": statistics.median(s[f"stream{c}"]["ttft_over_last"] for s in server),
                "answers_equal_non_streamed": all(s[f"stream{c}"]["answers_equal"] for s in server),
            }
            for c in STREAM_CONCURRENCY
        },
    }


def table(r: dict[str, Any]) -> str:
    lines = ["concurrency | requests/s | p50 ms | p99 ms | mean batch", "---|---|---|---|---"]
    for c, v in r["server"].items():
        lines.append(
            f"{c} | {v['throughput']:.2f} | {v['p50_ms']:.0f} | {v['p99_ms']:.0f} | {v['mean_batch']:.1f}"
        )
    e = r["engine_samples_per_s"]
    lines += [
        "",
        f"server, concurrency 32 / sequential throughput: {r['server_ratio_c32_over_c1']:.2f}×",
        f"engine alone (vedas bench (c)), batch 16 / batch 1: {r['engine_ratio_batch16_over_batch1']:.2f}× "
        f"({e['batch16']:.2f} vs {e['batch1']:.2f} samples/s)",
        f"server keeps {100 * r['server_share_of_engine_ratio']:.0f} % of the engine's ratio (target ≥ 80 %)",
        f"server at concurrency 32 / engine at batch 16 throughput: {r['server_c32_over_engine_batch16']:.2f}",
        f"answers differing from the sequential run: {r['answers_differing_from_sequential']}",
        "",
        "streamed, concurrency | TTFT ms | last chunk ms | TTFT / last | same answers",
        "---|---|---|---|---",
    ]
    for c, v in r["streaming"].items():
        lines.append(
            f"{c} | {v['ttft_ms']:.0f} | {v['last_ms']:.0f} | {v['ttft_over_last']:.2f} | "
            f"{v['answers_equal_non_streamed']}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one round (a smoke run)")
    ap.add_argument(
        "--rounds", type=int, default=3, help="rounds of engine + server measurements (default: 3)"
    )
    ap.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    vm, images, questions, choices = bench.build("cpu", n=N_REQUESTS)
    requests = requests_for(images, questions, choices, vm.config.max_new_tokens)
    rounds = 1 if args.quick else args.rounds
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = vm.save(Path(tmp) / "bench")
        server = start_server(ckpt, Path(tmp) / "serve.log", "--max-batch-size", "16")
        try:
            engine, served = [], []
            for _ in range(rounds):
                engine.append(engine_round(vm, images, questions, choices))
                served.append(server_round(server.url, server.name, requests))
        finally:
            stop_server(server)
    result = {
        **summarise(engine, served),
        "threads": torch.get_num_threads(),
        "rounds": rounds,
        "requests": N_REQUESTS,
        "sizes": bench.SIZES,
    }
    print(
        f"tiny Qwen2-VL {bench.SIZES}, {N_REQUESTS} requests, {rounds} round(s), {torch.get_num_threads()} thread(s)"
    )
    print(table(result))
    bench.write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
