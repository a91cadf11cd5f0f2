"""The Gemini stub driven by the real google-genai SDK: these tests pin what the SDK does with each reply,
so code built on the SDK can rely on the exception types and attribute paths asserted here."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import httpx2
import pytest
from fine_tune_dag_testkit.gemini_stub import (
    GeminiStub,
    StubReply,
    StubRequest,
    failing_share,
    requests_per_window,
    scripted,
)
from google import genai
from google.genai import errors, types

API_KEY = "stub-key-0123456789"
MODEL = "gemini-2.5-flash"
RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"


@pytest.fixture(autouse=True)
def _plain_gemini_api(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK reads these; a developer's shell must not turn the client into a Vertex or v1beta one."""
    for name in ("GOOGLE_GENAI_USE_VERTEXAI", "GOOGLE_GENAI_API_VERSION", "GOOGLE_CLOUD_PROJECT"):
        monkeypatch.delenv(name, raising=False)


def make_client(stub: GeminiStub, timeout_ms: int = 2000, **options: object) -> genai.Client:
    """A client as production would build one, pointed at the stub, SDK retries off."""
    options.setdefault("retry_options", types.HttpRetryOptions(attempts=1))
    return genai.Client(
        api_key=API_KEY, http_options=types.HttpOptions(base_url=stub.base_url, timeout=timeout_ms, **options)
    )


def generate(client: genai.Client, prompt: str = "Write about bees in winter", **config: object):
    return client.models.generate_content(
        model=MODEL, contents=prompt, config=types.GenerateContentConfig(temperature=0, **config)
    )


def fake_request(index: int) -> StubRequest:
    return StubRequest(index, MODEL, {}, "", None, None, "/", {}, received_at=0.0)


def test_happy_path_answers_counts_tokens_and_records_the_request() -> None:
    with GeminiStub(lambda _r: StubReply(text="a short answer")) as stub:
        response = generate(make_client(stub), system_instruction="You write like the author", max_output_tokens=64)

    assert response.text == "a short answer"
    usage = response.usage_metadata
    assert (usage.prompt_token_count, usage.candidates_token_count, usage.total_token_count) == (10, 3, 13)
    assert response.candidates[0].finish_reason == types.FinishReason.STOP
    assert (response.model_version, response.response_id) == (MODEL, "stub-0")
    [request] = stub.requests
    assert (request.index, request.model, request.api_key) == (0, MODEL, API_KEY)
    assert request.prompt_text == "Write about bees in winter"
    assert request.system_text == "You write like the author"
    assert request.body["generationConfig"] == {"temperature": 0.0, "maxOutputTokens": 64}
    # The SDK 3.4.0 default API version is v1, and the key travels only in the x-goog-api-key header.
    assert request.path == f"/v1/models/{MODEL}:generateContent"
    assert request.headers["x-goog-api-key"] == API_KEY
    assert API_KEY not in request.path and API_KEY not in json.dumps(request.body)
    assert request.received_at <= request.finished_at


def test_json_mime_type_on_v1beta() -> None:
    with GeminiStub(lambda _r: StubReply(text='{"question": "why bees?"}')) as stub:
        response = generate(make_client(stub, api_version="v1beta"), response_mime_type="application/json")

    assert json.loads(response.text) == {"question": "why bees?"}
    assert response.parsed is None  # parsed is filled only when a response_schema is given
    [request] = stub.requests
    assert request.path == f"/v1beta/models/{MODEL}:generateContent"
    assert request.body["generationConfig"]["responseMimeType"] == "application/json"
    assert request.system_text is None


def test_429_is_a_client_error_carrying_the_retry_delay_in_details() -> None:
    with GeminiStub(lambda _r: StubReply(status=429, retry_delay_s=7)) as stub:
        with pytest.raises(errors.ClientError) as caught:
            generate(make_client(stub))

    err = caught.value
    assert type(err) is errors.ClientError
    assert (err.code, err.status, err.response.status_code) == (429, "RESOURCE_EXHAUSTED", 429)
    # `details` is the whole response body; the hint is a RetryInfo entry (not the first one), no header.
    hints = [d["retryDelay"] for d in err.details["error"]["details"] if d["@type"] == RETRY_INFO]
    assert hints == ["7s"]
    assert "retry-after" not in err.response.headers
    assert len(stub.requests) == 1
    # The key is not in the message, but the httpx2 response keeps the request: never log err.response.request.
    assert API_KEY not in str(err) and API_KEY not in repr(err)
    assert err.response.request.headers["x-goog-api-key"] == API_KEY


