"""What the scan found, shown without opening the data: the `fine-tune-dag privacy` listing, the report's line,
and whether an adapter may be published.

Redaction guards only what leaves for a remote teacher. The training data keeps the real words (the teacher's
answers are mapped back, passages are verbatim), so an adapter trained on notes with personal data may reproduce
it, whatever policy the teacher met: `push` refuses such an adapter unless told otherwise.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd

from fine_tune_dag.core.privacy.egress import kinds_text
from fine_tune_dag.core.privacy.scan import Scanner, count_kinds
from fine_tune_dag.core.store.privacy import dataset_findings, note_texts, read_findings
from fine_tune_dag.core.store.warehouse import Warehouse

PUSH_FLAG = "--allow-personal-data"
MODEL_CARD_NOTICE = (
    "This adapter was trained on personal writing: one person's own notes, which may name people and places "
    "and hold other personal details. It may reproduce them. Publish and share it only with that person's consent."
)


def _kinds(value: object) -> dict[str, int]:
    return json.loads(value) if isinstance(value, str) and value else {}


def findings_listing(db: Warehouse, everything: bool = False) -> str:
    """Notes with findings (every scanned note with `everything`): counts by kind and the policy each met."""
    rows = read_findings(db, only_found=not everything)
    scanned = read_findings(db)
    if scanned.empty:
        return "no note scanned yet: materialize passages (fine-tune-dag demo, or the notes job in the UI)"
    lines = [
        f"{row.path}: {kinds_text(_kinds(row.kinds))}  [{row.provider}: {row.policy}]" for row in rows.itertuples()
    ]
    found = int((scanned["findings"] > 0).sum())
    names = "; ".join(sorted(set(scanned["names"])))
    lines.append(f"{found} of {len(scanned)} scanned notes hold personal data; {names}")
    return "\n".join(lines)


def report_line(db: Warehouse, dataset_version: str) -> str:
    """The report's line: what was scanned, what was found, what the teacher was sent, and how names are found."""
    rows = dataset_findings(db, dataset_version)
    if rows.empty:
        return "not recorded for this dataset"
    scanned = rows[rows["findings"].notna()]
    if scanned.empty:
        return f"none of the {len(rows)} notes was scanned (they were chunked before the privacy scan existed)"
    total: Counter[str] = Counter()
    for kinds in scanned["kinds"]:
        total.update(_kinds(kinds))
    found = int((scanned["findings"] > 0).sum())
    policies = "; ".join(sorted({f"{r.provider}: {r.policy}" for r in scanned.itertuples()}))
    names = "; ".join(sorted(set(scanned["names"])))
    return (
        f"{len(scanned)} of {len(rows)} notes scanned, {found} with personal data ({kinds_text(dict(total.most_common()))}); "
        f"teacher: {policies}; {names}. The training data keeps the real words"
    )


@dataclass
class PublishCheck:
    """The training notes that hold personal data (path → counts by kind), and those that could not be checked."""

    found: dict[str, dict[str, int]] = field(default_factory=dict)
    unchecked: list[str] = field(default_factory=list)
    known: bool = True  # whether the adapter's training notes are known at all

    def refusal(self, adapter: str) -> str | None:
        """Why `push` refuses, or None when the training notes hold no personal data."""
        if not self.known:
            return (
                f"cannot tell which notes {adapter} was trained on (no dataset version in the registry or its "
                f"training_config.json), so not whether it learned personal data; pass {PUSH_FLAG} to push anyway"
            )
        if not self.found and not self.unchecked:
            return None
        parts = []
        if self.found:
            listed = ", ".join(f"{path} ({kinds_text(kinds)})" for path, kinds in list(self.found.items())[:5])
            more = f" and {len(self.found) - 5} more" if len(self.found) > 5 else ""
            parts.append(f"{len(self.found)} of its training notes hold personal data: {listed}{more}")
        if self.unchecked:
            parts.append(f"{len(self.unchecked)} training notes could not be checked (no scan, no text)")
        return (
            f"{adapter} was trained on personal data, as written ({'; '.join(parts)}). Only what went to a remote "
            f"teacher was redacted; the weights may reproduce the rest. Pass {PUSH_FLAG} to push anyway (see "
            "`fine-tune-dag privacy`)"
        )


def check_training_notes(db: Warehouse, dataset_version: str, scanner: Callable[[], Scanner]) -> PublishCheck:
    """Personal data in the train split of `dataset_version`: the stored scan where it saw the trained version of
    a note, else a scan of the note's text on the spot (`scanner` is built only then)."""
    if not dataset_version:
        return PublishCheck(known=False)
    rows = dataset_findings(db, dataset_version, split="train")
    if rows.empty:
        return PublishCheck(known=False)
    check = PublishCheck()
    stale = rows[rows["findings"].isna() | (rows["scanned_sha256"] != rows["sha256"])]
    texts = note_texts(db, stale["note_id"].tolist()).set_index("note_id") if len(stale) else pd.DataFrame()
    for row in rows.itertuples():
        if row.note_id in stale["note_id"].values:
            if row.note_id not in texts.index:
                check.unchecked.append(row.path)
                continue
            kinds = count_kinds(scanner().scan(texts.loc[row.note_id, "text"]))
        else:
            kinds = _kinds(row.kinds)
        if kinds:
            check.found[row.path] = kinds
    return check
