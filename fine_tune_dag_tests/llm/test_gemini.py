"""GeminiLLM through the real google-genai SDK against the local REST stub: happy path, 429 storms
with retry hints, 5xx, timeouts, malformed/blocked/empty answers, the concurrency bound and the
rate limit measured from the stub's own timestamps, and the key never leaking."""

import time
from pathlib import Path

import dagster as dg
import pytest
from fine_tune_dag_testkit.gemini_stub import GeminiStub, StubReply, scripted
from fine_tune_dag_testkit.notes import write_sample_notes
from fine_tune_dag_testkit.scripted import ScriptedLLM

from fine_tune_dag.core.common.llm_types import LLMRequest
from fine_tune_dag.core.llm.cache import CachedLLM
from fine_tune_dag.core.llm.gemini import GeminiError, GeminiLLM, GeminiSettings
from fine_tune_dag.core.llm.ratelimit import RetryPolicy
from fine_tune_dag.core.store.warehouse import Warehouse
from fine_tune_dag.definitions import build_definitions
from fine_tune_dag.prompts import load_prompt
from fine_tune_dag.resources.llm import LLMResource
from fine_tune_dag.resources.paths import ProjectPaths
from fine_tune_dag.runner import materialize_graph

KEY = "AIzaTEST-not-a-real-key-5f2c"
FAST_RETRY = RetryPolicy(max_attempts=4, initial_backoff_s=0.01, max_backoff_s=0.05)
GRAPH_CONFIG = {
    "ops": {
        "passages": {"config": {"min_chars": 60, "max_chars": 200}},
        "dataset_splits": {"config": {"test_fraction": 0.5}},
        "lora_adapter": {"config": {"max_steps": 2, "batch_size": 4, "dtype": "float32"}},
        "eval_report": {"config": {"max_new_tokens": 4, "max_examples": 4, "dtype": "float32"}},
    }
}


def client(stub: GeminiStub, **settings) -> GeminiLLM:
    defaults = {"requests_per_minute": 10_000, "timeout_s": 2.0, "retry": FAST_RETRY}
    return GeminiLLM(KEY, GeminiSettings(base_url=stub.base_url, **{**defaults, **settings}))


def requests(n: int) -> list[LLMRequest]:
    template = load_prompt("grounded_qa")
    return [
        LLMRequest.from_template(template, 64, passage=f"Passage {i}: the chain wears.", count="2") for i in range(n)
    ]


def test_happy_path_sends_system_json_schema_and_key_once():
    with GeminiStub(lambda r: StubReply(text=f"answer {r.index}")) as stub:
        results = client(stub).complete(requests(2))
    assert sorted(r.text for r in results) == ["answer 0", "answer 1"]
    assert all(r.status == "ok" and r.input_tokens > 0 and r.output_tokens > 0 for r in results)
    sent = stub.requests[0]
    assert "questions about a piece of personal writing" in sent.system_text
    assert sent.body["generationConfig"]["responseMimeType"] == "application/json"
    assert sent.body["generationConfig"]["maxOutputTokens"] == 64
    assert sent.api_key == KEY and "/v1beta/" in sent.path


def test_a_storm_of_429s_is_retried_honouring_the_servers_delay():
    storm = [StubReply(status=429, retry_delay_s=0.3)] * 3
    with GeminiStub(scripted(storm)) as stub:
        started = time.monotonic()
        (result,) = client(stub).complete(requests(1))
    assert result.text == "stub answer" and len(stub.requests) == 4
    assert time.monotonic() - started >= 0.9  # three hints of 0.3 s, not the 0.01 s backoff


@pytest.mark.parametrize("status", [500, 503])
def test_server_errors_are_retried(status):
    with GeminiStub(scripted([StubReply(status=status), StubReply(status=status)])) as stub:
        (result,) = client(stub).complete(requests(1))
    assert result.status == "ok" and len(stub.requests) == 3


def test_timeouts_and_malformed_bodies_are_retried_then_give_up_clearly():
    with GeminiStub(scripted([StubReply(delay_s=1.0), StubReply(malformed=True)])) as stub:
        (result,) = client(stub, timeout_s=0.3).complete(requests(1))
    assert result.status == "ok" and len(stub.requests) == 3
    with GeminiStub(lambda r: StubReply(delay_s=1.0)) as stub, pytest.raises(GeminiError, match="after 4 attempts"):
        client(stub, timeout_s=0.2).complete(requests(1))


def test_blocked_and_empty_answers_are_outcomes_not_crashes():
    with GeminiStub(scripted([StubReply(blocked=True), StubReply(empty=True)])) as stub:
        gemini = client(stub, max_concurrency=1)
        blocked, empty = gemini.complete(requests(2))
    assert (blocked.status, blocked.text) == ("blocked", "") and "SAFETY" in blocked.detail
    assert (empty.status, empty.text) == ("empty", "") and "SAFETY" in empty.detail


def test_a_bad_request_fails_at_once_without_the_key_in_the_message():
    with GeminiStub(lambda r: StubReply(status=400)) as stub, pytest.raises(GeminiError) as raised:
        client(stub).complete(requests(1))
    assert len(stub.requests) == 1 and "HTTP 400" in str(raised.value)
    assert KEY not in str(raised.value) and raised.value.__cause__ is None and raised.value.__context__ is None


