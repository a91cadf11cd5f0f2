"""`fine-tune-dag serve`: the OpenAI-compatible API on a real socket, through the official `openai` client and
plain HTTP, and its playground page in Chromium."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import dagster as dg
import openai
import pandas as pd
import pytest
import requests
from fine_tune_dag_testkit.notes import write_sample_notes
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from fine_tune_dag.apps.serve.server import Models, check_binding, recorder, serve_app
from fine_tune_dag.automation.jobs import notes_job
from fine_tune_dag.core.common.chat import DEFAULT_SYSTEM_PROMPT, chat_messages, render_prompt_ids
from fine_tune_dag.core.generation.batch import generate_batch
from fine_tune_dag.core.generation.engines import open_engine
from fine_tune_dag.core.models.adapters import load_generation_settings, save_generation_settings
from fine_tune_dag.core.models.generation_config import GenerationSettings
from fine_tune_dag.core.models.loading import load_tokenizer
from fine_tune_dag.core.retrieval.index import RetrievalSettings, build_index
from fine_tune_dag.core.serving.engine import Engine, Overloaded
from fine_tune_dag.core.serving.requests import InvalidRequest, parse_chat_request
from fine_tune_dag.core.store.registry import promote
from fine_tune_dag.core.store.warehouse import Warehouse
from fine_tune_dag.core.training.loop import save_adapter
from fine_tune_dag.core.training.sft import TrainingSettings, train_lora
from fine_tune_dag.definitions import build_definitions
from fine_tune_dag.resources.llm import LLMResource
from fine_tune_dag.resources.paths import ProjectPaths
from fine_tune_dag.runner import register_note_partitions
from fine_tune_dag_tests.browser import app_in_thread, chromium_driver

QUESTION = "Why do you oil the chain?"
ANSWER = "Here is the thing: the chain wears slowly, then all at once."
HOST = "127.0.0.1"
WAIT_SECONDS = 60


@pytest.fixture(scope="module")
def adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two adapters that answer differently: the second saved with a shorter answer limit."""
    folder = tmp_path_factory.mktemp("adapters")
    provenance = {"base_model": "tiny-llama", "base_model_path": str(tiny_model_dir), "dataset_version": "abc"}
    made = []
    for version, steps in (("v1", 10), ("v2", 14)):
        settings = TrainingSettings(
            max_steps=steps, batch_size=1, learning_rate=1e-2, warmup_ratio=0.0, lora_dropout=0.0, dtype="float32"
        )
        run = train_lora(tiny_model_dir, [chat_messages(DEFAULT_SYSTEM_PROMPT, QUESTION, ANSWER)], settings)
        made.append(save_adapter(run, folder, version, provenance))
    save_generation_settings(made[0], GenerationSettings(max_new_tokens=12, temperature=0.0))
    save_generation_settings(made[1], GenerationSettings(max_new_tokens=5, temperature=0.0))
    return made


def register(db: Warehouse, adapter: Path, when: datetime) -> None:
    row = {"version": adapter.name, "path": str(adapter), "base_model": "tiny-llama", "created_at": when}
    db.insert_rows("adapters", pd.DataFrame([row]))
    promote(db, adapter.name, 1.0, None, None, "test", "run")


@contextmanager
def server(engine: Engine, models: Models, api_key: str = "") -> Iterator[str]:
    """The app on 127.0.0.1 in a thread of this test; yields its URL, stopped however the test ends."""
    with app_in_thread(serve_app(engine, models, api_key), "the server", WAIT_SECONDS) as url:
        yield url


@pytest.fixture()
def served(tmp_path, tiny_model_dir, adapters) -> Iterator[tuple[str, Warehouse, Engine]]:
    db = Warehouse(tmp_path / "warehouse.duckdb")
    register(db, adapters[0], datetime(2026, 1, 1))
    engine = Engine(tiny_model_dir, recorder(db), batch_size=4, queue_size=8, dtype="float32")
    engine.start()
    assert engine.ready.wait(WAIT_SECONDS)
    try:
        with server(engine, Models(db, tmp_path / "index")) as url:
            yield url, db, engine
    finally:
        engine.stop()


