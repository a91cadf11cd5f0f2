"""A local stand-in for an OpenAI-compatible `POST /v1/chat/completions`, reached by the real `openai` SDK.

Tests point `openai.OpenAI(base_url=stub.base_url)` (or the `llm` resource's `base_url`) at it, so the SDK's
request building, error mapping and response parsing run unchanged while nothing leaves the machine. It is
the Gemini stub's server (threads, arrival and answer times, in-flight counts, `stop()`) with this route's
handler, so `requests`, `max_in_flight` and `requests_per_window` read the same.

Bodies follow OpenAI's Chat Completions JSON, which Ollama, vLLM, llama.cpp's server and LM Studio copy:

- an answer is `{id, object: "chat.completion", created, model, choices: [{index, message: {role, content},
  finish_reason}], usage: {prompt_tokens, completion_tokens, total_tokens}}`;
- an answer withheld by a filter has `finish_reason` "content_filter" and `content` null
  (`ChatReply(text=None, finish_reason="content_filter")`);
- errors are `{"error": {"message", "type", "param", "code"}}`; a 429 may carry `Retry-After` (seconds).

The key arrives as `Authorization: Bearer <key>` and is recorded in `StubRequest.api_key`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from fine_tune_dag_testkit.gemini_stub import GeminiStub, StubRequest, _Handler

# (type, code) per HTTP status, as OpenAI words them.
_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "invalid_request"),
    401: ("invalid_request_error", "invalid_api_key"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", "internal_error"),
    503: ("server_error", "overloaded"),
}


@dataclass(frozen=True)
class ChatReply:
    """What the stub answers to one request; frozen so one instance can be shared by many calls.

    `delay_s` is slept before answering (latency, or longer than the client timeout to provoke one).
    `retry_after_s` adds a `Retry-After` header to an error reply. `malformed` sends an HTML page with
    `status`; `truncated` sends the first half of the JSON answer as `application/json`. `text=None`
    sends `content: null`. Token counts default to the words in the request and in `text`, at least 1 each.
    """

    status: int = 200
    text: str | None = "stub answer"
    finish_reason: str = "stop"
    delay_s: float = 0.0
    retry_after_s: float | None = None
    malformed: bool = False
    truncated: bool = False
    prompt_tokens: int | None = None
    output_tokens: int | None = None


ChatResponder = Callable[[StubRequest], ChatReply]


def scripted(sequence: list[ChatReply], then: ChatReply = ChatReply()) -> ChatResponder:
    """Answer the n-th arriving request with `sequence[n]`, and every later one with `then`."""
    replies = tuple(sequence)
    return lambda request: replies[request.index] if request.index < len(replies) else then


class OpenAIStub(GeminiStub):
    """The stub server on 127.0.0.1 (a free port), one daemon thread per request; `base_url` ends in /v1
    as an OpenAI-compatible server's does. `responder` picks each reply (default `ChatReply()`)."""

    def __init__(self, responder: ChatResponder | None = None, latency_s: float = 0.0) -> None:
        super().__init__(responder or (lambda _request: ChatReply()), latency_s)  # type: ignore[arg-type]

    def start(self) -> OpenAIStub:
        super().start()
        # no request can arrive before the caller has the port, so swapping the handler now is safe
        self._server.RequestHandlerClass = _ChatHandler  # type: ignore[union-attr]
        return self

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:PORT/v1`, for `openai.OpenAI(base_url=...)`."""
        return f"{super().base_url}/v1"


class _ChatHandler(_Handler):
    def do_POST(self) -> None:
        received_at = time.monotonic()
        url = urlsplit(self.path)
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if url.path.rstrip("/") != "/v1/chat/completions":
            self._reply(404, _error_json(404, f"Invalid URL (POST {url.path})"))
            return
        try:
            body = json.loads(raw)
        except ValueError:
            self._reply(400, _error_json(400, "We could not parse the JSON body of your request."))
            return
        messages = [m for m in body.get("messages", []) if isinstance(m, dict)]
        system = [str(m.get("content")) for m in messages if m.get("role") == "system"]
        authorization = self.headers.get("Authorization") or ""
        stub = self.server.stub
        request = stub._arrive(
            model=str(body.get("model", "")),
            body=body,
            prompt_text="\n".join(str(m.get("content")) for m in messages if m.get("role") != "system"),
            system_text="\n".join(system) if system else None,
            api_key=authorization.removeprefix("Bearer ") if authorization.startswith("Bearer ") else None,
            path=self.path,
            headers={name.lower(): value for name, value in self.headers.items()},
            received_at=received_at,
        )
        answered = False
        try:
            try:
                reply: ChatReply = stub.responder(request)  # type: ignore[assignment]
            except Exception as exc:  # a broken responder must show up at the client as a 500, not a hang
                self._reply(500, _error_json(500, f"stub responder raised {exc!r}"))
                answered = True
                return
            if stub._stopping.wait(reply.delay_s + stub.latency_s):
                return  # stop() was called: leave without answering, like a server going away
            status, payload, content_type = _render(reply, request)
            hint = {"Retry-After": f"{reply.retry_after_s:g}"} if reply.retry_after_s is not None else {}
            self._reply(status, payload, content_type, hint)
            answered = True
        finally:
            stub._leave(request, answered)

    def _reply(
        self,
        status: int,
        payload: bytes,
        content_type: str = "application/json",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (its timeout); nothing left to tell it


def _words(text: str) -> int:
    return max(len(text.split()), 1)


def _render(reply: ChatReply, request: StubRequest) -> tuple[int, bytes, str]:
    """The HTTP status, body and content type for `reply`, shaped as OpenAI's API shapes them."""
    if reply.malformed:
        return reply.status, b"<html><body>502 Bad Gateway</body></html>", "text/html"
    if reply.status != 200:
        return reply.status, _error_json(reply.status), "application/json"
    prompt_tokens = (
        reply.prompt_tokens
        if reply.prompt_tokens is not None
        else _words(f"{request.prompt_text} {request.system_text or ''}")
    )
    output_tokens = reply.output_tokens if reply.output_tokens is not None else _words(reply.text or "")
    body: dict[str, Any] = {
        "id": f"chatcmpl-stub-{request.index}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply.text},
                "finish_reason": reply.finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": output_tokens,
            "total_tokens": prompt_tokens + output_tokens,
        },
    }
    payload = json.dumps(body).encode()
    return 200, payload[: len(payload) // 2] if reply.truncated else payload, "application/json"


def _error_json(status: int, message: str | None = None) -> bytes:
    kind, code = _ERRORS.get(status, ("server_error", "unknown"))
    error = {"message": message or f"The stub answered {status}.", "type": kind, "param": None, "code": code}
    return json.dumps({"error": error}).encode()
