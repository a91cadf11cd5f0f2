"""`provider: openai` through the real `openai` SDK against the local Chat Completions stub: answers in order
with token counts, 429s waited out for as long as Retry-After says (on the stub's clock), 5xx and timeouts
retried, malformed bodies failing only their own request, content filters as blocked answers, pacing counted
where the server counts it, the key sent as a Bearer header and nowhere else, and the notes job run on it."""

import email.utils
import logging
import time
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import pytest
from fine_tune_dag_testkit.notes import write_sample_notes
from fine_tune_dag_testkit.openai_stub import ChatReply, OpenAIStub, scripted
from fine_tune_dag_testkit.scripted import ScriptedLLM

from fine_tune_dag.automation.jobs import notes_job
from fine_tune_dag.core.common.llm_types import LLMRequest
from fine_tune_dag.core.llm.cache import CachedLLM
from fine_tune_dag.core.llm.openai_compat import (
    NO_KEY,
    OpenAICompatibleError,
    OpenAICompatibleLLM,
    OpenAISettings,
    retry_after_seconds,
)
from fine_tune_dag.core.llm.ratelimit import RetryPolicy
from fine_tune_dag.core.store.warehouse import Warehouse
from fine_tune_dag.definitions import build_definitions
from fine_tune_dag.prompts import load_prompt
from fine_tune_dag.resources.llm import LLMResource
from fine_tune_dag.resources.paths import ProjectPaths
from fine_tune_dag.runner import register_note_partitions

KEY = "sk-proj-TEST-not-a-real-key-7c1d"
FAST_RETRY = RetryPolicy(max_attempts=4, initial_backoff_s=0.01, max_backoff_s=0.05)


def client(stub: OpenAIStub, key: str = KEY, seed: int = 0, **settings) -> OpenAICompatibleLLM:
    defaults = {"model": "stub-model", "requests_per_minute": 10_000, "timeout_s": 2.0, "retry": FAST_RETRY}
    return OpenAICompatibleLLM(key, OpenAISettings(base_url=stub.base_url, **{**defaults, **settings}), seed)


def requests(n: int) -> list[LLMRequest]:
    template = load_prompt("grounded_qa")
    return [
        LLMRequest.from_template(template, 64, passage=f"Passage {i}: the chain wears.", count="2") for i in range(n)
    ]


def passage_number(request) -> int:
    return int(request.prompt_text.rsplit("Passage ", 1)[1].split(":")[0])


def test_answers_come_back_in_order_with_token_counts():
    def answer(request) -> ChatReply:
        i = passage_number(request)  # the first request answers last
        return ChatReply(text=f"answer {i}", delay_s=0.05 * (4 - i), prompt_tokens=100 + i, output_tokens=10 + i)

    with OpenAIStub(answer) as stub:
        results = client(stub, seed=7).complete(requests(4))
    assert [r.text for r in results] == ["answer 0", "answer 1", "answer 2", "answer 3"]
    assert [(r.input_tokens, r.output_tokens) for r in results] == [(100 + i, 10 + i) for i in range(4)]
    assert all(r.status == "ok" and r.latency_s > 0 for r in results)
    sent = stub.requests[0]
    assert sent.path == "/v1/chat/completions" and sent.body["model"] == "stub-model"
    assert sent.body["messages"][0] == {"role": "system", "content": load_prompt("grounded_qa").system.strip()}
    assert sent.body["messages"][-1]["role"] == "user" and "Passage" in sent.body["messages"][-1]["content"]
    assert (sent.body["max_tokens"], sent.body["temperature"], sent.body["seed"]) == (64, 0.0, 7)


def test_a_429_is_retried_after_the_retry_after_delay():
    with OpenAIStub(scripted([ChatReply(status=429, retry_after_s=1)])) as stub:
        (result,) = client(stub).complete(requests(1))
    first, second = stub.requests
    assert result.text == "stub answer" and len(stub.requests) == 2
    assert second.received_at - first.received_at >= 1.0  # the hint, not the 0.05 s backoff


