"""The LLM quota shared through the warehouse: the same decisions as the in-process limiter on a fake clock,
and, counted on the Gemini stub's own clock, never more than the limit per window from 4 worker processes
(DuckDB file and PostgreSQL), nor capacity lost for good when a worker is SIGKILLed with requests in flight."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from dataclasses import replace
from types import SimpleNamespace

import pytest
from fine_tune_dag_testkit.gemini_stub import GeminiStub, StubReply, requests_per_window

from fine_tune_dag.core.common.llm_types import LLMRequest
from fine_tune_dag.core.llm.gemini import GeminiLLM, GeminiSettings
from fine_tune_dag.core.llm.quota import SharedRateLimiter, quota_key
from fine_tune_dag.core.llm.ratelimit import RateLimiter, RetryPolicy
from fine_tune_dag.core.store.quota_slots import QuotaSlots, quota_slots
from fine_tune_dag.core.store.warehouse import Warehouse
from fine_tune_dag_tests.llm.test_ratelimit import FakeClock

KEY = "AIzaTEST-not-a-real-key-5f2c"
WINDOW_S = 2.0
LIMIT = 6  # requests per window
SETTINGS = GeminiSettings(
    requests_per_minute=LIMIT,
    rate_window_s=WINDOW_S,
    timeout_s=10.0,  # never reached: every request is answered once, even on a busy machine
    max_concurrency=2,
    retry=RetryPolicy(max_attempts=2, initial_backoff_s=0.01, max_backoff_s=0.05),
)
VICTIM_TIMEOUT_S = 1.5
# a full window, give or take one request: on a loaded machine, acquirers queueing on a DuckDB file's lock (the
# warehouse backs off while another process holds it) can spread one window's admissions over more than a window
REACHED = LIMIT - 1
SPAWN = multiprocessing.get_context("spawn")


# (operation, slot name, at, tokens): acquire or settle, the clock moved on to `at` first when still behind
SCRIPT = [
    ("acquire", "a", 0.0, 100),
    ("acquire", "b", 1.0, 50),
    ("settle", "b", 2.0, 0),
    ("acquire", "c", 3.0, 50),
    ("settle", "c", 4.0, 0),
    ("acquire", "d", 5.0, 10),  # three in the window: the first to leave is b, not a still in flight
    ("settle", "d", 0.0, 0),
    ("settle", "a", 70.0, 0),
    ("acquire", "e", 70.0, 150),  # tokens: waits for d to leave, not for a answered after it
    ("settle", "e", 0.0, 0),
    ("acquire", "f", 0.0, 1000),  # capped at the budget: a clear window
]


def run_script(limiter: RateLimiter, clock: FakeClock) -> list[tuple[float, float]]:
    """(admitted at, waited) for every acquire in SCRIPT."""
    slots, admitted = {}, []
    for operation, name, at, tokens in SCRIPT:
        clock.now = max(clock.now, at)
        if operation == "settle":
            limiter.settle(slots[name])
            continue
        slots[name] = limiter.acquire(tokens)
        admitted.append((round(slots[name].sent_at, 6), round(slots[name].waited, 6)))
    return admitted


def test_the_shared_limiter_decides_as_the_in_process_one(tmp_path):
    here_clock, shared_clock = FakeClock(), FakeClock()
    here = RateLimiter(3, 250, clock=here_clock, sleep=here_clock.sleep)
    warehouse = Warehouse(tmp_path / "w.duckdb")
    shared = SharedRateLimiter(warehouse, "k", 3, 250, 1000.0, clock=shared_clock, sleep=shared_clock.sleep)
    expected = [(0.0, 0.0), (1.0, 0.0), (3.0, 0.0), (62.0, 57.0), (122.0, 52.0), (182.0, 60.0)]
    assert run_script(here, here_clock) == expected
    assert run_script(shared, shared_clock) == expected
    with QuotaSlots(warehouse).transaction() as con:
        rows = [(sent_at, settled) for _, sent_at, _, settled, _ in quota_slots(con, "k")]
    assert rows == [(182.0, False)]  # f in flight; the rows of slots that left were deleted


def test_a_dead_processs_slot_leaves_a_window_after_its_deadline(tmp_path):
    clock = FakeClock()
    warehouse = Warehouse(tmp_path / "w.duckdb")
    dead, alive = (
        SharedRateLimiter(warehouse, "k", 1, 100, 5.0, clock=clock, sleep=clock.sleep, window_s=60.0) for _ in "ab"
    )
    dead.acquire(1)  # never settled: its process was killed
    assert alive.acquire(1).waited == pytest.approx(65.0)  # sent at 0, answered by 5 or never, gone at 65
    with QuotaSlots(warehouse).transaction() as con:
        assert [sent_at for _, sent_at, *_ in quota_slots(con, "k")] == [pytest.approx(65.0)]  # the dead slot's is gone


def test_the_resource_paces_hosted_providers_under_the_quota_of_the_assets_warehouse(tmp_path):
    # imported here: the worker processes import this module, and Dagster would cost each seconds to load
    import dagster as dg

    from fine_tune_dag.resources.llm import LLMResource
    from fine_tune_dag.resources.paths import ProjectPaths

    fields = {"provider": "gemini", "api_key": KEY, "base_url": "http://user:secret@127.0.0.1:9", "model": "m"}
    llm = LLMResource(paths=ProjectPaths(data_dir=str(tmp_path)), **fields)
    warehouse = Warehouse(tmp_path / "w.duckdb")
    context = SimpleNamespace(run=SimpleNamespace(run_id="r"), asset_key=dg.AssetKey("qa"), has_partition_key=False)
    client = llm.cached(warehouse, context).client
    limiter = client._limiter
    assert isinstance(limiter, SharedRateLimiter) and limiter.slots.warehouse.path == warehouse.path.resolve()
    assert limiter.key == "gemini/m/http://127.0.0.1:9" and limiter.in_flight_s == llm.timeout_s
    assert llm.client(Warehouse(tmp_path / "w.duckdb")) is client  # one per process: its threads share the limiter
    assert type(llm.client()._limiter) is RateLimiter  # no warehouse named: this process alone
    alone = LLMResource(paths=ProjectPaths(data_dir=str(tmp_path)), shared_quota=False, **fields)
    assert type(alone.client(warehouse)._limiter) is RateLimiter
    assert "secret" not in repr(replace(SETTINGS, quota_warehouse="postgresql://u:secret@db/w"))


def ask(tag: str, count: int) -> list[LLMRequest]:
    return [LLMRequest((("user", f"{tag} r{i:02d}"),), "t", "1", max_new_tokens=8) for i in range(count)]


def worker(settings: GeminiSettings, tag: str, count: int, go) -> None:
    """One worker process: its own client, over the quota table every worker shares."""
    client = GeminiLLM(KEY, settings)
    go.wait()
    results = client.complete(ask(tag, count))
    assert [result.status for result in results] == ["ok"] * count


@pytest.fixture(params=["duckdb-file", "postgres"])
def quota_warehouse(request, tmp_path) -> str:
    if request.param == "duckdb-file":  # the slots in a SQLite file beside it
        return str(tmp_path / "w.duckdb")
    server = request.getfixturevalue("postgres_server")
    return server.url(server.create_database("quota"))


def start(settings: GeminiSettings, tags: list[str], count: int, go) -> list:
    processes = [SPAWN.Process(target=worker, args=(settings, tag, count, go)) for tag in tags]
    for process in processes:
        process.start()
    return processes


def finish(processes: list, timeout_s: float = 60.0) -> list[int | None]:
    for process in processes:
        process.join(timeout_s)
        if process.is_alive():
            process.kill()
    return [process.exitcode for process in processes]


def test_four_worker_processes_never_exceed_the_limit(quota_warehouse):
    with GeminiStub(latency_s=0.2) as stub:
        settings = replace(SETTINGS, base_url=stub.base_url, quota_warehouse=quota_warehouse)
        go = SPAWN.Event()
        workers = start(settings, ["w0", "w1", "w2", "w3"], 5, go)
        go.set()
        assert finish(workers) == [0, 0, 0, 0]
    assert len(stub.requests) == 20  # every request answered once: no 429, no retry
    assert REACHED <= stub.requests_per_window(WINDOW_S) <= LIMIT  # the limit reached, never passed


def test_a_killed_workers_slots_expire_and_the_rest_get_the_whole_limit(quota_warehouse):
    victim = lambda request: StubReply(delay_s=60.0) if "victim" in request.prompt_text else StubReply()  # noqa: E731
    with GeminiStub(victim, latency_s=0.1) as stub:
        settings = replace(SETTINGS, base_url=stub.base_url, quota_warehouse=quota_warehouse)
        go, at_once = SPAWN.Event(), SPAWN.Event()
        at_once.set()
        survivors = start(settings, ["w1", "w2", "w3"], 6, go)
        # its slots count until a window after their send + its timeout, kept short so they expire soon
        (doomed,) = start(replace(settings, max_concurrency=3, timeout_s=VICTIM_TIMEOUT_S), ["victim"], 3, at_once)
        deadline = time.monotonic() + 30
        while sum("victim" in r.prompt_text for r in stub.requests) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(doomed.pid, signal.SIGKILL)  # three slots held, unsettled, by a process that is gone
        doomed.join()
        go.set()
        assert finish(survivors) == [0, 0, 0]
        arrivals = stub.requests
        key = quota_key(GeminiLLM.provider, settings.model, settings.base_url)
    lost = [r.received_at for r in arrivals if "victim" in r.prompt_text]
    assert len(lost) == 3 and len(arrivals) == 3 + 18
    assert requests_per_window((r.received_at for r in arrivals), WINDOW_S) <= LIMIT  # the dead worker's too
    expired = max(lost) + VICTIM_TIMEOUT_S + WINDOW_S
    after = [r.received_at for r in arrivals if r.received_at >= expired]
    assert requests_per_window(after, WINDOW_S) >= REACHED  # the dead slots' capacity came back (leaked: 3)
    with QuotaSlots(Warehouse(quota_warehouse)).transaction() as con:
        assert not [row for row in quota_slots(con, key) if not row[3]]  # the dead slots' rows were deleted
