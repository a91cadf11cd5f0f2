"""Where everything the project writes lives, under one data folder; the notes folder is only ever read."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DataLayout:
    notes: Path
    data: Path

    @property
    def private_words(self) -> Path:
        """The user's list of names, places and words that never leave this machine (hidden: never a note)."""
        return self.notes / ".private-words.txt"

    @property
    def warehouse(self) -> Path:
        return self.data / "warehouse.duckdb"

    @property
    def models(self) -> Path:
        return self.data / "models"

    @property
    def adapters(self) -> Path:
        return self.data / "adapters"

    @property
    def checkpoints(self) -> Path:
        """Resumable training state, one folder per (dataset, base model, settings) fingerprint."""
        return self.adapters / ".checkpoints"

    @property
    def reports(self) -> Path:
        return self.data / "reports"

    @property
    def exports(self) -> Path:
        return self.data / "exports"

    @property
    def index(self) -> Path:
        """The retrieval index over the passages, replaced whole by each build."""
        return self.data / "index"
