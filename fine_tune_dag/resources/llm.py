"""The LLM every asset talks to; which provider answers is configuration, not asset code."""

import gc
from functools import lru_cache
from pathlib import Path
from typing import TypeVar

import dagster as dg
from pydantic import Field

from fine_tune_dag.core.common.llm_types import DEFAULT_PRICES, LLMClient
from fine_tune_dag.core.llm.cache import CachedLLM
from fine_tune_dag.core.llm.gemini import GeminiLLM, GeminiSettings
from fine_tune_dag.core.llm.openai_compat import OpenAICompatibleLLM, OpenAISettings
from fine_tune_dag.core.llm.remote import RemoteSettings
from fine_tune_dag.core.models.memory_budget import MEMORY_BUDGET_HELP
from fine_tune_dag.core.models.resolution import BUNDLED_MODEL, resolve_model
from fine_tune_dag.core.privacy.egress import Egress, EgressSettings
from fine_tune_dag.core.privacy.policy import POLICY_HELP
from fine_tune_dag.core.privacy.scan import PRIVATE_WORDS_FILE, Scanner
from fine_tune_dag.core.store.warehouse import Warehouse
from fine_tune_dag.resources.paths import ProjectPaths

PROVIDERS = ("local", "gemini", "openai")
REMOTE_PROVIDERS = ("gemini", "openai")  # capable hosted models: judges by default
DEFAULT_GEMINI_MODEL = GeminiSettings.model
RemoteSettingsT = TypeVar("RemoteSettingsT", bound=RemoteSettings)


@lru_cache(maxsize=2)
def _local_client(
    model_path: Path,
    device: str,
    dtype: str,
    batch_size: int,
    seed: int,
    memory_budget_gb: float | None,
    engine: str,
) -> LLMClient:
    """One loaded model per process, shared by every partition a run materializes."""
    from fine_tune_dag.core.llm.local import LocalLLM  # torch: loaded by the runs that generate locally

    return LocalLLM(model_path, device, dtype, batch_size, seed, memory_budget_gb, engine)


def release_local_llms() -> None:
    """Let go of the local models kept loaded for synthesis, so a stage that loads a model of its own holds one
    model, not two (the next synthesis loads it again)."""
    _local_client.cache_clear()
    gc.collect()


@lru_cache(maxsize=2)
def _gemini_client(api_key: str, settings: GeminiSettings, seed: int) -> GeminiLLM:
    """One client (and one rate limiter) per process and quota warehouse, so its threads share one limiter."""
    return GeminiLLM(api_key, settings, seed)


@lru_cache(maxsize=2)
def _openai_client(api_key: str, settings: OpenAISettings, seed: int) -> OpenAICompatibleLLM:
    """One client (and one rate limiter) per process, like Gemini's."""
    return OpenAICompatibleLLM(api_key, settings, seed)


