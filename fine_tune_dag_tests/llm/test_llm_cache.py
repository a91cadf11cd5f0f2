from dataclasses import dataclass, field

import pytest

from fine_tune_dag.core.common.llm_types import LLMRequest, LLMResult
from fine_tune_dag.core.llm.cache import CachedLLM, cache_key
from fine_tune_dag.core.llm.local import LocalLLM
from fine_tune_dag.core.store.warehouse import Warehouse
from fine_tune_dag.prompts import load_prompt


@dataclass
class CountingClient:
    provider: str = "counting"
    model_name: str = "echo-1"
    fail_after: int | None = None
    batches: list[int] = field(default_factory=list)
    received: list[LLMRequest] = field(default_factory=list)

    def complete(self, requests):
        if self.fail_after is not None and sum(self.batches) >= self.fail_after:
            raise RuntimeError("provider went away")
        self.batches.append(len(requests))
        self.received.extend(requests)
        return [LLMResult(f"answer to {r.messages[-1][1]}", input_tokens=10, output_tokens=3) for r in requests]


def requests(n: int, temperature: float = 0.0) -> list[LLMRequest]:
    template = load_prompt("back_translation")
    return [LLMRequest.from_template(template, 32, temperature, passage=f"passage {i}") for i in range(n)]


def test_second_pass_makes_zero_calls(tmp_path):
    warehouse = Warehouse(tmp_path / "w.duckdb")
    client = CountingClient()
    first = CachedLLM(client, warehouse, chunk_size=4)
    answers = first.complete(requests(10))
    assert first.usage.calls == 10 and first.usage.cache_hits == 0
    again = CachedLLM(client, warehouse)
    assert again.complete(requests(10)) == answers
    assert again.usage.calls == 0 and again.usage.cache_hits == 10
    assert sum(client.batches) == 10


def test_a_request_repeated_within_one_batch_is_bought_once_and_its_copies_logged_as_hits(tmp_path):
    warehouse = Warehouse(tmp_path / "w.duckdb")
    client = CountingClient()
    a, b, c = requests(3)
    batch = [a, b, a, c, a, b]  # 6 requests, 3 distinct; the copies of `a` span both chunks of 2
    cached = CachedLLM(client, warehouse, chunk_size=2)
    progress: list[int] = []
    answers = cached.complete(batch, on_progress=progress.append)

    assert client.received == [a, b, c]  # each distinct request sent once, in first-seen order
    assert answers == [f"answer to {r.messages[-1][1]}" for r in batch]
    assert cached.usage.calls == 3 and cached.usage.cache_hits == 3 and sum(progress) == 6
    assert cached.usage.input_tokens == 3 * 10  # copies cost nothing
    log = warehouse.query("SELECT prompt_hash, cache_hit, cost_usd FROM llm_requests")
    key = {cache_key(client.provider, client.model_name, r): name for r, name in ((a, "a"), (b, "b"), (c, "c"))}
    rows = sorted((key[r.prompt_hash], bool(r.cache_hit)) for r in log.itertuples())
    assert rows == [("a", False), ("a", True), ("a", True), ("b", False), ("b", True), ("c", False)]
    assert log[log["cache_hit"]]["cost_usd"].sum() == 0
    assert len(warehouse.query("SELECT * FROM llm_cache")) == 3


def test_key_covers_provider_model_prompt_and_parameters():
    base = requests(1)[0]
    keys = {
        cache_key("a", "m", base),
        cache_key("b", "m", base),
        cache_key("a", "n", base),
        cache_key("a", "m", requests(1, temperature=0.7)[0]),
        cache_key("a", "m", requests(2)[1]),
    }
    assert len(keys) == 5


def test_interrupted_run_resumes_without_paying_again(tmp_path):
    warehouse = Warehouse(tmp_path / "w.duckdb")
    flaky = CountingClient(fail_after=4)
    with pytest.raises(RuntimeError):
        CachedLLM(flaky, warehouse, chunk_size=4).complete(requests(10))
    resumed = CachedLLM(CountingClient(), warehouse, chunk_size=4)
    resumed.complete(requests(10))
    assert resumed.usage.cache_hits == 4 and resumed.usage.calls == 6


def test_progress_reports_every_request(tmp_path):
    warehouse = Warehouse(tmp_path / "w.duckdb")
    CachedLLM(CountingClient(), warehouse).complete(requests(3))
    seen = []
    CachedLLM(CountingClient(), warehouse, chunk_size=2).complete(requests(7), on_progress=seen.append)
    assert sum(seen) == 7


def test_local_llm_answers_through_the_cache(tmp_path, tiny_model_dir):
    warehouse = Warehouse(tmp_path / "w.duckdb")
    local = LocalLLM(tiny_model_dir, device="cpu", dtype="float32", batch_size=2)
    cached = CachedLLM(local, warehouse)
    first = cached.complete(requests(3))
    assert len(first) == 3 and all(isinstance(a, str) for a in first)
    assert CachedLLM(local, warehouse).complete(requests(3)) == first


def test_every_request_is_logged_with_template_tokens_cost_and_origin(tmp_path):
    warehouse = Warehouse(tmp_path / "w.duckdb")
    prices = {"echo-1": (1.0, 2.0)}
    origin = {"run_id": "run-1", "asset": "qa_pairs", "partition": "note-a"}
    first = CachedLLM(CountingClient(), warehouse, prices=prices, origin=origin)
    first.complete(requests(3))
    second = CachedLLM(CountingClient(), warehouse, prices=prices, origin=origin)
    second.complete(requests(4))
    log = warehouse.query("SELECT * FROM llm_requests ORDER BY created_at, cache_hit")
    assert len(log) == 7 and log["cache_hit"].sum() == 3
    assert set(log["template"]) == {"back_translation"} and set(log["partition"]) == {"note-a"}
    assert '{"passage": "passage 0"}' in set(log["variables"])
    paid = log[~log["cache_hit"]]
    assert paid["cost_usd"].sum() == pytest.approx(4 * (10 * 1.0 + 3 * 2.0) / 1e6)
    assert log[log["cache_hit"]]["cost_usd"].sum() == 0
    assert first.usage.cost_usd == pytest.approx(3 * 16 / 1e6) and second.usage.cache_hits == 3
    assert second.usage.input_tokens == 10  # only the one paid call counts tokens


def test_requests_command_filters_and_summarizes(tmp_path, capsys):
    from fine_tune_dag.cli import main

    warehouse = Warehouse(tmp_path / "data" / "warehouse.duckdb")
    CachedLLM(CountingClient(), warehouse, prices={"echo-1": (1.0, 2.0)}).complete(requests(3))
    CachedLLM(CountingClient(), warehouse).complete(requests(3))
    assert main(["--data-dir", str(tmp_path / "data"), "requests", "--template", "back_translation"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("6 requests: 3 calls, 3 cache hits (50%), 30 input and 9 output tokens")
    assert out.count("back_translation") == 6
    assert main(["--data-dir", str(tmp_path / "data"), "requests", "--template", "grounded_qa"]) == 0
    assert capsys.readouterr().out.startswith("0 requests")