def expected_answer(adapter: Path, question: str = QUESTION, **overrides: object) -> str:
    """What generate_batch answers on the default engine with the adapter's saved settings: the server must say
    the same."""
    tokenizer = load_tokenizer(adapter)
    base = Path(json.loads((adapter / "training_config.json").read_text())["base_model_path"])
    engine = open_engine(base, {"tuned": adapter}, tokenizer)
    saved = replace(load_generation_settings(adapter), **overrides)
    prompt = render_prompt_ids(tokenizer, chat_messages(DEFAULT_SYSTEM_PROMPT, question))
    return generate_batch(
        engine,
        tokenizer,
        [prompt],
        saved.max_new_tokens,
        saved.temperature,
        saved.top_p,
        seed=saved.seed,
        no_repeat_ngram_size=saved.no_repeat_ngram_size,
        adapter="tuned",
    )[0]


def ask(url: str, model: str = "champion", **options: object) -> openai.types.chat.ChatCompletion:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    messages = [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}, {"role": "user", "content": QUESTION}]
    return client.chat.completions.create(model=model, messages=messages, **options)


def test_models_are_listed_and_the_champion_answers_as_generate_batch_does(served, adapters):
    url, _, _ = served
    listed = [m.id for m in openai.OpenAI(base_url=f"{url}/v1", api_key="unused").models.list()]
    assert listed == ["base", "v1", "champion"]  # no +rag without a retrieval index
    answer = ask(url)
    assert answer.choices[0].message.content == expected_answer(adapters[0])
    assert answer.choices[0].finish_reason in ("stop", "length") and answer.usage.completion_tokens > 0


def test_a_stream_arrives_in_pieces_as_server_sent_events_and_joins_to_the_answer(served, adapters):
    url, _, _ = served
    pieces, finishes = [], []
    for event in ask(url, stream=True):
        pieces.append(event.choices[0].delta.content or "")
        finishes.append(event.choices[0].finish_reason)
    assert len([p for p in pieces if p]) > 1 and finishes[-1] in ("stop", "length")
    assert "".join(pieces) == expected_answer(adapters[0])


def test_the_server_follows_the_champion_without_a_restart(served, adapters):
    url, db, _ = served
    before = ask(url).choices[0].message.content
    register(db, adapters[1], datetime(2026, 1, 2))  # promoted while the server runs
    after = ask(url)
    assert before == expected_answer(adapters[0]) and after.choices[0].message.content == expected_answer(adapters[1])
    assert "v2" in [m.id for m in openai.OpenAI(base_url=f"{url}/v1", api_key="unused").models.list()]


def test_a_champion_swap_under_load_loses_and_fails_no_request(served, adapters):
    """Clients stream while the champion moves: every request is answered, by the old champion or the new one,
    and the ones sent after the promotion by the new one."""
    url, db, _ = served
    old, new = expected_answer(adapters[0]), expected_answer(adapters[1])
    answers: list[tuple[float, str]] = []
    failures: list[BaseException] = []

    def client() -> None:
        for _ in range(4):
            sent = time.monotonic()
            try:
                answers.append((sent, "".join(e.choices[0].delta.content or "" for e in ask(url, stream=True))))
            except BaseException as error:
                failures.append(error)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    while len(answers) < 4:
        time.sleep(0.01)
    register(db, adapters[1], datetime(2026, 1, 2))
    promoted = time.monotonic()
    for thread in threads:
        thread.join(WAIT_SECONDS)
    assert not failures and len(answers) == 16
    assert {text for _, text in answers} <= {old, new} and old in {t for _, t in answers}
    after = [text for sent, text in answers if sent > promoted]
    assert after and all(text == new for text in after)


