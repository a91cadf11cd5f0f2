"""Every stage's Dagster run config, in one place, built from the core settings dataclasses where a stage has one.

A stage's `Config` class is generated from its settings dataclass (`settings_config`): every field becomes a
config field with the dataclass default and its `help` text as description, and `settings()` turns the config
back into the dataclass. A field is left out only by naming it in `excluded` with the reason, and
`test_settings_are_configurable` fails when a field is neither configurable nor excluded.
"""

from __future__ import annotations

import typing
from dataclasses import MISSING, fields
from typing import Any, ClassVar

import dagster as dg
from pydantic import Field, create_model

from fine_tune_dag.core.common.chat import DEFAULT_SYSTEM_PROMPT
from fine_tune_dag.core.dataset.config import DatasetSettings
from fine_tune_dag.core.dataset.splits import DEFAULT_TEST_FRACTION
from fine_tune_dag.core.evaluation.config import EvaluationSettings, PreferenceSettings
from fine_tune_dag.core.retrieval.settings import RetrievalSettings
from fine_tune_dag.core.synthesis.chunking import BOUNDARY_MAX_NEW_TOKENS, ChunkingSettings
from fine_tune_dag.core.synthesis.qa_pairs import SynthesisSettings
from fine_tune_dag.core.training.dpo_config import DpoSettings
from fine_tune_dag.core.training.sft_config import TrainingSettings


class SettingsConfig(dg.Config):
    """Base of the generated classes; `SETTINGS` is the dataclass, `EXCLUDED` the fields left out, with why."""

    SETTINGS: ClassVar[type]
    EXCLUDED: ClassVar[dict[str, str]] = {}

    def settings(self) -> Any:
        hints = typing.get_type_hints(self.SETTINGS)
        values = {}
        for spec in fields(self.SETTINGS):
            if spec.name in self.EXCLUDED:
                continue
            value = getattr(self, spec.name)
            values[spec.name] = tuple(value) if typing.get_origin(hints[spec.name]) is tuple else value
        return self.SETTINGS(**values)


def _config_type(hint: Any) -> Any:
    """Tuples (immutable in the frozen dataclasses) are lists in run config."""
    if typing.get_origin(hint) is tuple:
        return list[typing.get_args(hint)[0]]
    return hint


def settings_config(name: str, settings: type, excluded: dict[str, str] | None = None) -> type[SettingsConfig]:
    """A `SettingsConfig` subclass with one field per settings field (default and description from the dataclass)."""
    hints = typing.get_type_hints(settings)
    config_fields = {}
    for spec in fields(settings):
        if spec.name in (excluded or {}):
            continue
        default = spec.default if spec.default is not MISSING else spec.default_factory()
        default = list(default) if isinstance(default, tuple) else default
        config_fields[spec.name] = (
            _config_type(hints[spec.name]),
            Field(default=default, description=spec.metadata.get("help")),
        )
    config = create_model(name, __base__=SettingsConfig, **config_fields)
    config.SETTINGS = settings
    config.EXCLUDED = dict(excluded or {})
    return config


# Stages whose settings are a core dataclass: generated, plus the few fields that are orchestration choices.

ChunkingSettingsConfig = settings_config("ChunkingSettingsConfig", ChunkingSettings)


class ChunkingConfig(ChunkingSettingsConfig):
    boundary_max_new_tokens: int = Field(
        default=BOUNDARY_MAX_NEW_TOKENS, description="answer length of the boundary request"
    )


class SynthesisConfig(settings_config("SynthesisSettingsConfig", SynthesisSettings)):
    judge: str = Field(
        default="auto",
        description="the pair judge (scores each kept pair against its passage, rejects those below "
        "judge_min_score): 'auto' (when the LLM is a hosted one; bench/pair_judge.py measures the bundled "
        "model), 'llm', or 'off'",
    )


TrainingConfig = settings_config("TrainingConfig", TrainingSettings)
DpoConfig = settings_config("DpoConfig", DpoSettings)

_JUDGE_HELP = "the pairwise LLM judge: 'auto' (when the LLM is Gemini), 'llm', or '{off}'"


EvaluationSettingsConfig = settings_config("EvaluationSettingsConfig", EvaluationSettings)


class EvaluationConfig(EvaluationSettingsConfig):
    judge: str = Field(default="auto", description=_JUDGE_HELP.format(off="metrics"))


class PreferenceCandidatesConfig(settings_config("PreferenceSettingsConfig", PreferenceSettings)):
    judge: str = Field(default="auto", description="pre-label with " + _JUDGE_HELP.format(off="none"))


class SplitConfig(settings_config("DatasetSettingsConfig", DatasetSettings)):
    test_fraction: float = Field(
        default=DEFAULT_TEST_FRACTION, description="share of notes held out; assigned by a hash of the note id"
    )
    system_prompt: str = DEFAULT_SYSTEM_PROMPT


# Stages with no settings dataclass of their own.


class EdgeCaseConfig(dg.Config):
    hardest: int = Field(default=5, description="held-out items the base model found hardest, added per run")
    evaluation: EvaluationSettingsConfig = Field(
        default_factory=EvaluationSettingsConfig,
        description="the evaluation's settings the cases are answered with (dtype, device, engine, batch size, "
        "memory budget, answer length): set them as eval_report's, which shows these answers beside its own",
    )


class RequestLogConfig(dg.Config):
    templates: list[str] = Field(default=["grounded_qa"], description="prompt templates whose answers become pairs")
    assets: list[str] = Field(default=[], description="only requests made by these assets (empty: any)")
    since: str = Field(default="", description="ISO date: only requests at or after (UTC)")
    until: str = Field(default="", description="ISO date: only requests before (UTC)")


class PromptCompletionConfig(dg.Config):
    prompts_file: str = Field(default="", description="CSV (prompt[, completion]) or JSONL of prompts")
    generator_task: str = Field(default="", description="or: a task the teacher invents `count` inputs for")
    count: int = 20
    max_new_tokens: int = 256


class SweepRunConfig(dg.Config):
    base: TrainingConfig = Field(default_factory=TrainingConfig, description="settings every configuration starts from")
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    device_hour_usd: float = Field(default=0.0, description="what an hour on the training device costs, for the board")


class LeaderboardConfig(dg.Config):
    promote_winner: bool = Field(default=False, description="promote the winner if it passes the champion gate")


RetrievalConfig = settings_config("RetrievalConfig", RetrievalSettings)


class CrossvalConfig(dg.Config):
    """The same on every fold and on the verdict: the folds' results are kept per dataset and training settings."""

    training: TrainingConfig = Field(default_factory=TrainingConfig, description="how each fold's adapter is trained")
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig, description="how each fold is evaluated")
