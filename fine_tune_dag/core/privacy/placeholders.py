"""Consistent placeholders within one note: the same finding is always the same `PERSON_1`, `EMAIL_2`, and the
teacher's answer is mapped back on this machine.

Replacement is by value, not by position: once a value is found anywhere in a note's requests, every occurrence
of it in them is replaced (case-insensitively, on word boundaries), including places where a recognizer missed it.
Mapping back replaces only the placeholders this note handed out, so text the teacher wrote around them stays as
written; a placeholder the teacher invented is left alone. The mapping lives in memory only, for one call.
"""

from __future__ import annotations

import re
from collections import Counter

from fine_tune_dag.core.privacy.scan import Finding


class Placeholders:
    """One note's mapping, numbered per kind in order of first appearance."""

    def __init__(self) -> None:
        self._by_value: dict[str, str] = {}  # casefolded real value → placeholder
        self._real: dict[str, str] = {}  # placeholder → the value as first seen
        self._numbers: Counter[str] = Counter()
        self._values: re.Pattern[str] | None = None
        self._placeholders: re.Pattern[str] | None = None

    def __len__(self) -> int:
        return len(self._real)

    def add(self, finding: Finding) -> str:
        """The placeholder of this finding's value, a new one the first time the value is seen."""
        key = finding.text.casefold()
        if key not in self._by_value:
            self._numbers[finding.kind] += 1
            placeholder = f"{finding.kind}_{self._numbers[finding.kind]}"
            self._by_value[key] = placeholder
            self._real[placeholder] = finding.text
            self._values = self._placeholders = None
        return self._by_value[key]

    def kinds(self) -> dict[str, int]:
        """Distinct values by kind: what a request's metadata may say about them."""
        return dict(self._numbers)

    def redact(self, text: str) -> str:
        """`text` with every known value replaced by its placeholder (longest values first, so an e-mail address
        goes whole before a name inside it)."""
        if not self._by_value:
            return text
        if self._values is None:
            ordered = sorted(self._by_value, key=len, reverse=True)
            alternatives = "|".join(re.escape(value) for value in ordered)
            self._values = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)
        return self._values.sub(lambda match: self._by_value[match.group().casefold()], text)

    def restore(self, text: str) -> str:
        """The teacher's answer with this note's placeholders replaced by the real values."""
        if not self._real:
            return text
        if self._placeholders is None:
            ordered = sorted(self._real, key=len, reverse=True)
            self._placeholders = re.compile(rf"\b(?:{'|'.join(map(re.escape, ordered))})\b", re.IGNORECASE)
        return self._placeholders.sub(lambda match: self._real[match.group().upper()], text)
