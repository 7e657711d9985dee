"""A bounded load test on loopback: 64 requests at concurrency 1, 8 and 32 against a tiny checkpoint.

No request is lost or run twice (the server's counters and the response ids say so), every
answer equals the sequential one (each request alone through ``VedasModel.generate``), and
concurrent requests really share engine batches.
"""

from __future__ import annotations

import pytest
from serve_helpers import MAX_TOKENS, data_url, health, random_image, start_server, stop_server, user

from vedas.serve.load import check_loopback, run_load

N = 64
MAX_BATCH = 16


@pytest.fixture(scope="module")
def load_server(checkpoint, tmp_path_factory):
    log = tmp_path_factory.mktemp("load") / "serve.log"
    s = start_server(checkpoint, log, "--max-batch-size", str(MAX_BATCH), "--batch-timeout-ms", "20")
    yield s
    stop_server(s)


@pytest.fixture(scope="module")
def workload():
    """64 distinct requests (question i, image i of one of four sizes) as ``create`` kwargs, and their inputs."""
    sizes = [(56, 84), (84, 56), (84, 112), (112, 112)]
    images = [random_image(*sizes[i % 4], seed=100 + i) for i in range(N)]
    questions = [f"How many shapes are in picture {i}?" for i in range(N)]
    modes = ["vedas", "latent"]  # two modes, so batches also have to be split by key
    requests = [
        {
            "messages": [user(q, data_url(im))],
            "max_tokens": MAX_TOKENS,
            "temperature": 0,
            "extra_body": {"mode": modes[i % 2]},
        }
        for i, (q, im) in enumerate(zip(questions, images))
    ]
    return requests, images, questions, [modes[i % 2] for i in range(N)]


@pytest.fixture(scope="module")
def sequential(local_vm, workload):
    """Each request alone, in process: the answer the server must give under any load."""
    _, images, questions, modes = workload
    return [
        local_vm.generate([im], [q], mode=m, max_new_tokens=MAX_TOKENS)[0][0]
        for im, q, m in zip(images, questions, modes)
    ]


@pytest.mark.parametrize("concurrency", [1, 8, 32])
def test_no_request_lost_or_duplicated_and_answers_equal_the_sequential_ones(
    load_server, workload, sequential, concurrency
):
    requests = workload[0]
    before = health(load_server)
    r = run_load(f"{load_server.url}/v1", load_server.name, requests, concurrency, timeout_s=120)
    after = health(load_server)
    assert r.errors == []
    assert len(set(r.ids)) == N and all(r.ids)  # one answer per request, none twice
    assert after["submitted"] - before["submitted"] == N and after["rows"] - before["rows"] == N
    assert after["dropped"] == before["dropped"] and after["failed_batches"] == 0
    mismatched = [i for i in range(N) if r.answers[i] != sequential[i]]
    assert mismatched == [], f"{len(mismatched)} answers differ from the sequential run: {mismatched[:8]}"
    assert max(r.batch_sizes) <= MAX_BATCH
    if concurrency == 1:
        assert set(r.batch_sizes) == {1}
    else:
        assert max(r.batch_sizes) > 1  # concurrent requests shared engine calls


def test_load_is_only_sent_to_loopback():
    check_loopback("http://127.0.0.1:1/v1")
    check_loopback("http://localhost:1/v1")
    with pytest.raises(ValueError, match="loopback"):
        check_loopback("http://10.0.0.1:8000/v1")