def test_concurrent_requests_are_answered_and_each_is_logged(served, adapters):
    url, db, _ = served
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(ask(url).choices[0].message.content)) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_SECONDS)
    assert results == [expected_answer(adapters[0])] * 6
    logged = db.query("SELECT provider, model, template FROM llm_requests")
    assert len(logged) == 6 and set(logged.provider) == {"serve"} and set(logged.model) == {"champion"}
    assert set(logged.template) == {"served_chat"}


@pytest.mark.parametrize(
    "body, reason",
    [
        ({"model": "nope", "messages": [{"role": "user", "content": "hi"}]}, "does not exist"),
        ({"model": "base", "messages": []}, "non-empty"),
        ({"model": "base", "messages": [{"role": "user", "content": "hi"}], "temperature": 3}, "temperature"),
        ({"model": "base", "messages": [{"role": "robot", "content": "hi"}]}, "role"),
        ({"model": "base", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, "max_tokens"),
        ({"model": "base", "messages": [{"role": "user", "content": "hi"}], "frobnicate": 1}, "frobnicate"),
        ({"model": "base", "messages": [{"role": "user", "content": "hi"}], "n": 2}, "n = 1"),
    ],
)
def test_a_bad_request_gets_a_400_with_the_reason(served, body, reason):
    url, _, _ = served
    response = requests.post(f"{url}/v1/chat/completions", json=body, timeout=WAIT_SECONDS)
    assert response.status_code == 400 and reason in response.json()["error"]["message"]


def test_overload_is_refused_at_once_with_retry_after(tmp_path, tiny_model_dir):
    """A full queue gets a 429 and a loading model a 503, each with Retry-After: never a request left hanging."""
    db = Warehouse(tmp_path / "warehouse.duckdb")
    engine = Engine(tiny_model_dir, recorder(db), batch_size=1, queue_size=1)  # not started: nothing is decoded
    with server(engine, Models(db, tmp_path / "index")) as url:
        body = {"model": "base", "messages": [{"role": "user", "content": "hi"}]}
        loading = requests.post(f"{url}/v1/chat/completions", json=body, timeout=5)
        assert loading.status_code == 503 and loading.headers["Retry-After"] == "5"
        engine.ready.set()
        request = parse_chat_request(body, ["base"])

        async def fill() -> None:
            engine.submit(engine.job(Models(db, tmp_path).resolve("base"), request, request.messages, []))

        asyncio.run(fill())
        started = time.monotonic()
        full = requests.post(f"{url}/v1/chat/completions", json=body, timeout=5)
        assert full.status_code == 429 and full.headers["Retry-After"] == "1" and time.monotonic() - started < 5
    with pytest.raises(Overloaded):
        asyncio.run(fill())


def test_an_api_key_is_required_when_set_and_binding_beyond_loopback_needs_one(served, tmp_path):
    _, db, engine = served
    with server(engine, Models(db, tmp_path / "index"), api_key="s3cret") as url:
        assert requests.get(f"{url}/v1/models", timeout=5).status_code == 401
        wrong = openai.OpenAI(base_url=f"{url}/v1", api_key="guess", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            wrong.models.list()
        assert [m.id for m in openai.OpenAI(base_url=f"{url}/v1", api_key="s3cret").models.list()]
    with pytest.raises(ValueError, match="without an API key"):
        check_binding("0.0.0.0", "")
    check_binding("0.0.0.0", "s3cret")
    check_binding("127.0.0.1", "")
    check_binding("::1", "")


def test_rag_models_answer_with_passages_and_name_the_notes(served, tmp_path):
    url, db, _ = served
    passages = pd.DataFrame(
        [
            {"note_id": "n1", "path": "bikes.md", "sha256": "a", "passage_index": 0, "topic": "", "text": ANSWER},
            {"note_id": "n2", "path": "bees.md", "sha256": "b", "passage_index": 0, "topic": "", "text": "Bees hum."},
        ]
    )
    build_index(passages, tmp_path / "index", RetrievalSettings())
    assert "champion+rag" in [m.id for m in openai.OpenAI(base_url=f"{url}/v1", api_key="x").models.list()]
    response = requests.post(
        f"{url}/v1/chat/completions",
        json={"model": "champion+rag", "messages": [{"role": "user", "content": "why oil the chain"}]},
        timeout=WAIT_SECONDS,
    )
    assert response.status_code == 200 and response.json()["notes"][0] == "bikes.md"
    logged = db.query("SELECT variables FROM llm_requests WHERE model = 'champion+rag'")
    assert "bikes.md" in json.loads(logged.variables.iloc[0])["notes"]


def test_parse_refuses_what_openai_refuses():
    with pytest.raises(InvalidRequest, match="last message"):
        parse_chat_request({"model": "base", "messages": [{"role": "assistant", "content": "x"}]}, ["base"])
    parsed = parse_chat_request(
        {"model": "base", "messages": [{"role": "user", "content": "x"}], "stop": "\n", "max_completion_tokens": 9},
        ["base"],
    )
    assert parsed.stop == ("\n",) and parsed.max_tokens == 9 and parsed.temperature is None


def test_the_playground_streams_champion_base_and_retrieval_side_by_side(served, tmp_path):
    url, _, _ = served
    passages = pd.DataFrame(
        [{"note_id": "n1", "path": "bikes.md", "sha256": "a", "passage_index": 0, "topic": "", "text": ANSWER}]
    )
    build_index(passages, tmp_path / "index", RetrievalSettings())
    with chromium_driver() as driver:
        driver.get(url)
        driver.find_element(By.ID, "prompt").send_keys(QUESTION)
        driver.find_element(By.ID, "max-tokens").clear()
        driver.find_element(By.ID, "max-tokens").send_keys("8")
        driver.find_element(By.ID, "send").click()
        wait = WebDriverWait(driver, WAIT_SECONDS)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".answer[data-done='true']")) == 3)
        boxes = {b.get_attribute("data-model"): b for b in driver.find_elements(By.CSS_SELECTOR, ".answer")}
        assert set(boxes) == {"champion", "base", "champion+rag"}
        assert boxes["champion"].find_element(By.CLASS_NAME, "text").text
        assert "bikes.md" in boxes["champion+rag"].find_element(By.CLASS_NAME, "notes").text
        assert not driver.find_elements(By.CSS_SELECTOR, ".error")