class LLMResource(dg.ConfigurableResource):
    provider: str = Field(
        default="local",
        description="'local' (a Hugging Face model here), 'gemini', or 'openai' (any OpenAI-compatible server: "
        "OpenAI, Ollama, vLLM, llama.cpp, LM Studio)",
    )
    model: str = Field(
        default=BUNDLED_MODEL,
        description="local: Hub id, folder or bundled:…; gemini: model name; openai: the name the server serves",
    )
    batch_size: int = 8
    memory_budget_gb: float | None = Field(
        default=None,
        description="local: the most the process may hold; fewer requests decode at once where batch_size won't fit; "
        + MEMORY_BUDGET_HELP,
    )
    device: str = "auto"
    dtype: str = "auto"
    generation_engine: str = Field(
        default="auto",
        description="local: auto (OpenVINO GenAI on CPUs, vLLM on CUDA, else transformers), openvino, vllm or "
        "transformers",
    )
    seed: int = 0
    api_key: str = Field(
        default="",
        description="gemini: EnvVar('GEMINI_API_KEY'); openai: EnvVar('OPENAI_API_KEY'), empty for a local server "
        "that needs none; never logged",
    )
    base_url: str = Field(
        default="",
        description="gemini: another endpoint (a proxy, a local stub); openai: the server's /v1 URL "
        "(empty: api.openai.com), e.g. http://localhost:11434/v1 for Ollama",
    )
    max_concurrency: int = 4
    requests_per_minute: int | None = Field(
        default=None, description="gemini, openai: client-side pacing; unset: the provider's (gemini 10, openai 500)"
    )
    tokens_per_minute: int | None = Field(
        default=None, description="gemini, openai: client-side pacing; unset: the provider's (250k, 200k)"
    )
    timeout_s: float = 60.0
    shared_quota: bool = Field(
        default=True,
        description="gemini, openai: pace every process and machine under one quota, kept in the warehouse the "
        "assets use (the provider's limit holds however many workers run); off: each process paces itself alone",
    )
    prices: dict[str, list[float]] = Field(
        default_factory=dict, description="model → [USD per 1M input tokens, per 1M output]; adds to the defaults"
    )
    privacy_policy: str = Field(default="", description=POLICY_HELP)
    private_words_file: str = Field(
        default="",
        description="your list of names, places and words that never leave this machine, one a line, an optional "
        f"KIND: prefix (PERSON: Margaret Hollis, PLACE: Hebden Bridge); empty: {PRIVATE_WORDS_FILE} in the notes folder",
    )
    spacy_model: str = Field(
        default="",
        description="an installed spaCy pipeline (package name or folder, e.g. en_core_web_sm) that finds people and "
        "places before anything leaves; empty: names are covered by your list only",
    )
    paths: dg.ResourceDependency[ProjectPaths]

    def client(self, warehouse: Warehouse | None = None) -> LLMClient:
        """This process's client; a hosted provider's is paced under the quota shared through `warehouse`."""
        if self.provider == "gemini":
            return _gemini_client(self.api_key, self._remote_settings(GeminiSettings, warehouse), self.seed)
        if self.provider == "openai":
            if self.model == BUNDLED_MODEL:
                raise ValueError("provider 'openai' needs `model`: the name the server serves (gpt-4o-mini, llama3.2…)")
            return _openai_client(self.api_key, self._remote_settings(OpenAISettings, warehouse), self.seed)
        if self.provider != "local":
            raise ValueError(f"unknown LLM provider '{self.provider}'; available: {', '.join(PROVIDERS)}")
        resolved = resolve_model(self.model, self.paths.models)
        return _local_client(
            resolved.path,
            self.device,
            self.dtype,
            self.batch_size,
            self.seed,
            self.memory_budget_gb,
            self.generation_engine,
        )

    def _remote_settings(self, kind: type[RemoteSettingsT], warehouse: Warehouse | None) -> RemoteSettingsT:
        """A hosted provider's settings from these fields; pacing left unset keeps the provider's default."""
        pacing = {"requests_per_minute": self.requests_per_minute, "tokens_per_minute": self.tokens_per_minute}
        return kind(
            model=self.model,
            max_concurrency=self.max_concurrency,
            timeout_s=self.timeout_s,
            base_url=self.base_url,
            quota_warehouse=warehouse.location if self.shared_quota and warehouse else "",
            privacy=self.egress_settings(),
            **{name: value for name, value in pacing.items() if value is not None},
        )

    def private_words_path(self) -> Path:
        return Path(self.private_words_file) if self.private_words_file else self.paths.layout.private_words

    def egress_settings(self) -> EgressSettings:
        return EgressSettings(self.privacy_policy, str(self.private_words_path()), self.spacy_model)

    def egress(self) -> Egress:
        """The egress step of this provider: its policy, and the scan it runs (the local provider's sends nothing,
        so it is only described)."""
        destination = {
            "gemini": "Gemini",
            "openai": f"the OpenAI-compatible server {self.base_url or 'api.openai.com'}",
        }
        return Egress(
            self.provider, self.base_url, self.egress_settings(), destination.get(self.provider, "the local model")
        )

    def scanner(self) -> Scanner:
        """The scan every note gets, whatever the provider: the counts by kind the passages asset shows."""
        return self.egress().scanner()

    def cached(self, warehouse: Warehouse, context: dg.AssetExecutionContext) -> CachedLLM:
        """A fresh usage counter per asset materialization, over the shared client, cache and request log."""
        origin = {
            "run_id": context.run.run_id,
            "asset": context.asset_key.to_user_string(),
            "partition": context.partition_key if context.has_partition_key else "",
        }
        # local: several batches a call, so a finished row's place goes to the next request (decoding.decode)
        chunk = self.batch_size * 4 if self.provider == "local" else self.max_concurrency * 2
        return CachedLLM(self.client(warehouse), warehouse, chunk_size=chunk, prices=self.price_table(), origin=origin)

    def judge(self, mode: str, warehouse: Warehouse, context: dg.AssetExecutionContext) -> CachedLLM | None:
        """The pairwise judge a stage asked for: 'llm' always, 'auto' when the provider is a hosted one (Gemini or
        OpenAI-compatible; the bundled model is too weak to judge), anything else none."""
        if mode == "llm" or (mode == "auto" and self.provider in REMOTE_PROVIDERS):
            judge = self.cached(warehouse, context)
            judge.withhold_blocked = True  # under 'block', items with personal data go unjudged; the rest are judged
            return judge
        return None

    def price_table(self) -> dict[str, tuple[float, float]]:
        return {**DEFAULT_PRICES, **{model: (p[0], p[1]) for model, p in self.prices.items()}}
