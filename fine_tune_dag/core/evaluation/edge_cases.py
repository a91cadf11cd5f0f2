"""Edge cases: the questions a model is most likely to get wrong, kept and re-asked of every adapter.

Two kinds: the held-out items the base model found hardest (highest answer NLL per token), and a
user's own cases (`edge_cases.jsonl` in the data folder: {"question": ..., "reference": ...}).
Once chosen a case stays, so each new adapter version is compared on the same cases as the old ones.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from fine_tune_dag.core.common.markdown import table


@dataclass(frozen=True)
class EdgeCase:
    case_id: str
    question: str
    reference: str
    origin: str  # "hardest for the base model" or "user file"


def case_id(question: str) -> str:
    return hashlib.sha256(" ".join(question.split()).lower().encode()).hexdigest()[:12]


def hardest_for_base(items: pd.DataFrame, count: int) -> list[EdgeCase]:
    """The `count` items with the highest base-model NLL per answer token (`question`, `answer`, `nll_per_token`)."""
    worst = items.sort_values(["nll_per_token", "question"], ascending=[False, True]).head(count)
    return [
        EdgeCase(case_id(r.question), r.question, r.answer, "hardest for the base model") for r in worst.itertuples()
    ]


def read_user_cases(path: Path) -> tuple[list[EdgeCase], list[str]]:
    """The user's cases and, separately, a reason for every line that could not be used (never fatal:
    a typo in one case must not stop evaluation)."""
    if not path.exists():
        return [], []
    cases, problems = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            problems.append(f"{path.name} line {number}: not JSON ({error.msg})")
            continue
        question = record.get("question") if isinstance(record, dict) else None
        if not isinstance(question, str) or not question.strip():
            problems.append(f'{path.name} line {number}: no "question" text')
            continue
        reference = record.get("reference", "")
        cases.append(EdgeCase(case_id(question), question.strip(), str(reference or "").strip(), "user file"))
    return cases, problems


def side_by_side(cases: pd.DataFrame, answers: pd.DataFrame, versions: list[str], limit: int = 160) -> str:
    """One row per case: question, reference, then each model's answer, oldest version first."""
    by_case = {(r.case_id, r.model): r.answer for r in answers.itertuples(index=False)}
    rows = [
        [r.question, r.reference or "—", *(by_case.get((r.case_id, v), "") for v in versions)]
        for r in cases.itertuples(index=False)
    ]
    return table(rows, ["question", "reference", *versions], limit=limit)