def test_sdk_retries_only_when_asked_and_ignores_the_retry_hint() -> None:
    first_429 = scripted([StubReply(status=429, retry_delay_s=7)])
    with GeminiStub(first_429) as stub:
        with pytest.raises(errors.ClientError):
            generate(make_client(stub, retry_options=None))  # no retry_options: one attempt
    assert len(stub.requests) == 1

    with GeminiStub(first_429) as stub:
        started = time.monotonic()
        retry = types.HttpRetryOptions(attempts=2, initial_delay=0.0, jitter=0.0)
        assert generate(make_client(stub, retry_options=retry)).text == "stub answer"
    assert len(stub.requests) == 2
    assert time.monotonic() - started < 1.0  # the server asked for 7 s; the SDK's backoff does not read it


@pytest.mark.parametrize(
    ("status", "name", "retry_delay_s", "hints"),
    [(500, "INTERNAL", None, []), (503, "UNAVAILABLE", 1.5, ["1.500s"])],
)
def test_5xx_is_a_server_error(status: int, name: str, retry_delay_s: float | None, hints: list[str]) -> None:
    with GeminiStub(lambda _r: StubReply(status=status, retry_delay_s=retry_delay_s)) as stub:
        with pytest.raises(errors.ServerError) as caught:
            generate(make_client(stub))

    err = caught.value
    assert (err.code, err.status) == (status, name)
    assert [d["retryDelay"] for d in err.details["error"].get("details", []) if d["@type"] == RETRY_INFO] == hints


def test_client_timeout_raises_httpx2_read_timeout_unwrapped() -> None:
    with GeminiStub(lambda _r: StubReply(delay_s=1.0)) as stub:
        started = time.monotonic()
        with pytest.raises(httpx2.ReadTimeout) as caught:
            generate(make_client(stub, timeout_ms=200))
        assert time.monotonic() - started < 0.8

    assert not isinstance(caught.value, errors.APIError)
    assert API_KEY not in str(caught.value)
    assert caught.value.request.headers["x-goog-api-key"] == API_KEY  # same trap as err.response.request
    assert stub.requests[0].headers["x-server-timeout"] == "1"  # ceil(timeout in seconds), sent to the server


def test_malformed_body() -> None:
    with GeminiStub(scripted([StubReply(malformed=True), StubReply(status=503, malformed=True)])) as stub:
        client = make_client(stub)
        with pytest.raises(json.JSONDecodeError) as caught:
            generate(client)
        assert not isinstance(caught.value, errors.UnknownApiResponseError)  # a bare JSONDecodeError (ValueError)
        with pytest.raises(errors.ServerError) as caught_5xx:
            generate(client)

    err = caught_5xx.value
    assert (err.code, err.status) == (503, "Service Unavailable")  # the HTTP reason phrase stands in for status
    assert err.details == {"message": "<html><body>502 Bad Gateway</body></html>", "status": "Service Unavailable"}


def test_blocked_and_empty_answers_raise_nothing() -> None:
    replies = [
        StubReply(blocked=True),
        StubReply(empty=True),
        StubReply(empty=True, finish_reason="RECITATION"),
        StubReply(text=None, finish_reason="MAX_TOKENS"),
    ]
    with GeminiStub(scripted(replies)) as stub:
        client = make_client(stub)
        blocked, safety, recitation, max_tokens = (generate(client) for _ in replies)

    assert blocked.text is None and blocked.candidates is None
    assert blocked.prompt_feedback.block_reason == types.BlockedReason.SAFETY
    assert blocked.usage_metadata.prompt_token_count == 5 and blocked.usage_metadata.candidates_token_count is None
    for response, reason in ((safety, types.FinishReason.SAFETY), (recitation, types.FinishReason.RECITATION)):
        assert response.text is None and response.prompt_feedback is None
        assert response.candidates[0].finish_reason == reason and response.candidates[0].content is None
    assert max_tokens.text is None
    assert max_tokens.candidates[0].finish_reason == types.FinishReason.MAX_TOKENS
    assert max_tokens.candidates[0].content.role == "model" and max_tokens.candidates[0].content.parts is None


