"""Shared fixtures: a tiny random Llama-style model with a small ChatML tokenizer, built in seconds."""

from __future__ import annotations

from pathlib import Path

import pytest

from fine_tune_dag.testing import build_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir: Path):
    from fine_tune_dag.core.modeling.models import load_tokenizer

    return load_tokenizer(tiny_model_dir)
