"""The `local` provider: a Hugging Face causal LM on this machine, generating in batches on the engine chosen for
it (OpenVINO GenAI on CPUs, vLLM on CUDA, transformers' `generate` otherwise)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

from fine_tune_dag.core.common.chat import render_prompt_ids
from fine_tune_dag.core.common.llm_types import LLMRequest, LLMResult
from fine_tune_dag.core.generation.base import EngineChoice, EngineSettings, GenerationEngine, engine_precision
from fine_tune_dag.core.generation.batch import generate_batch
from fine_tune_dag.core.generation.engines import open_engine
from fine_tune_dag.core.generation.transformers import TransformersEngine
from fine_tune_dag.core.models.loading import load_causal_lm, load_tokenizer, select_device, select_dtype
from fine_tune_dag.core.models.memory_budget import resolve_memory_budget


class LocalLLM:
    """A Hugging Face causal LM on this machine, loaded on first use, generating in batches."""

    provider = "local"

    def __init__(
        self,
        model_path: Path,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 8,
        seed: int = 0,
        memory_budget_gb: float | None = None,  # None: follows the memory available at each call
        engine: str = "auto",
    ):
        self.model_path = Path(model_path)
        self.model_name = self.model_path.name
        self.device, self.dtype_name = device, dtype
        self.batch_size, self.seed, self.memory_budget_gb = batch_size, seed, memory_budget_gb
        self.engine_setting = engine
        self._loaded: tuple[GenerationEngine, Any] | None = None

    def _model(self) -> tuple[GenerationEngine, Any]:
        if self._loaded is None:
            device = select_device(self.device)
            tokenizer = load_tokenizer(self.model_path)

            def torch_model() -> Any:
                return load_causal_lm(self.model_path, device, select_dtype(self.dtype_name, device)).eval()

            settings = EngineSettings(self.engine_setting, engine_precision(self.dtype_name), self.batch_size)  # type: ignore[arg-type]
            engine = open_engine(self.model_path, {}, tokenizer, settings, device, torch_model)
            self._loaded = (engine, tokenizer)
        return self._loaded

    @property
    def engine(self) -> EngineChoice | None:
        """The engine that generated, for run metadata; None while every answer came from the cache."""
        return self._loaded[0].choice if self._loaded is not None else None

    def complete(self, requests: Sequence[LLMRequest]) -> list[LLMResult]:
        model, tokenizer = self._model()
        if isinstance(model, TransformersEngine):  # the fallback sizes its batches to the memory available now
            model.memory_budget = resolve_memory_budget(self.memory_budget_gb)
        answers: list[LLMResult] = [LLMResult("")] * len(requests)
        groups: dict[tuple[int, float], list[int]] = {}
        for index, request in enumerate(requests):
            groups.setdefault((request.max_new_tokens, request.temperature), []).append(index)
        for (max_new_tokens, temperature), indices in groups.items():
            prompts = [render_prompt_ids(tokenizer, requests[i].chat()) for i in indices]
            started = time.perf_counter()
            outputs = generate_batch(
                model,
                tokenizer,
                prompts,
                max_new_tokens,
                temperature,
                batch_size=self.batch_size,
                seed=self.seed,
            )
            latency = (time.perf_counter() - started) / len(indices)
            for i, prompt, output in zip(indices, prompts, outputs):
                produced = len(tokenizer(output, add_special_tokens=False)["input_ids"])
                answers[i] = LLMResult(output, "ok" if output.strip() else "empty", len(prompt), produced, latency)
        return answers
