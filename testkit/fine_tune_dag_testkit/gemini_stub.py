"""A local stand-in for the Gemini REST `generateContent` endpoint, reached by the real `google-genai` SDK.

Tests and `bench/gemini_throughput.py` point `genai.Client(http_options=types.HttpOptions(base_url=stub.base_url))`
at it, so the SDK's own request building, error mapping and response parsing run unchanged while nothing
leaves the machine. Each reply can carry a fault (429 with a retry hint, 5xx, a slow answer, a body that
is not JSON, a blocked prompt, an empty candidate), and every request is recorded with its arrival and
answer times, so callers can measure concurrency and request rate from the server's side.

Bodies follow the REST JSON Google sends (camelCase). Shapes worth knowing:

- a blocked prompt is HTTP 200 with `promptFeedback.blockReason` and no `candidates` key at all;
- an answer withheld by a safety filter is HTTP 200 with one candidate that has `finishReason`
  ("SAFETY", or "RECITATION", ...) and no `content` key (`StubReply(empty=True)`);
- a thinking model that spends `maxOutputTokens` before answering returns a candidate whose `content`
  is `{"role": "model"}` without parts and `finishReason` "MAX_TOKENS"
  (`StubReply(text=None, finish_reason="MAX_TOKENS")`);
- errors are `{"error": {"code", "message", "status", "details"}}`; a 429 carries a
  `google.rpc.QuotaFailure` and, when Google knows when to come back, a `google.rpc.RetryInfo` whose
  `retryDelay` is a protobuf duration string such as "32s" (no Retry-After header).

The SDK (3.4.0) calls `POST {base_url}/v1/models/{model}:generateContent` with the key in the
`x-goog-api-key` header; any API version segment is accepted so `HttpOptions(api_version="v1beta")` works.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

_ROUTE = re.compile(r"/(?P<version>v1[a-z0-9]*)/models/(?P<model>[^/:]+):generateContent")

# (status, message) per HTTP code, as the Gemini API words them.
_ERRORS: dict[int, tuple[str, str]] = {
    400: ("INVALID_ARGUMENT", "Request contains an invalid argument."),
    403: ("PERMISSION_DENIED", "The caller does not have permission"),
    404: ("NOT_FOUND", "Requested entity was not found."),
    429: ("RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota)."),
    500: (
        "INTERNAL",
        "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
    ),
    503: ("UNAVAILABLE", "The model is overloaded. Please try again later."),
    504: ("DEADLINE_EXCEEDED", "Deadline expired before operation could complete."),
}


@dataclass(frozen=True)
class StubReply:
    """What the stub answers to one request; frozen so one instance can be shared by many calls.

    `delay_s` is slept before answering (latency, or longer than the client timeout to provoke one).
    `retry_delay_s` adds a `google.rpc.RetryInfo` detail to an error reply. `malformed` sends a body
    that is not JSON with `status`. `blocked` answers 200 with `promptFeedback.blockReason` "SAFETY" and
    no candidates; `empty` answers 200 with one candidate that has no content and `finish_reason`
    (default "SAFETY"). `text=None` on a plain 200 sends a candidate whose content has no parts.
    Token counts default to the words in the request and in `text`, at least 1 each.
    """

    status: int = 200
    text: str | None = "stub answer"
    delay_s: float = 0.0
    retry_delay_s: float | None = None
    malformed: bool = False
    blocked: bool = False
    empty: bool = False
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    output_tokens: int | None = None


@dataclass
class StubRequest:
    """One request as the stub received it: header names lower-cased, times from `time.monotonic()`.

    `finished_at` is set once the answer is written; it stays None when `stop()` cut the reply short.
    """

    index: int
    model: str
    body: dict[str, Any]
    prompt_text: str
    system_text: str | None
    api_key: str | None
    path: str
    headers: dict[str, str]
    received_at: float
    finished_at: float | None = None


Responder = Callable[[StubRequest], StubReply]


def scripted(sequence: list[StubReply], then: StubReply = StubReply()) -> Responder:
    """Answer the n-th arriving request with `sequence[n]`, and every later one with `then`."""
    replies = tuple(sequence)
    return lambda request: replies[request.index] if request.index < len(replies) else then


def failing_share(share: float, reply: StubReply, seed: int) -> Responder:
    """Answer a pseudo-random `share` of requests with `reply`, the rest with `StubReply()`.

    The draw depends only on `seed` and the arrival index, so a run is reproducible whatever order
    the concurrent requests are handled in; the count is binomial (about `share * n`, not exactly).
    """
    ok = StubReply()
    return lambda request: reply if random.Random(f"{seed}:{request.index}").random() < share else ok


def requests_per_window(times: Iterable[float], window_s: float) -> int:
    """Largest number of `times` inside any half-open window `[t, t + window_s)`."""
    ordered = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(ordered):
        while t - ordered[start] >= window_s:
            start += 1
        best = max(best, end - start + 1)
    return best


class GeminiStub:
    """The stub server on 127.0.0.1 (a free port), one daemon thread per request.

    `responder` picks each reply (default `StubReply()`); `latency_s` is added to every reply's delay.
    Use as a context manager, or `start()` / `stop()`.
    """

    def __init__(self, responder: Responder | None = None, latency_s: float = 0.0) -> None:
        self.responder: Responder = responder or (lambda _request: StubReply())
        self.latency_s = latency_s
        self._lock = threading.Lock()
        self._requests: list[StubRequest] = []
        self._in_flight = 0
        self._max_in_flight = 0
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> GeminiStub:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> GeminiStub:
        """Bind a free port and serve in a background thread."""
        if self._server is not None:
            raise RuntimeError("GeminiStub is already running")
        self._stopping.clear()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.stub = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="gemini-stub", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, wake sleeping handlers (they drop their connection unanswered), free the port."""
        if self._server is None:
            return
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()
        self._server, self._thread = None, None

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:PORT`, for `types.HttpOptions(base_url=...)`."""
        if self._server is None:
            raise RuntimeError("GeminiStub is not running")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def requests(self) -> list[StubRequest]:
        """A snapshot of the generateContent requests received so far, in arrival order."""
        with self._lock:
            return list(self._requests)

    @property
    def in_flight(self) -> int:
        """Requests received and not yet answered."""
        with self._lock:
            return self._in_flight

    @property
    def max_in_flight(self) -> int:
        """The most requests that were being handled at the same moment."""
        with self._lock:
            return self._max_in_flight

    def requests_per_window(self, window_s: float) -> int:
        """Most requests received within any `window_s` seconds: the rate the client really sent."""
        return requests_per_window((r.received_at for r in self.requests), window_s)

    def _arrive(self, **fields: Any) -> StubRequest:
        with self._lock:
            request = StubRequest(index=len(self._requests), **fields)
            self._requests.append(request)
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
        return request

    def _leave(self, request: StubRequest, answered: bool) -> None:
        with self._lock:
            self._in_flight -= 1
            if answered:
                request.finished_at = time.monotonic()


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a handler still sleeping never blocks stop() or interpreter exit
    request_queue_size = 256  # the benchmark opens hundreds of connections at once
    stub: GeminiStub


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        received_at = time.monotonic()
        url = urlsplit(self.path)
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        route = _ROUTE.fullmatch(url.path)
        if route is None:
            self._send(404, _error_json(404, f"No route for POST {url.path}"))
            return
        try:
            body = json.loads(raw)
        except ValueError:
            self._send(400, _error_json(400, "Invalid JSON payload received."))
            return
        stub = self.server.stub
        request = stub._arrive(
            model=route["model"],
            body=body,
            prompt_text="\n".join(_texts(body.get("contents"))),
            system_text="\n".join(_texts(body.get("systemInstruction"))) if "systemInstruction" in body else None,
            api_key=self.headers.get("x-goog-api-key") or parse_qs(url.query).get("key", [None])[0],
            path=self.path,
            headers={name.lower(): value for name, value in self.headers.items()},
            received_at=received_at,
        )
        answered = False
        try:
            try:
                reply = stub.responder(request)
            except Exception as exc:  # a broken responder must show up at the client as a 500, not a hang
                self._send(500, _error_json(500, f"stub responder raised {exc!r}"))
                answered = True
                return
            if stub._stopping.wait(reply.delay_s + stub.latency_s):
                return  # stop() was called: leave without answering, like a server going away
            status, payload = _render(reply, request)
            self._send(status, payload, "text/html" if reply.malformed else "application/json; charset=UTF-8")
            answered = True
        finally:
            stub._leave(request, answered)

    def _not_found(self) -> None:
        self._send(404, _error_json(404, f"No route for {self.command} {urlsplit(self.path).path}"))

    do_GET = do_PUT = do_PATCH = do_DELETE = _not_found

    def _send(self, status: int, payload: bytes, content_type: str = "application/json; charset=UTF-8") -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (its timeout); nothing left to tell it

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: the benchmark sends hundreds of requests."""


def _texts(content: Any) -> list[str]:
    """Text parts of one `Content` dict or a list of them (non-text parts are skipped)."""
    contents = content if isinstance(content, list) else [content] if isinstance(content, dict) else []
    return [part["text"] for c in contents for part in c.get("parts", []) if isinstance(part.get("text"), str)]


def _words(text: str) -> int:
    return max(len(text.split()), 1)


def _render(reply: StubReply, request: StubRequest) -> tuple[int, bytes]:
    """The HTTP status and body for `reply`, shaped as the Gemini REST API shapes it."""
    if reply.malformed:
        return reply.status, b"<html><body>502 Bad Gateway</body></html>"
    if reply.status != 200:
        return reply.status, _error_json(reply.status, retry_delay_s=reply.retry_delay_s)
    prompt_tokens = (
        reply.prompt_tokens
        if reply.prompt_tokens is not None
        else _words(f"{request.prompt_text} {request.system_text or ''}")
    )
    usage: dict[str, int] = {"promptTokenCount": prompt_tokens, "totalTokenCount": prompt_tokens}
    body: dict[str, Any] = {
        "usageMetadata": usage,
        "modelVersion": request.model,
        "responseId": f"stub-{request.index}",
    }
    if reply.blocked:
        body["promptFeedback"] = {"blockReason": "SAFETY"}
        return 200, json.dumps(body).encode()
    candidate: dict[str, Any] = {"index": 0}
    if reply.empty:
        candidate["finishReason"] = reply.finish_reason or "SAFETY"
    else:
        content: dict[str, Any] = {"role": "model"}
        if reply.text is not None:
            content["parts"] = [{"text": reply.text}]
            output_tokens = reply.output_tokens if reply.output_tokens is not None else _words(reply.text)
            usage["candidatesTokenCount"] = output_tokens
            usage["totalTokenCount"] = prompt_tokens + output_tokens
        candidate.update(content=content, finishReason=reply.finish_reason or "STOP")
    body["candidates"] = [candidate]
    return 200, json.dumps(body).encode()


def _error_json(code: int, message: str | None = None, retry_delay_s: float | None = None) -> bytes:
    status, default_message = _ERRORS.get(code, ("UNKNOWN", "Unknown error."))
    details: list[dict[str, Any]] = []
    if code == 429:
        details.append(
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [
                    {
                        "quotaMetric": "generativelanguage.googleapis.com/generate_content_requests",
                        "quotaId": "GenerateRequestsPerMinutePerProjectPerModel",
                    }
                ],
            }
        )
    if retry_delay_s is not None:
        details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": _duration(retry_delay_s)})
    error: dict[str, Any] = {"code": code, "message": message or default_message, "status": status}
    if details:
        error["details"] = details
    return json.dumps({"error": error}).encode()


def _duration(seconds: float) -> str:
    """A protobuf JSON duration: "32s", or "1.500s" with millisecond digits when not whole."""
    return f"{seconds:.0f}s" if float(seconds).is_integer() else f"{seconds:.3f}s"
