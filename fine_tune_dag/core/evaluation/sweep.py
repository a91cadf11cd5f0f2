"""Hyperparameter sweeps: named training configurations from a YAML file, one partition each.

    configurations:
      r8-lr2e-4: {lora_r: 8, lora_alpha: 16, learning_rate: 2.0e-4}
      r32-attention: {lora_r: 32, lora_alpha: 64, target_modules: [q_proj, v_proj]}

Every key overrides a `TrainingSettings` field; anything else is an error that names the file,
the configuration and the key, before any training starts.
"""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from fine_tune_dag.core.common.markdown import table
from fine_tune_dag.core.training.sft_config import TrainingSettings

SWEPT_FIELDS = frozenset(f.name for f in fields(TrainingSettings)) - {"device", "dtype", "seed", "logging_steps"}
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")


class SweepFileError(ValueError):
    pass


def load_sweep(path: Path) -> dict[str, dict[str, Any]]:
    """Configuration name → overrides, validated against `TrainingSettings`."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as error:
        raise SweepFileError(f"{path}: cannot read the sweep file ({error})") from error
    configurations = data.get("configurations") if isinstance(data, dict) else None
    if not isinstance(configurations, dict) or not configurations:
        raise SweepFileError(f"{path}: expected a non-empty 'configurations' mapping")
    defaults = TrainingSettings()
    for name, overrides in configurations.items():
        if not isinstance(name, str) or not name or set(name) - _NAME_CHARS:
            raise SweepFileError(f"{path}: configuration name {name!r} must use a-z, 0-9, '-' and '_' only")
        if not isinstance(overrides, dict):
            raise SweepFileError(f"{path}: configuration '{name}' must be a mapping of settings")
        for key, value in overrides.items():
            if key not in SWEPT_FIELDS:
                raise SweepFileError(f"{path}: configuration '{name}': unknown setting '{key}'")
            default = getattr(defaults, key)
            if not _accepts(default, value):
                kind = "a list of names" if isinstance(default, tuple) else type(default or 0.0).__name__
                raise SweepFileError(f"{path}: configuration '{name}': '{key}' should be {kind}, got {value!r}")
    return configurations


def _accepts(default: Any, value: Any) -> bool:
    if default is None:  # a number left unset by default (memory_budget_gb: the machine's share)
        return value is None or _accepts(0.0, value)
    if isinstance(default, tuple):
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if isinstance(value, bool) or isinstance(default, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    return isinstance(value, type(default))


def sweep_settings(overrides: dict[str, Any], base: TrainingSettings) -> TrainingSettings:
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    return replace(base, **values)


def leaderboard(rows: pd.DataFrame) -> pd.DataFrame:
    """Best first: lowest test NLL, then highest token F1; one row per configuration (its newest run)."""
    newest = rows.sort_values("created_at").groupby("configuration").tail(1)
    return newest.sort_values(["nll", "token_f1"], ascending=[True, False]).reset_index(drop=True)


def leaderboard_markdown(board: pd.DataFrame) -> str:
    rows = [
        [
            rank,
            r.configuration,
            r.adapter_version,
            f"{r.nll:.4f}",
            f"{r.rouge_l:.3f}",
            f"{r.token_f1:.3f}",
            f"{r.train_seconds:.0f}",
            int(r.train_tokens),
            f"{r.cost_usd:.4f}",
        ]
        for rank, r in enumerate(board.itertuples(index=False), start=1)
    ]
    headers = ["#", "configuration", "adapter", "test NLL", "ROUGE-L", "token F1", "train s", "tokens", "cost USD"]
    return table(rows, headers)