def test_concurrency_is_bounded():
    with GeminiStub(latency_s=0.1) as stub:
        client(stub, max_concurrency=3).complete(requests(12))
    assert stub.max_in_flight == 3


def test_the_rate_limit_holds_on_the_servers_clock():
    with GeminiStub() as stub:
        started = time.monotonic()
        client(stub, max_concurrency=8, requests_per_minute=4, rate_window_s=1.0).complete(requests(12))
    assert stub.requests_per_window(1.0) <= 4  # counted where it matters: on the server's clock
    assert time.monotonic() - started >= 2.0  # 12 requests at 4 per second need three windows


def test_no_key_in_the_cache_or_request_log(tmp_path):
    warehouse = Warehouse(tmp_path / "w.duckdb")
    with GeminiStub(scripted([StubReply(status=429, retry_delay_s=0.01), StubReply(blocked=True)])) as stub:
        CachedLLM(client(stub, max_concurrency=1), warehouse).complete(requests(3))
    for table in ("llm_cache", "llm_requests"):
        dump = warehouse.query(f"SELECT * FROM {table}").to_csv()
        assert KEY not in dump and len(dump) > 100
    statuses = warehouse.query("SELECT status, count(*) AS n FROM llm_requests GROUP BY status")
    assert dict(zip(statuses["status"], statuses["n"])) == {"ok": 2, "blocked": 1}
    assert (tmp_path / "w.duckdb").read_bytes().find(KEY.encode()) == -1


def test_no_key_no_client():
    with pytest.raises(GeminiError, match="GEMINI_API_KEY"):
        GeminiLLM("", GeminiSettings())


def scripted_gemini(request) -> StubReply:
    """The scripted LLM's answers, served over the REST stub (the template told apart by its system text)."""
    template = next(
        name
        for name in ("chunk_boundaries", "grounded_qa", "back_translation", "pairwise_judge", "pair_judge")
        if load_prompt(name).system.strip()[:60] in request.system_text
    )
    last = request.body["contents"][-1]["parts"][0]["text"]
    return StubReply(text=ScriptedLLM._answer(template, last))


def test_the_whole_graph_on_gemini_logs_every_call_and_leaks_no_key(tmp_path, tiny_model_dir):
    notes, data = tmp_path / "notes", tmp_path / "data"
    write_sample_notes(notes, 4)
    with GeminiStub(scripted_gemini) as stub, dg.instance_for_test() as instance:
        llm = LLMResource(
            provider="gemini",
            model="gemini-2.5-flash",
            api_key=KEY,
            base_url=stub.base_url,
            requests_per_minute=10_000,
            paths=ProjectPaths(notes_dir=str(notes), data_dir=str(data)),
        )
        defs = build_definitions(str(notes), str(data), base_model_ref=str(tiny_model_dir), llm=llm)
        run = materialize_graph(defs, instance, notes, run_config=GRAPH_CONFIG)
        assert run.success and not run.failed_notes
        calls = len(stub.requests)
        assert materialize_graph(defs, instance, notes, run_config=GRAPH_CONFIG).success
        assert len(stub.requests) == calls  # the rerun paid nothing
        events = [
            str(record.event_log_entry)
            for record in instance.get_event_records(
                dg.EventRecordsFilter(event_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
            )
        ]
        logs = [str(entry) for run_record in instance.get_runs() for entry in instance.all_logs(run_record.run_id)]
        # the instance's own storage too: run and event databases, compute logs
        stored = [path for path in Path(instance.root_directory).rglob("*") if path.is_file()]
        assert stored and not [path for path in stored if KEY.encode() in path.read_bytes()]
    db = Warehouse(data / "warehouse.duckdb")
    log = db.query("SELECT * FROM llm_requests")
    assert (log["provider"] == "gemini").all() and (~log["cache_hit"]).sum() == calls
    assert log[log["cache_hit"]]["cost_usd"].sum() == 0 and log["cost_usd"].sum() > 0
    assert set(log["asset"]) == {"passages", "qa_pairs", "eval_report"} and log["run_id"].str.len().min() > 0
    qa = [e for e in events if "llm_cost_usd" in e]
    assert qa and all(KEY not in text for text in events + logs)
    report = db.query("SELECT report_path FROM evaluations")["report_path"].iloc[0]
    text = open(report).read()
    assert "| tuned vs base | LLM judge |" in text  # Gemini configured: the judge weighs in
    assert "| personal data | " in text and "teacher: gemini: redact; names covered by the list only" in text
    assert "pairwise_judge" in set(log["template"])
    for path in data.rglob("*"):
        assert not path.is_file() or KEY.encode() not in path.read_bytes(), path


def test_an_interrupted_run_resumes_without_paying_again(tmp_path):
    warehouse = Warehouse(tmp_path / "w.duckdb")
    ten = requests(10)
    with GeminiStub(lambda r: StubReply(status=403) if r.index >= 6 else StubReply()) as stub:
        with pytest.raises(GeminiError, match="HTTP 403"):
            CachedLLM(client(stub, max_concurrency=2), warehouse, chunk_size=2).complete(ten)
        paid_before = len(stub.requests)
    with GeminiStub() as stub:
        CachedLLM(client(stub, max_concurrency=2), warehouse, chunk_size=2).complete(ten)
    assert len(warehouse.query("SELECT * FROM llm_cache")) == 10
    assert paid_before == 8  # three chunks answered and stored, the fourth refused
    assert len(stub.requests) == 10 - 6  # the six stored answers were not bought again