def test_ten_threads_are_served_concurrently() -> None:
    with GeminiStub(latency_s=0.2) as stub:
        client = make_client(stub)
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=10) as pool:
            texts = list(pool.map(lambda i: generate(client, f"note {i}").text, range(10)))
        wall = time.monotonic() - started

    assert texts == ["stub answer"] * 10
    assert wall < 1.0
    assert (stub.max_in_flight, stub.in_flight) == (10, 0)
    assert sorted(r.index for r in stub.requests) == list(range(10))
    assert all(r.finished_at - r.received_at >= 0.2 for r in stub.requests)
    assert stub.requests_per_window(1.0) == 10


def test_requests_per_window_uses_half_open_windows() -> None:
    assert requests_per_window([], 1.0) == 0
    assert requests_per_window([0.0, 1.0, 2.0], 1.0) == 1
    assert requests_per_window([1.7, 0.0, 0.5, 0.99, 1.0, 1.5, 1.6], 1.0) == 5  # [0.99, 1.99)
    assert requests_per_window([0.0, 0.0, 0.0, 5.0], 60.0) == 4


def test_scripted_answers_by_arrival_index() -> None:
    with GeminiStub(scripted([StubReply(status=429)] * 3)) as stub:
        client = make_client(stub)
        codes = []
        for _ in range(5):
            try:
                generate(client)
                codes.append(200)
            except errors.ClientError as err:
                codes.append(err.code)
    assert codes == [429, 429, 429, 200, 200]


def test_failing_share_is_about_the_share_and_reproducible() -> None:
    too_many = StubReply(status=429, retry_delay_s=1)

    def failed(seed: int) -> list[int]:
        responder = failing_share(0.2, too_many, seed)
        return [i for i in range(200) if responder(fake_request(i)) is too_many]

    assert 30 <= len(failed(0)) <= 50 and 30 <= len(failed(1)) <= 50
    assert failed(0) == failed(0) and failed(0) != failed(1)
    assert (
        failing_share(0.2, too_many, 0)(fake_request(next(i for i in range(200) if i not in failed(0)))) == StubReply()
    )


def test_stop_does_not_wait_for_a_sleeping_handler() -> None:
    stub = GeminiStub(latency_s=30).start()
    port = urlsplit(stub.base_url).port
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            generate(make_client(stub, timeout_ms=10_000))
        except Exception as exc:
            outcome.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    deadline = time.monotonic() + 1.0
    while stub.in_flight == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert stub.in_flight == 1
    started = time.monotonic()
    stub.stop()
    assert time.monotonic() - started < 0.5
    caller.join(timeout=1.0)

    assert not caller.is_alive()
    assert [type(exc) for exc in outcome] == [httpx2.RemoteProtocolError]  # dropped without an answer
    assert stub.requests[0].finished_at is None and stub.in_flight == 0
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=0.5)


def test_with_block_stops_the_server() -> None:
    with GeminiStub() as stub:
        port = urlsplit(stub.base_url).port
    with pytest.raises(RuntimeError):
        _ = stub.base_url
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=0.5)


def test_unknown_routes_are_404_and_a_broken_responder_is_a_500() -> None:
    def broken(_request: StubRequest) -> StubReply:
        raise KeyError("no script for this prompt")

    with GeminiStub(broken) as stub:
        for method, path in (("GET", "/v1/models"), ("POST", f"/v1/models/{MODEL}:countTokens")):
            request = urllib.request.Request(stub.base_url + path, data=b"{}" if method == "POST" else None)
            with pytest.raises(urllib.error.HTTPError) as caught:
                urllib.request.urlopen(request, timeout=2)
            assert caught.value.code == 404
            assert json.loads(caught.value.read())["error"]["status"] == "NOT_FOUND"
        with pytest.raises(errors.ServerError) as caught_500:
            generate(make_client(stub))

    assert caught_500.value.code == 500 and "no script for this prompt" in caught_500.value.message
    assert len(stub.requests) == 1  # only generateContent calls are recorded
