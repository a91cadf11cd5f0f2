"""The content-hash cache and request log every LLM call goes through, whichever provider answers.

Assets only see `CachedLLM.complete(requests)`; which provider answers is a resource setting.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Sequence

import pandas as pd

from fine_tune_dag.core.common.llm_types import (
    DEFAULT_PRICES,
    LLMClient,
    LLMRequest,
    LLMResult,
    LLMUsage,
    ProgressCallback,
    request_cost,
)
from fine_tune_dag.core.store.request_log import cache_answers, cached_answers, log_requests
from fine_tune_dag.core.store.warehouse import Warehouse


def cache_key(provider: str, model: str, request: LLMRequest) -> str:
    payload = json.dumps(
        {
            "provider": provider,
            "model": model,
            "messages": request.messages,
            "template": request.template,
            "template_version": request.template_version,
            "max_new_tokens": request.max_new_tokens,
            "temperature": request.temperature,
            **({"json_schema": request.json_schema} if request.json_schema else {}),
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


@dataclass
class CachedLLM:
    """Answers from the DuckDB cache when the exact request was seen, else from the client.

    Misses are sent in chunks and each chunk is stored as soon as it returns, so an interrupted
    run resumes without paying again for finished calls. Every request, hit or miss, is a row of
    `llm_requests` with its template, tokens, latency, cost and where it came from (`origin`).
    """

    client: LLMClient
    warehouse: Warehouse
    chunk_size: int = 8
    prices: dict[str, tuple[float, float]] = field(default_factory=lambda: dict(DEFAULT_PRICES))
    origin: dict[str, str] = field(default_factory=dict)  # run_id, asset, partition
    usage: LLMUsage = field(default_factory=LLMUsage)
    # under the privacy policy 'block': hold back only the requests with personal data and answer them "" (a judge),
    # rather than refuse the whole call (a note's synthesis, whose partition then says why)
    withhold_blocked: bool = False

    def complete(self, requests: Sequence[LLMRequest], on_progress: ProgressCallback | None = None) -> list[str]:
        """Answer texts in order; blocked and empty answers come back as "" and are logged as such.

        A client that sends off this machine has an egress step (`client.egress`): it runs first, so cache keys,
        the cache and the request log see only what is sent (placeholders, not personal data), and the answers
        are mapped back before they are returned."""
        egress = getattr(self.client, "egress", None)
        if egress is None:
            return self._complete(requests, on_progress)
        batch = egress.prepare(requests, withhold=self.withhold_blocked)
        self.usage.redacted_requests += batch.redacted_requests
        self.usage.withheld += batch.withheld
        for kind, count in batch.redacted.items():
            self.usage.redacted[kind] = self.usage.redacted.get(kind, 0) + count
        sendable = [i for i, request in enumerate(batch.sent) if request is not None]
        answers = [""] * len(requests)
        done = self._complete([batch.sent[i] for i in sendable], on_progress)  # type: ignore[misc]
        for i, text in zip(sendable, done):
            answers[i] = batch.restore(i, text)
        if on_progress is not None and batch.withheld:
            on_progress(batch.withheld)
        return answers

    def _complete(self, requests: Sequence[LLMRequest], on_progress: ProgressCallback | None) -> list[str]:
        keys = [cache_key(self.client.provider, self.client.model_name, r) for r in requests]
        cached = self._lookup(sorted(set(keys)))
        answers: list[LLMResult | None] = [cached.get(k) for k in keys]
        hits = [i for i, a in enumerate(answers) if a is not None]
        self.usage.cache_hits += len(hits)
        self._log([(keys[i], requests[i], answers[i]) for i in hits], cache_hit=True)
        # the same request twice in one batch is bought once; its copies are logged as hits
        repeats: dict[str, list[int]] = {}
        for i, answer in enumerate(answers):
            if answer is None:
                repeats.setdefault(keys[i], []).append(i)
        missing = [indexes[0] for indexes in repeats.values()]
        if on_progress is not None and hits:
            on_progress(len(hits))
        for start in range(0, len(missing), self.chunk_size):
            chunk = missing[start : start + self.chunk_size]
            outputs = self.client.complete([requests[i] for i in chunk])
            self.usage.calls += len(chunk)
            copies = [j for i in chunk for j in repeats[keys[i]][1:]]
            for i, output in zip(chunk, outputs):
                for j in repeats[keys[i]]:
                    answers[j] = output
            entries = [(keys[i], requests[i], answers[i]) for i in chunk]
            self._store(entries)
            self._log(entries, cache_hit=False)
            self.usage.cache_hits += len(copies)
            self._log([(keys[j], requests[j], answers[j]) for j in copies], cache_hit=True)
            if on_progress is not None:
                on_progress(len(chunk) + len(copies))
        return [a.text if a is not None else "" for a in answers]

    def record(self, answered: Sequence[tuple[LLMRequest, LLMResult]]) -> None:
        """Answers made elsewhere (the server's), cached and logged like this client's own: served traffic
        becomes teacher data the same way."""
        entries = [(cache_key(self.client.provider, self.client.model_name, r), r, a) for r, a in answered]
        self._store(entries)
        self._log(entries, cache_hit=False)

    def _lookup(self, keys: list[str]) -> dict[str, LLMResult]:
        if not keys:
            return {}
        found = cached_answers(self.warehouse, keys)
        return {
            r.cache_key: LLMResult(r.response, r.status or "ok", int(r.input_tokens or 0), int(r.output_tokens or 0))
            for r in found.itertuples(index=False)
        }

    def _store(self, entries: list[tuple[str, LLMRequest, LLMResult]]) -> None:
        now = datetime.now(timezone.utc).replace(tzinfo=None)
        rows = pd.DataFrame(
            [
                {
                    "cache_key": key,
                    "provider": self.client.provider,
                    "model": self.client.model_name,
                    "template": request.template,
                    "template_version": request.template_version,
                    "response": result.text,
                    "messages": json.dumps(request.messages, ensure_ascii=False),
                    "status": result.status,
                    "input_tokens": result.input_tokens,
                    "output_tokens": result.output_tokens,
                    "created_at": now,
                }
                for key, request, result in entries
            ]
        )
        cache_answers(self.warehouse, rows)

    def _log(self, entries: list[tuple[str, LLMRequest, LLMResult]], cache_hit: bool) -> None:
        if not entries:
            return
        now = datetime.now(timezone.utc).replace(tzinfo=None)
        rows = []
        for key, request, result in entries:
            cost = (
                0.0
                if cache_hit
                else request_cost(self.prices, self.client.model_name, result.input_tokens, result.output_tokens)
            )
            if not cache_hit:
                self.usage.input_tokens += result.input_tokens
                self.usage.output_tokens += result.output_tokens
                self.usage.cost_usd += cost
            self.usage.rejected += result.status != "ok"
            rows.append(
                {
                    "request_id": uuid.uuid4().hex,
                    "created_at": now,
                    "provider": self.client.provider,
                    "model": self.client.model_name,
                    "template": request.template,
                    "template_version": request.template_version,
                    "variables": json.dumps(dict(request.variables), ensure_ascii=False),
                    "prompt_hash": key,
                    "input_tokens": result.input_tokens,
                    "output_tokens": result.output_tokens,
                    "latency_s": 0.0 if cache_hit else result.latency_s,
                    "cost_usd": cost,
                    "cache_hit": cache_hit,
                    "status": result.status,
                    "detail": result.detail,
                    "run_id": self.origin.get("run_id", ""),
                    "asset": self.origin.get("asset", ""),
                    "partition": self.origin.get("partition", ""),
                }
            )
        log_requests(self.warehouse, pd.DataFrame(rows))