def test_the_graph_synthesizes_with_the_served_model_as_its_teacher(tmp_path, tiny_model_dir):
    """`provider: openai` pointed at `fine-tune-dag serve`: chunking and synthesis ask the served model, the
    graph logs them as openai calls, and the server logs the same requests as served traffic."""
    notes, data = tmp_path / "notes", tmp_path / "data"
    write_sample_notes(notes, 2)
    served_log = Warehouse(tmp_path / "served.duckdb")
    engine = Engine(tiny_model_dir, recorder(served_log), batch_size=8, queue_size=64, dtype="float32")
    engine.start()
    assert engine.ready.wait(WAIT_SECONDS)
    config = {"ops": {"passages": {"config": {"min_chars": 60, "max_chars": 200}}}}
    try:
        with server(engine, Models(served_log, tmp_path / "index")) as url, dg.instance_for_test() as instance:
            llm = LLMResource(
                provider="openai",
                model="base",
                base_url=f"{url}/v1",
                paths=ProjectPaths(notes_dir=str(notes), data_dir=str(data)),
            )
            job = build_definitions(str(notes), str(data), llm=llm).resolve_job_def(notes_job.name)
            for key in register_note_partitions(instance, notes):
                assert job.execute_in_process(instance=instance, partition_key=key, run_config=config).success
    finally:
        engine.stop()
    asked = Warehouse(data / "warehouse.duckdb").query("SELECT * FROM llm_requests WHERE NOT cache_hit")
    assert set(asked.provider) == {"openai"} and {"qa_pairs"} <= set(asked.asset) and len(asked) > 0
    answered = served_log.query("SELECT provider, model FROM llm_requests")
    assert len(answered) == len(asked) and set(answered.model) == {"base"}
