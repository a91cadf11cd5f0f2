"""Shared fixtures: a tiny random Llama-style model with a small ChatML tokenizer, built in seconds."""

from __future__ import annotations

from pathlib import Path

import pytest
from fine_tune_dag_testkit.models import build_tiny_model
from fine_tune_dag_testkit.scripted import ScriptedLLM

from fine_tune_dag_tests.postgres import postgres_server  # noqa: F401  (a shared fixture)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture
def scripted_llm() -> ScriptedLLM:
    """A fresh scripted LLM per test, so call counts are this test's alone."""
    return ScriptedLLM()


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir: Path):
    from fine_tune_dag.core.models.loading import load_tokenizer

    return load_tokenizer(tiny_model_dir)
