"""Short, stable fingerprints of settings, for Dagster code versions.

A stage's code version names its code revision, its prompt templates and its default settings, so
changing any of them marks what was built with the old ones stale in the UI.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, is_dataclass
from typing import Any


def fingerprint(settings: Any) -> str:
    """8 hex characters of the sha256 of the settings (a dataclass instance) as sorted JSON."""
    values = asdict(settings) if is_dataclass(settings) else settings
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:8]
