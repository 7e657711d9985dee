"""Serving throughput with 1 vs N replicas of ``vedas serve --replicas`` on Ray Serve.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/serve_replicas.py [--device cpu|cuda] [--replicas 2]
                                                                   [--requests 64] [--json out.json]

One tiny random Qwen2-VL of ``vedas bench``'s sizes (``vedas.experiments.bench.SIZES``) is saved
as a checkpoint. This process starts one local Ray cluster on loopback (``--device cpu``: as many
CPUs as replicas, each replica one CPU and one torch thread; ``--device cuda``: the GPUs Ray
detects, one per replica); a real ``vedas serve --replicas 1`` and then ``--replicas N`` process
(``--ray-address`` of that cluster, ``--max-batch-size 16``) each serve the same requests at
concurrency 32 through the official ``openai`` client (:func:`vedas.serve.load.run_load`) after
one warm-up pass. It prints requests/s for each, their ratio, and how many answers differ.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import ray

from serve import requests_for
from vedas.experiments import bench
from vedas.serve.load import run_load
from vedas.serve.process import start_server, stop_server

CONCURRENCY = 32


def measure(
    ckpt: Path, address: str, replicas: int, device: str, requests: list, log: Path
) -> dict[str, Any]:
    """One deployment of ``replicas`` replicas: a warm-up pass, then the measured pass."""
    flags = (
        "--replicas",
        str(replicas),
        "--ray-address",
        address,
        "--device",
        device,
        "--max-batch-size",
        "16",
    )
    server = start_server(ckpt, log, *flags, timeout=600)
    try:
        run_load(f"{server.url}/v1", server.name, requests[:CONCURRENCY], CONCURRENCY)  # warm-up
        r = run_load(f"{server.url}/v1", server.name, requests, CONCURRENCY)
    finally:
        stop_server(server, timeout=120)
    if r.errors:
        raise RuntimeError(f"{replicas} replicas: {len(r.errors)} requests failed: {r.errors[:3]}")
    return {"throughput": r.throughput, "p50_ms": 1e3 * r.percentile(50), "answers": r.answers}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="replica device (default: cpu)")
    ap.add_argument("--replicas", type=int, default=2, help="the N compared with 1 (default: 2)")
    ap.add_argument("--requests", type=int, default=64, help="requests per measured pass (default: 64)")
    ap.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # the replicas inherit it: one torch thread each
    vm, images, questions, choices = bench.build("cpu", n=args.requests)
    requests = requests_for(images, questions, choices, vm.config.max_new_tokens)
    cpus = args.replicas if args.device == "cpu" else None
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    try:
        address = ray.get_runtime_context().gcs_address
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = vm.save(Path(tmp) / "bench")
            runs = {
                n: measure(ckpt, address, n, args.device, requests, Path(tmp) / f"serve{n}.log")
                for n in (1, args.replicas)
            }
    finally:
        ray.shutdown()
    one, many = runs[1], runs[args.replicas]
    result = {
        "device": args.device,
        "requests": args.requests,
        "concurrency": CONCURRENCY,
        "sizes": bench.SIZES,
        "replicas": {str(n): {k: v for k, v in r.items() if k != "answers"} for n, r in runs.items()},
        "ratio": many["throughput"] / one["throughput"],
        "answers_differing": sum(a != b for a, b in zip(one["answers"], many["answers"])),
        # a shared machine: the replicas only scale with free cores
        "load_average_1min_at_end": os.getloadavg()[0],
        "cpus": os.cpu_count(),
    }
    print(
        f"tiny Qwen2-VL {bench.SIZES}, {args.requests} requests at concurrency {CONCURRENCY}, {args.device}"
    )
    for n, r in result["replicas"].items():
        print(f"{n} replica(s): {r['throughput']:.2f} requests/s, p50 {r['p50_ms']:.0f} ms")
    print(f"{args.replicas} / 1 replicas throughput: {result['ratio']:.2f}×")
    print(f"answers differing between the two: {result['answers_differing']}")
    bench.write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
