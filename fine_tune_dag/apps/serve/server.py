"""`fine-tune-dag serve`: your model behind an OpenAI-compatible API, with a playground page at `/`.

Model names: `champion` (whatever the registry's champion is at each request: a promotion reaches the next
request with no restart), `base`, any adapter version, and each of them with `+rag` (retrieved passages in
context, the notes used named in the answer's `notes`). Every answer is cached and logged in `llm_requests`
like any other LLM call, so served traffic can become teacher → student data.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from fine_tune_dag.core.common.chat import DEFAULT_SYSTEM_PROMPT
from fine_tune_dag.core.common.llm_types import LLMRequest, LLMResult
from fine_tune_dag.core.generation.batch import cut_at_stop
from fine_tune_dag.core.llm.cache import CachedLLM
from fine_tune_dag.core.retrieval.index import PassageIndex
from fine_tune_dag.core.retrieval.prompt import cited_notes, retrieval_messages
from fine_tune_dag.core.serving.engine import Engine, Job, Overloaded, Served
from fine_tune_dag.core.serving.requests import (
    RAG_SUFFIX,
    InvalidRequest,
    chunk,
    completion,
    completion_id,
    error_body,
    parse_chat_request,
)
from fine_tune_dag.core.store.registry import current_champion, main_line_versions
from fine_tune_dag.core.store.warehouse import Warehouse

API_KEY_VARIABLE = "FINE_TUNE_DAG_API_KEY"
RETRIEVED_PASSAGES = 3


@dataclass(frozen=True)
class _ServedName:
    """Who answered, as the cache and request log name a provider and its model."""

    model_name: str
    provider: str = "serve"


class Models:
    """Model names and what they stand for now, read from the registry at each request."""

    def __init__(self, warehouse: Warehouse, index_folder: Path) -> None:
        self.warehouse, self.index_folder = warehouse, index_folder
        self._index: tuple[float, PassageIndex] | None = None
        self._adapters: tuple[object, dict[str, Path]] | None = None

    def adapters(self) -> dict[str, Path]:
        """Versions and the champion, read again whenever the warehouse may have changed: a promotion reaches
        the next request, and requests in between cost a DuckDB file no query (the event loop waits on it)."""
        changed, stamp = self.warehouse.changed_since(None if self._adapters is None else self._adapters[0])
        if self._adapters is None or changed:
            found = {row.version: Path(row.path) for row in main_line_versions(self.warehouse).itertuples()}
            champion = current_champion(self.warehouse)
            if champion is not None:
                found["champion"] = Path(champion.path)
            self._adapters = (stamp, found)
        return self._adapters[1]

    def names(self) -> list[str]:
        plain = ["base", *self.adapters()]
        return plain + ([f"{name}{RAG_SUFFIX}" for name in plain] if self.index() is not None else [])

    def resolve(self, name: str) -> Served:
        plain = name.removesuffix(RAG_SUFFIX)
        return Served(name, None if plain == "base" else self.adapters()[plain], name.endswith(RAG_SUFFIX))

    def index(self) -> PassageIndex | None:
        """The retrieval index, reloaded when `retrieval_index` rebuilds it."""
        manifest = self.index_folder / "manifest.json"
        if not manifest.is_file():
            return None
        stamp = manifest.stat().st_mtime
        if self._index is None or self._index[0] != stamp:
            self._index = (stamp, PassageIndex.load(self.index_folder))
        return self._index[1]


def with_retrieval(messages: list[dict[str, str]], index: PassageIndex) -> tuple[list[dict[str, str]], list[str]]:
    """The conversation with the passages retrieved for its last question put before that question."""
    question = messages[-1]["content"]
    passages = index.search(question, RETRIEVED_PASSAGES)
    system = messages[0]["content"] if messages[0]["role"] == "system" else DEFAULT_SYSTEM_PROMPT
    retrieved = retrieval_messages(system, question, passages)
    earlier = messages[1:-1] if messages[0]["role"] == "system" else messages[:-1]
    return [retrieved[0], *earlier, retrieved[-1]], cited_notes(passages)


async def _text(job: Job, tokenizer: Any) -> AsyncIterator[tuple[str, str | None]]:
    """(new text, finish reason or None) as the job's tokens arrive; text that may begin a stop string is held
    until it cannot, and the answer is stripped as `generate_batch` strips it."""
    ids: list[int] = []
    sent, finish = "", None
    hold = max((len(s) for s in job.request.stop), default=1) - 1
    while finish is None:
        kind, payload = await job.events.get()
        if kind == "error":
            raise RuntimeError(payload)
        if kind == "end":
            finish = payload
        else:
            ids += payload
        text = cut_at_stop(tokenizer.decode(ids, skip_special_tokens=True), job.request.stop).lstrip()
        if finish is None:
            if text.endswith("\ufffd"):
                continue
            text = text[: len(text) - hold].rstrip() if hold else text.rstrip()
        else:
            text = text.rstrip()
        if len(text) > len(sent) or finish is not None:
            yield text[len(sent) :], finish
            sent = text


def serve_app(engine: Engine, models: Models, api_key: str = "") -> Starlette:
    def refused(request: Request) -> Response | None:
        given = request.headers.get("authorization", "")
        if api_key and not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
            return JSONResponse(error_body("a valid API key is required", "authentication_error"), status_code=401)
        return None

    async def list_models(request: Request) -> Response:
        if (refusal := refused(request)) is not None:
            return refusal
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "fine-tune-dag"} for name in models.names()]
        return JSONResponse({"object": "list", "data": data})

    async def chat_completions(request: Request) -> Response:
        if (refusal := refused(request)) is not None:
            return refusal
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse(error_body("the body is not valid JSON"), status_code=400)
        try:
            chat = parse_chat_request(body, models.names())
        except InvalidRequest as error:
            return JSONResponse(error_body(str(error), param=error.param), status_code=400)
        served = models.resolve(chat.model)
        messages, notes = list(chat.messages), []
        index = models.index() if served.retrieval else None
        if index is not None:
            messages, notes = with_retrieval(messages, index)
        job = engine.job(served, chat, messages, notes)
        try:
            engine.submit(job)
        except Overloaded as error:
            headers = {"Retry-After": str(error.retry_after)}
            kind = "rate_limit_error" if error.status == 429 else "server_error"
            return JSONResponse(error_body(str(error), kind), status_code=error.status, headers=headers)
        identifier = completion_id()
        if chat.stream:
            return StreamingResponse(_events(job, identifier, engine, notes), media_type="text/event-stream")
        pieces, finish = [], "stop"
        async for piece, reason in _text(job, engine.tokenizer):
            pieces.append(piece)
            finish = reason or finish
        text = "".join(pieces)
        produced = len(engine.tokenizer(text, add_special_tokens=False)["input_ids"])
        return JSONResponse(completion(identifier, chat.model, text, finish, len(job.prompt), produced, notes))

    async def playground(request: Request) -> Response:
        return HTMLResponse(Path(__file__).with_name("serve.html").read_text(encoding="utf-8"))

    routes = [
        Route("/", playground, methods=["GET"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    ]
    return Starlette(routes=routes)


async def _events(job: Job, identifier: str, engine: Engine, notes: list[str]) -> AsyncIterator[str]:
    """Server-sent events as OpenAI streams them: the role, the text piece by piece, the finish, then [DONE]."""
    model = job.request.model
    yield f"data: {json.dumps(chunk(identifier, model, {'role': 'assistant', 'content': ''}))}\n\n"
    try:
        async for piece, finish in _text(job, engine.tokenizer):
            if piece:
                yield f"data: {json.dumps(chunk(identifier, model, {'content': piece}))}\n\n"
            if finish is not None:
                yield f"data: {json.dumps(chunk(identifier, model, {}, finish, notes=notes))}\n\n"
    except RuntimeError as error:
        yield f"data: {json.dumps(error_body(str(error), 'server_error'))}\n\n"
    yield "data: [DONE]\n\n"


def recorder(warehouse: Warehouse) -> Any:
    """Cache and log served answers as every LLM call is (see `CachedLLM.record`)."""

    def record(answered: list[tuple[LLMRequest, LLMResult]], model: str) -> None:
        CachedLLM(_ServedName(model), warehouse).record(answered)  # type: ignore[arg-type]

    return record


def check_binding(host: str, api_key: str) -> None:
    """Beyond this machine only with a key: the API answers from your notes."""
    loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    if not loopback and not api_key:
        raise ValueError(f"refusing to listen on {host} without an API key: set {API_KEY_VARIABLE}, or use 127.0.0.1")
