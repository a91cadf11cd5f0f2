"""Teacher → student: training pairs from the teacher model's logged answers, or from prompts a
user supplies (or the teacher invents) answered by the teacher.

A pair is (system, question, answer) like a note's pair, so the same splits, chat template and
trainer make the student. Bad input files fail with the file, line and reason.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

PAIR_COLUMNS = ["pair_id", "source", "template", "system", "question", "answer"]
_LIST_MARKER = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s*")


class PromptFileError(ValueError):
    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


@dataclass(frozen=True)
class PromptRow:
    prompt: str
    completion: str = ""  # given by the user: used as is, no teacher call


def teacher_pair_id(source: str, system: str, question: str) -> str:
    return hashlib.sha256(f"{source}\x1f{system}\x1f{question}".encode()).hexdigest()[:16]


def pairs_from_request_log(requests: pd.DataFrame) -> pd.DataFrame:
    """One pair per distinct answered prompt: its system message, its last user turn and the answer.

    Few-shot turns are left out: the student learns the task itself, not the examples that taught
    the teacher. `requests` rows carry `template`, `messages` (JSON list of [role, content]) and `response`.
    """
    rows = []
    for request in requests.itertuples(index=False):
        messages = json.loads(request.messages or "[]")
        system = next((content for role, content in messages if role == "system"), "")
        question = next((content for role, content in reversed(messages) if role == "user"), "")
        if question.strip() and str(request.response).strip():
            pair_id = teacher_pair_id("request_log", system, question)
            rows.append([pair_id, "request_log", request.template, system, question, request.response.strip()])
    return pd.DataFrame(rows, columns=PAIR_COLUMNS).drop_duplicates("pair_id").reset_index(drop=True)


def read_prompt_file(path: Path) -> list[PromptRow]:
    """A CSV with a `prompt` column (and optionally `completion`), or JSONL of {"prompt", "completion"?}."""
    if not path.is_file():
        raise PromptFileError(path, "no such file")
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        if "prompt" not in (reader.fieldnames or []):
            raise PromptFileError(path, f"no 'prompt' column (columns: {reader.fieldnames})")
        records = [(number, row) for number, row in enumerate(reader, start=2)]
    elif path.suffix.lower() in (".jsonl", ".ndjson"):
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise PromptFileError(path, f"line {number} is not JSON ({error.msg})") from error
            if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
                raise PromptFileError(path, f'line {number} has no string "prompt"')
            records.append((number, record))
    else:
        raise PromptFileError(path, "expected a .csv or .jsonl file")
    rows = []
    for number, record in records:
        prompt = (record.get("prompt") or "").strip()
        if not prompt:
            raise PromptFileError(path, f"line {number} has an empty prompt")
        rows.append(PromptRow(prompt, (record.get("completion") or "").strip()))
    return rows


def parse_generated_inputs(output: str, count: int) -> list[str]:
    """The teacher's list of invented inputs: one per line, list markers stripped, duplicates dropped."""
    seen: dict[str, None] = {}
    for line in output.splitlines():
        item = _LIST_MARKER.sub("", line).strip().strip('"')
        if len(item.split()) >= 2 and item.lower() not in {s.lower() for s in seen}:
            seen[item] = None
    return list(seen)[:count]
