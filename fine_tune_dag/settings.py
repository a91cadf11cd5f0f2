"""The project's settings from the environment, read in one place by the Dagster definitions and the CLI.

| variable | default | what |
|---|---|---|
| FINE_TUNE_DAG_NOTES_DIR | data/notes | the notes folder (only ever read) |
| FINE_TUNE_DAG_DATA_DIR | data | everything generated |
| FINE_TUNE_DAG_BASE_MODEL | the bundled SmolLM2 | Hub id, folder or bundled:… |
| FINE_TUNE_DAG_LLM_PROVIDER | local | local, gemini, or openai (any OpenAI-compatible server) |
| FINE_TUNE_DAG_LLM_BASE_URL | — | openai: the server's /v1 URL (Ollama, vLLM, llama.cpp, fine-tune-dag serve); empty: OpenAI |
| OPENAI_API_KEY | — | openai: read at run time, never logged; local servers need none |
| FINE_TUNE_DAG_LLM_MODEL | bundled (local), gemini-2.5-flash (gemini) | the LLM for chunking, synthesis, judging |
| FINE_TUNE_DAG_GEMINI_RPM | 10 | requests per minute to Gemini |
| GEMINI_API_KEY or GOOGLE_API_KEY | — | read at run time, never logged |
| FINE_TUNE_DAG_RETRAIN_MIN_NEW_EXAMPLES | AutomationPolicy's (20) | train-split growth that retrains |
| FINE_TUNE_DAG_RETRAIN_CRON | AutomationPolicy's (0 3 * * *) | the nightly catch-up |
| FINE_TUNE_DAG_EXECUTOR | (multi or in-process) | multiprocess, in_process or k8s |
| FINE_TUNE_DAG_ARTIFACTS_URL | — | fsspec URL adapters and reports are mirrored to |
| FINE_TUNE_DAG_WAREHOUSE_URL | — (data/warehouse.duckdb) | postgresql://user@host:5432/db: the warehouse shared by many machines; the password from PGPASSWORD, never in the URL |
| FINE_TUNE_DAG_SWEEP_FILE | sweeps.yaml | named training configurations |
| FINE_TUNE_DAG_CROSSVAL_FOLDS | 5 | folds by note of the cross-validated verdict (`crossval_folds` partitions) |
| FINE_TUNE_DAG_GENERATION_ENGINE | auto | the local teacher's engine: auto (OpenVINO GenAI on CPUs, vLLM on CUDA), openvino, vllm, transformers |
| FINE_TUNE_DAG_AUTHOR_ADDRESSES | — | comma-separated e-mail addresses you write from: a mailbox's messages from them are your text |
| FINE_TUNE_DAG_AUTHOR_NAMES | — | comma-separated names you appear under in chat exports: their messages are your text |
| FINE_TUNE_DAG_CONVERSATION_GAP_MINUTES | 240 | a chat silence longer than this starts a new conversation |
| FINE_TUNE_DAG_PRIVACY_POLICY | the provider's (redact remote, allow local) | what may leave: redact, block or allow |
| FINE_TUNE_DAG_PRIVATE_WORDS | <notes>/.private-words.txt | your list of names, places and words that never leave |
| FINE_TUNE_DAG_SPACY_MODEL | — (names by the list only) | an installed spaCy pipeline that finds people and places |
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from fine_tune_dag.core.ingest.base import SourceSettings
from fine_tune_dag.core.models.bundled import BUNDLED_MODEL
from fine_tune_dag.core.store.layout import DataLayout


@dataclass(frozen=True)
class ProjectSettings:
    notes_dir: str = "data/notes"
    data_dir: str = "data"
    base_model: str = BUNDLED_MODEL
    llm_provider: str = "local"
    llm_model: str = ""  # empty: the provider's default
    llm_base_url: str = ""
    openai_key_set: bool = False  # an unset key is fine for a local server; Dagster refuses an unset EnvVar
    gemini_requests_per_minute: int = 10
    gemini_key_variable: str = "GEMINI_API_KEY"
    retrain_min_new_examples: int | None = None  # None: AutomationPolicy's default
    retrain_cron: str | None = None  # None: AutomationPolicy's default
    executor: str = ""
    artifacts_url: str = ""
    warehouse_url: str = ""  # empty: the DuckDB file in the data folder
    sweep_file: str = "sweeps.yaml"
    crossval_folds: int = 5  # folds by note of the cross-validated verdict
    generation_engine: str = "auto"  # the local teacher's engine (evaluation's is its config's generation_engine)
    author_addresses: str = ""  # comma-separated; personal, so handed to Dagster as an EnvVar
    author_names: str = ""
    conversation_gap_minutes: float = 240.0
    privacy_policy: str = ""  # empty: the provider's default (core/privacy/policy.py)
    private_words_file: str = ""  # empty: .private-words.txt in the notes folder
    spacy_model: str = ""  # empty: names are covered by the user's list only

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> ProjectSettings:
        env = os.environ if environ is None else environ
        defaults = cls()
        return cls(
            notes_dir=env.get("FINE_TUNE_DAG_NOTES_DIR", defaults.notes_dir),
            data_dir=env.get("FINE_TUNE_DAG_DATA_DIR", defaults.data_dir),
            base_model=env.get("FINE_TUNE_DAG_BASE_MODEL", defaults.base_model),
            llm_provider=env.get("FINE_TUNE_DAG_LLM_PROVIDER", defaults.llm_provider),
            llm_model=env.get("FINE_TUNE_DAG_LLM_MODEL", defaults.llm_model),
            llm_base_url=env.get("FINE_TUNE_DAG_LLM_BASE_URL", defaults.llm_base_url),
            openai_key_set=bool(env.get("OPENAI_API_KEY")),
            gemini_requests_per_minute=int(env.get("FINE_TUNE_DAG_GEMINI_RPM", defaults.gemini_requests_per_minute)),
            gemini_key_variable=(
                "GOOGLE_API_KEY" if "GOOGLE_API_KEY" in env and "GEMINI_API_KEY" not in env else "GEMINI_API_KEY"
            ),
            retrain_min_new_examples=(
                int(env["FINE_TUNE_DAG_RETRAIN_MIN_NEW_EXAMPLES"])
                if "FINE_TUNE_DAG_RETRAIN_MIN_NEW_EXAMPLES" in env
                else None
            ),
            retrain_cron=env.get("FINE_TUNE_DAG_RETRAIN_CRON"),
            executor=env.get("FINE_TUNE_DAG_EXECUTOR", defaults.executor),
            artifacts_url=env.get("FINE_TUNE_DAG_ARTIFACTS_URL", defaults.artifacts_url),
            warehouse_url=env.get("FINE_TUNE_DAG_WAREHOUSE_URL", defaults.warehouse_url),
            sweep_file=env.get("FINE_TUNE_DAG_SWEEP_FILE", defaults.sweep_file),
            crossval_folds=int(env.get("FINE_TUNE_DAG_CROSSVAL_FOLDS", defaults.crossval_folds)),
            generation_engine=env.get("FINE_TUNE_DAG_GENERATION_ENGINE", defaults.generation_engine),
            author_addresses=env.get("FINE_TUNE_DAG_AUTHOR_ADDRESSES", defaults.author_addresses),
            author_names=env.get("FINE_TUNE_DAG_AUTHOR_NAMES", defaults.author_names),
            conversation_gap_minutes=float(
                env.get("FINE_TUNE_DAG_CONVERSATION_GAP_MINUTES", defaults.conversation_gap_minutes)
            ),
            privacy_policy=env.get("FINE_TUNE_DAG_PRIVACY_POLICY", defaults.privacy_policy),
            private_words_file=env.get("FINE_TUNE_DAG_PRIVATE_WORDS", defaults.private_words_file),
            spacy_model=env.get("FINE_TUNE_DAG_SPACY_MODEL", defaults.spacy_model),
        )

    def with_folders(self, notes_dir: Path | str, data_dir: Path | str) -> ProjectSettings:
        """The same settings over other folders (the CLI's --notes-dir and --data-dir)."""
        return ProjectSettings(**{**self.__dict__, "notes_dir": str(notes_dir), "data_dir": str(data_dir)})

    def policy_overrides(self) -> dict[str, int | str]:
        """The automation policy fields set in the environment (the rest keep the policy's defaults)."""
        values = {"retrain_min_new_examples": self.retrain_min_new_examples, "retrain_cron": self.retrain_cron}
        return {name: value for name, value in values.items() if value is not None}

    def llm_choice(self) -> tuple[str, str]:
        """The LLM stages' provider (local, gemini or openai) and model: FINE_TUNE_DAG_LLM_MODEL, else the
        provider's default; an OpenAI-compatible server has none, its model must be named."""
        if self.llm_provider == "openai":
            return "openai", self.llm_model
        if self.llm_provider == "gemini":
            from fine_tune_dag.core.llm.gemini import GeminiSettings  # the Gemini client loads only for Gemini

            return "gemini", self.llm_model or GeminiSettings.model
        return "local", self.llm_model or BUNDLED_MODEL

    def source_settings(self) -> SourceSettings:
        """Whose words are the author's in mailboxes and chat exports."""
        return SourceSettings.from_lists(self.author_addresses, self.author_names, self.conversation_gap_minutes)

    @property
    def private_words(self) -> Path:
        """The user's list of names, places and words that never leave this machine."""
        return Path(self.private_words_file) if self.private_words_file else self.layout.private_words

    @property
    def layout(self) -> DataLayout:
        return DataLayout(Path(self.notes_dir), Path(self.data_dir))

    @property
    def warehouse(self) -> Path | str:
        """The PostgreSQL URL when one is set, else the DuckDB file in the data folder."""
        return self.warehouse_url or self.layout.warehouse
