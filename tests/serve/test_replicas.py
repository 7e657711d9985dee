"""``vedas serve --replicas 2`` on a real local Ray cluster (2 CPUs, loopback), through the official client.

The test process starts the cluster (``ray.init(num_cpus=2)``); a real ``vedas serve --replicas 2
--ray-address …`` process deploys the app into it, so the test can see and kill the replicas.
32 concurrent requests get the single-process server's answers from both replicas; a replica
killed mid-run leaves every request answered or cleanly refused, and the deployment recovers.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from serve_helpers import MAX_TOKENS, data_url, random_image, start_server, stop_server, user

ray = pytest.importorskip("ray", reason="the ray extra (make setup installs it)")
serve = pytest.importorskip("ray.serve")

from vedas.serve.replicas import APP_NAME, REPLICA_HEADER  # noqa: E402

pytestmark = pytest.mark.slow
N = 32


def requests() -> list[list[dict]]:
    return [
        [user(f"How many squares? ({i})", data_url(random_image(56 + 28 * (i % 3), 84, seed=i)))]
        for i in range(N)
    ]


def ask(client: openai.OpenAI, name: str, messages: list[dict]) -> tuple[str, str]:
    """The answer's text and the replica that computed it (the header the app adds under Ray)."""
    raw = client.chat.completions.with_raw_response.create(
        model=name, messages=messages, max_tokens=MAX_TOKENS, temperature=0
    )
    return raw.parse().choices[0].message.content, raw.headers.get(REPLICA_HEADER, "")


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def replicas(cluster, checkpoint, tmp_path_factory):
    log = tmp_path_factory.mktemp("ray") / "serve.log"
    s = start_server(checkpoint, log, "--replicas", "2", "--ray-address", cluster, "--device", "cpu")
    yield s
    assert stop_server(s, timeout=60) == 0, log.read_text()[-3000:]


def replica_actors() -> dict[str, str]:
    """Replica id -> its actor's name, for the replicas of the app alive now."""
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)]
    return {n.rsplit("#", 1)[1]: n for n in names if n.startswith(f"SERVE_REPLICA::{APP_NAME}#")}


def wait_replaced(victim: str, timeout: float = 120) -> set[str]:
    """Until Serve runs 2 replicas again, none of them ``victim``; their ids."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        app = serve.status().applications.get(APP_NAME)
        alive = set(replica_actors())
        running = (
            [] if app is None else [d.replica_states.get("RUNNING", 0) for d in app.deployments.values()]
        )
        if (
            app is not None
            and app.status == "RUNNING"
            and running == [2]
            and len(alive) == 2
            and victim not in alive
        ):
            return alive
        time.sleep(0.5)
    raise TimeoutError(f"{APP_NAME}: {victim} not replaced within {timeout} s: {serve.status()}")


def test_two_replicas_answer_like_one_process_then_survive_a_killed_replica(server, client, replicas):
    batch = requests()
    with ThreadPoolExecutor(N) as pool:
        expected = [text for text, _ in pool.map(lambda m: ask(client, server.name, m), batch)]
    ray_client = openai.OpenAI(base_url=f"{replicas.url}/v1", api_key="unused", max_retries=0, timeout=120)
    with ThreadPoolExecutor(N) as pool:
        got = list(pool.map(lambda m: ask(ray_client, replicas.name, m), batch))
    assert [text for text, _ in got] == expected
    alive = replica_actors()
    assert {replica for _, replica in got} == set(alive) and len(alive) == 2  # both got traffic
    # streaming passes Ray's proxy: the streamed text adds up to the same answer
    chunks = ray_client.chat.completions.create(
        model=replicas.name, messages=batch[0], max_tokens=MAX_TOKENS, temperature=0, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected[0]

    # kill one replica's actor while the 32 requests are in flight; the client retries 5xx twice
    retrying = openai.OpenAI(base_url=f"{replicas.url}/v1", api_key="unused", max_retries=2, timeout=120)
    first, done_before_kill = threading.Event(), []

    def one(messages: list[dict]) -> tuple[str, str] | Exception:
        try:
            answer = ask(retrying, replicas.name, messages)
        except (openai.APIStatusError, openai.APIConnectionError) as e:
            return e
        first.set()
        return answer

    victim = sorted(alive)[0]
    with ThreadPoolExecutor(N) as pool:
        futures = [pool.submit(one, m) for m in batch]
        assert first.wait(120)
        done_before_kill.extend(f for f in futures if f.done())
        ray.kill(ray.get_actor(alive[victim], namespace="serve"), no_restart=True)
        outcomes = [f.result() for f in futures]
    assert len(done_before_kill) < N  # the kill came while requests were still in flight
    for outcome, want in zip(outcomes, expected):
        if isinstance(outcome, openai.APIStatusError):  # a clean error: an HTTP status ≥ 500, not a hang
            assert outcome.status_code >= 500, outcome
        elif not isinstance(outcome, openai.APIConnectionError):
            assert outcome[0] == want

    errors = [o for o in outcomes if isinstance(o, Exception)]
    print(f"killed {victim}: {N - len(errors)} answered, {len(errors)} clean errors {errors[:2]}")

    now = wait_replaced(victim)  # Ray started a new replica in the killed one's place
    with ThreadPoolExecutor(N) as pool:
        after = list(pool.map(lambda m: ask(ray_client, replicas.name, m), batch))
    assert [text for text, _ in after] == expected
    assert {replica for _, replica in after} == now  # the new replica serves too
    ray_client.close()
    retrying.close()
