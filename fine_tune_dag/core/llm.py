"""LLM clients behind one small interface, and the content-hash cache every call goes through.

Assets only see `CachedLLM.complete(requests)`; which provider answers is a resource setting.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Protocol, Sequence

import pandas as pd

from fine_tune_dag.core.chat import render_prompt_ids
from fine_tune_dag.core.generation import generate_batch
from fine_tune_dag.core.warehouse import Warehouse
from fine_tune_dag.prompts import PromptTemplate

ProgressCallback = Callable[[int], None]


@dataclass(frozen=True)
class LLMRequest:
    messages: tuple[tuple[str, str], ...]  # (role, content) pairs, hashable for caching
    template: str
    template_version: str
    max_new_tokens: int = 256
    temperature: float = 0.0

    @classmethod
    def from_template(
        cls, template: PromptTemplate, max_new_tokens: int, temperature: float = 0.0, **variables: str
    ) -> "LLMRequest":
        messages = tuple((m["role"], m["content"]) for m in template.render(**variables))
        return cls(messages, template.name, template.version, max_new_tokens, temperature)

    def chat(self) -> list[dict[str, str]]:
        return [{"role": role, "content": content} for role, content in self.messages]


class LLMClient(Protocol):
    provider: str
    model_name: str

    def complete(self, requests: Sequence[LLMRequest]) -> list[str]:
        """One text answer per request, in order."""


class LocalLLM:
    """A Hugging Face causal LM on this machine, loaded on first use, generating in batches."""

    provider = "local"

    def __init__(self, model_path: Path, device: str = "auto", dtype: str = "auto", batch_size: int = 8, seed: int = 0):
        self.model_path = Path(model_path)
        self.model_name = self.model_path.name
        self.device, self.dtype_name = device, dtype
        self.batch_size, self.seed = batch_size, seed
        self._loaded: tuple | None = None

    def _model(self) -> tuple:
        if self._loaded is None:
            from fine_tune_dag.core.models import load_causal_lm, load_tokenizer, select_device, select_dtype

            device = select_device(self.device)
            model = load_causal_lm(self.model_path, device, select_dtype(self.dtype_name, device)).eval()
            self._loaded = (model, load_tokenizer(self.model_path))
        return self._loaded

    def complete(self, requests: Sequence[LLMRequest]) -> list[str]:
        model, tokenizer = self._model()
        answers: list[str] = [""] * len(requests)
        groups: dict[tuple[int, float], list[int]] = {}
        for index, request in enumerate(requests):
            groups.setdefault((request.max_new_tokens, request.temperature), []).append(index)
        for (max_new_tokens, temperature), indices in groups.items():
            prompts = [render_prompt_ids(tokenizer, requests[i].chat()) for i in indices]
            outputs = generate_batch(
                model, tokenizer, prompts, max_new_tokens, temperature, batch_size=self.batch_size, seed=self.seed
            )
            for i, output in zip(indices, outputs):
                answers[i] = output
        return answers


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
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


@dataclass
class LLMUsage:
    calls: int = 0
    cache_hits: int = 0

    @property
    def requests(self) -> int:
        return self.calls + self.cache_hits


@dataclass
class CachedLLM:
    """Answers from the DuckDB cache when the exact request was seen, else from the client.

    Misses are sent in chunks and each chunk is stored as soon as it returns, so an interrupted
    run resumes without paying again for finished calls.
    """

    client: LLMClient
    warehouse: Warehouse
    chunk_size: int = 8
    usage: LLMUsage = field(default_factory=LLMUsage)

    def complete(self, requests: Sequence[LLMRequest], on_progress: ProgressCallback | None = None) -> list[str]:
        keys = [cache_key(self.client.provider, self.client.model_name, r) for r in requests]
        cached = self._lookup(sorted(set(keys)))
        answers = [cached.get(k) for k in keys]
        self.usage.cache_hits += sum(a is not None for a in answers)
        missing = [i for i, a in enumerate(answers) if a is None]
        if on_progress is not None and len(requests) > len(missing):
            on_progress(len(requests) - len(missing))
        for start in range(0, len(missing), self.chunk_size):
            chunk = missing[start : start + self.chunk_size]
            outputs = self.client.complete([requests[i] for i in chunk])
            self.usage.calls += len(chunk)
            for i, output in zip(chunk, outputs):
                answers[i] = output
            self._store([(keys[i], requests[i], answers[i]) for i in chunk])
            if on_progress is not None:
                on_progress(len(chunk))
        return [a or "" for a in answers]

    def _lookup(self, keys: list[str]) -> dict[str, str]:
        if not keys:
            return {}
        found = self.warehouse.query(
            "SELECT cache_key, response FROM llm_cache WHERE cache_key IN (SELECT unnest(?::VARCHAR[]))", [keys]
        )
        return dict(zip(found["cache_key"], found["response"]))

    def _store(self, entries: list[tuple[str, LLMRequest, str]]) -> None:
        now = datetime.now(timezone.utc).replace(tzinfo=None)
        rows = pd.DataFrame(
            [
                {
                    "cache_key": key,
                    "provider": self.client.provider,
                    "model": self.client.model_name,
                    "template": request.template,
                    "template_version": request.template_version,
                    "response": answer,
                    "created_at": now,
                }
                for key, request, answer in entries
            ]
        )
        self.warehouse.insert_rows("llm_cache", rows)