def test_retry_after_is_read_in_milliseconds_seconds_or_as_a_date():
    assert retry_after_seconds({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert retry_after_seconds({"retry-after": "2"}) == 2.0
    in_a_minute = email.utils.formatdate(time.time() + 60, usegmt=True)
    assert 55 < retry_after_seconds({"retry-after": in_a_minute}) <= 60
    assert retry_after_seconds({}) is None and retry_after_seconds({"retry-after": "soon"}) is None


@pytest.mark.parametrize("status", [500, 503])
def test_server_errors_are_retried(status):
    with OpenAIStub(scripted([ChatReply(status=status), ChatReply(status=status)])) as stub:
        (result,) = client(stub).complete(requests(1))
    assert result.status == "ok" and len(stub.requests) == 3


def test_a_hang_past_the_timeout_is_retried_then_given_up_clearly():
    with OpenAIStub(scripted([ChatReply(delay_s=1.0)])) as stub:
        (result,) = client(stub, timeout_s=0.3).complete(requests(1))
    assert result.status == "ok" and len(stub.requests) == 2
    with OpenAIStub(lambda r: ChatReply(delay_s=1.0)) as stub, pytest.raises(OpenAICompatibleError) as raised:
        client(stub, timeout_s=0.2).complete(requests(1))
    assert "timed out (after 4 attempts)" in str(raised.value) and len(stub.requests) == 4


def test_a_server_that_is_not_there_is_retried_then_named():
    with OpenAIStub() as stub:
        gone = client(stub)  # the port is closed once the stub stops
    with pytest.raises(OpenAICompatibleError, match=r"connection failed \(ConnectError\) \(after 4 attempts\)"):
        gone.complete(requests(1))


@pytest.mark.parametrize("fault", [{"malformed": True}, {"truncated": True}])
def test_a_malformed_body_fails_its_request_clearly_and_the_others_finish(fault):
    def answer(request) -> ChatReply:
        return ChatReply(**fault) if passage_number(request) == 1 else ChatReply(text="fine")

    with OpenAIStub(answer) as stub, pytest.raises(OpenAICompatibleError) as raised:
        server = stub.base_url.removeprefix("http://").removesuffix("/v1")
        client(stub, max_concurrency=3).complete(requests(3))
    message = str(raised.value)
    assert message.startswith(f"OpenAI-compatible stub-model at {server} ")
    assert "(grounded_qa): the response was not valid JSON (after 4 attempts)" in message
    assert raised.value.__cause__ is None and raised.value.__context__ is None and KEY not in message
    by_passage = {i: [r for r in stub.requests if passage_number(r) == i] for i in range(3)}
    assert len(by_passage[1]) == 4  # retried like any other transient fault
    assert [len(by_passage[0]), len(by_passage[2])] == [1, 1]  # the others were sent once and answered
    assert all(r.finished_at is not None for r in by_passage[0] + by_passage[2])


def test_a_content_filter_is_blocked_and_a_blank_answer_is_empty():
    replies = [ChatReply(text=None, finish_reason="content_filter"), ChatReply(text="  ", finish_reason="length")]
    with OpenAIStub(scripted(replies)) as stub:
        blocked, empty = client(stub, max_concurrency=1).complete(requests(2))
    assert (blocked.status, blocked.text, blocked.detail) == ("blocked", "", "content_filter")
    assert (empty.status, empty.text, empty.detail) == ("empty", "", "length")
    assert blocked.input_tokens > 0


def test_a_bad_key_fails_at_once_without_the_key_in_the_message():
    with OpenAIStub(lambda r: ChatReply(status=401)) as stub, pytest.raises(OpenAICompatibleError) as raised:
        client(stub).complete(requests(1))
    assert len(stub.requests) == 1 and "HTTP 401" in str(raised.value) and "OPENAI_API_KEY" in str(raised.value)
    assert KEY not in str(raised.value) and raised.value.__cause__ is None and raised.value.__context__ is None


def test_requests_per_minute_hold_on_the_servers_clock():
    with OpenAIStub() as stub:
        started = time.monotonic()
        client(stub, max_concurrency=8, requests_per_minute=3, rate_window_s=0.5).complete(requests(9))
    assert stub.requests_per_window(0.5) <= 3
    assert time.monotonic() - started >= 1.0  # nine requests at three a window need three windows


def test_a_local_server_needs_no_key():
    with OpenAIStub() as stub:
        (result,) = client(stub, key="").complete(requests(1))
    assert result.status == "ok" and stub.requests[0].api_key == NO_KEY


def test_the_key_is_a_bearer_header_and_nowhere_in_logs_or_the_warehouse(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    warehouse = Warehouse(tmp_path / "w.duckdb")
    replies = [ChatReply(status=429, retry_after_s=0), ChatReply(text=None, finish_reason="content_filter")]
    with OpenAIStub(scripted(replies)) as stub:
        CachedLLM(client(stub, max_concurrency=1), warehouse).complete(requests(3))
    assert [r.headers["authorization"] for r in stub.requests] == [f"Bearer {KEY}"] * 4
    assert "chat/completions" in caplog.text and KEY not in caplog.text  # the SDK's debug logs were captured
    for table in ("llm_cache", "llm_requests"):
        dump = warehouse.query(f"SELECT * FROM {table}").to_csv()
        assert KEY not in dump and len(dump) > 100
    log = warehouse.query("SELECT provider, status, cost_usd FROM llm_requests")
    assert set(log["provider"]) == {"openai"} and log["cost_usd"].sum() == 0  # an unknown model costs nothing
    assert dict(log["status"].value_counts()) == {"ok": 2, "blocked": 1}
    assert (tmp_path / "w.duckdb").read_bytes().find(KEY.encode()) == -1


def resource(**fields) -> LLMResource:
    return LLMResource(paths=ProjectPaths(notes_dir="notes", data_dir="data"), **fields)


def test_the_resource_builds_one_paced_client_and_judges_by_default(tmp_path):
    llm = resource(provider="openai", model="gpt-4o-mini", base_url="http://127.0.0.1:9/v1")
    openai_client = llm.client(Warehouse(tmp_path / "w.duckdb"))
    assert isinstance(openai_client, OpenAICompatibleLLM)
    assert openai_client is llm.client(Warehouse(tmp_path / "w.duckdb"))  # one per process and quota warehouse
    assert openai_client.settings.requests_per_minute == OpenAISettings.requests_per_minute
    assert llm.price_table()["gpt-4o-mini"] == (0.15, 0.60)
    context = SimpleNamespace(
        run=SimpleNamespace(run_id="r"), asset_key=dg.AssetKey("eval_report"), has_partition_key=False
    )
    judge = llm.judge("auto", Warehouse(tmp_path / "w.duckdb"), context)
    assert judge is not None and judge.client is openai_client
    assert resource().judge("auto", Warehouse(tmp_path / "w.duckdb"), context) is None  # the bundled model does not
    with pytest.raises(ValueError, match="needs `model`"):
        resource(provider="openai").client()
    with pytest.raises(ValueError, match="openai"):
        resource(provider="nope").client()


def scripted_chat(request) -> ChatReply:
    """The scripted LLM's answers, served over the stub (the template told apart by its system prompt)."""
    template = next(
        name
        for name in ("chunk_boundaries", "grounded_qa", "back_translation", "pair_judge")
        if load_prompt(name).system.strip()[:60] in request.system_text
    )
    return ChatReply(text=ScriptedLLM._answer(template, request.body["messages"][-1]["content"]))


def test_the_notes_job_chunks_and_synthesizes_on_openai(tmp_path):
    notes, data = tmp_path / "notes", tmp_path / "data"
    write_sample_notes(notes, 2)
    config = {"ops": {"passages": {"config": {"min_chars": 60, "max_chars": 200}}}}
    with OpenAIStub(scripted_chat) as stub, dg.instance_for_test() as instance:
        llm = LLMResource(
            provider="openai",
            model="gpt-4o-mini",
            api_key=KEY,
            base_url=stub.base_url,
            paths=ProjectPaths(notes_dir=str(notes), data_dir=str(data)),
        )
        job = build_definitions(str(notes), str(data), llm=llm).resolve_job_def(notes_job.name)
        for key in register_note_partitions(instance, notes):
            assert job.execute_in_process(instance=instance, partition_key=key, run_config=config).success
        logs = [str(entry) for run in instance.get_runs() for entry in instance.all_logs(run.run_id)]
        stored = [path for path in Path(instance.root_directory).rglob("*") if path.is_file()]
    assert {r.api_key for r in stub.requests} == {KEY}
    assert {r.body["model"] for r in stub.requests} == {"gpt-4o-mini"}
    db = Warehouse(data / "warehouse.duckdb")
    log = db.query("SELECT * FROM llm_requests")
    assert (log["provider"] == "openai").all() and (~log["cache_hit"]).sum() == len(stub.requests)
    assert set(log["asset"]) == {"passages", "qa_pairs"} and log["cost_usd"].sum() > 0  # gpt-4o-mini is priced
    assert (db.query("SELECT status FROM qa_pairs")["status"] == "kept").any()
    assert "llm_cost_usd" in " ".join(logs) and all(KEY not in text for text in logs)
    for path in [*stored, *data.rglob("*")]:
        assert not path.is_file() or KEY.encode() not in path.read_bytes(), path
