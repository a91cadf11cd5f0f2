"""The one exception a stage raises for a reason the user can act on (missing upstream data, bad configuration).

Core code stays free of Dagster; the asset layer turns a `StageError` into a `dg.Failure` that is not retried,
with the message and metadata shown in the UI.
"""

from __future__ import annotations

from typing import Any


class StageError(Exception):
    def __init__(self, message: str, metadata: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.metadata = metadata or {}
