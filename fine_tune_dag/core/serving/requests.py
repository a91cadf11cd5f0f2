"""OpenAI's chat-completions request and response shapes: a request checked as strictly as OpenAI checks it
(a wrong one is refused with the reason, never half-answered), and the objects and stream chunks clients parse."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from fine_tune_dag.core.common.chat import Message

ROLES = ("system", "user", "assistant")
MAX_TOKENS_LIMIT = 4096
RAG_SUFFIX = "+rag"
KNOWN_FIELDS = {
    "model",
    "messages",
    "stream",
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "seed",
    "n",
    "stop",
    "user",
    "stream_options",
}


class InvalidRequest(ValueError):
    """A request OpenAI would refuse with a 400; `param` names the field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: list[Message]
    stream: bool
    temperature: float | None  # None: the model's saved default
    top_p: float | None
    max_tokens: int | None
    seed: int | None
    stop: tuple[str, ...]


def _number(body: dict[str, Any], name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise InvalidRequest(f"'{name}' must be a number from {low:g} to {high:g}, got {value!r}", name)
    return float(value)


def _integer(body: dict[str, Any], name: str, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidRequest(f"'{name}' must be an integer from {low} to {high}, got {value!r}", name)
    return value


def parse_chat_request(body: Any, models: list[str]) -> ChatRequest:
    """The request, or `InvalidRequest` naming the first thing wrong with it."""
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    unknown = sorted(set(body) - KNOWN_FIELDS)
    if unknown:
        raise InvalidRequest(f"unrecognized request argument supplied: {', '.join(unknown)}", unknown[0])
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is required: one of " + ", ".join(models), "model")
    if model not in models:
        raise InvalidRequest(f"the model '{model}' does not exist; available: {', '.join(models)}", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array", "messages")
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise InvalidRequest(f"{where}: 'role' must be one of {', '.join(ROLES)}", where)
        if not isinstance(message.get("content"), str):
            raise InvalidRequest(f"{where}: 'content' must be a string", f"{where}.content")
        if set(message) - {"role", "content", "name"}:
            raise InvalidRequest(f"{where}: unrecognized fields {sorted(set(message) - {'role', 'content', 'name'})}")
    if messages[-1]["role"] != "user":
        raise InvalidRequest("the last message must be the user's", "messages")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be true or false", "stream")
    if body.get("n", 1) != 1 or isinstance(body.get("n"), bool):
        raise InvalidRequest("only n = 1 is supported", "n")
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise InvalidRequest("'stop' must be a string or up to 4 non-empty strings", "stop")
    tokens = _integer(body, "max_completion_tokens", 1, MAX_TOKENS_LIMIT)
    return ChatRequest(
        model=model,
        messages=[{"role": m["role"], "content": m["content"]} for m in messages],
        stream=stream,
        temperature=_number(body, "temperature", 0, 2),
        top_p=_number(body, "top_p", 0, 1) or None,
        max_tokens=tokens if tokens is not None else _integer(body, "max_tokens", 1, MAX_TOKENS_LIMIT),
        seed=_integer(body, "seed", 0, 2**63 - 1),
        stop=tuple(stop),
    )


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def completion(
    identifier: str, model: str, text: str, finish: str, prompt_tokens: int, tokens: int, notes: list[str]
) -> dict[str, Any]:
    """A `chat.completion`; `notes` (the files retrieval put in context) is ours, and clients ignore it."""
    return {
        "id": identifier,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": tokens, "total_tokens": prompt_tokens + tokens},
        "notes": notes,
    }


def chunk(
    identifier: str, model: str, delta: dict[str, str], finish: str | None = None, **extra: Any
) -> dict[str, Any]:
    """A `chat.completion.chunk`, as a stream sends them: the role first, then text, then the finish reason."""
    return {
        "id": identifier,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }
