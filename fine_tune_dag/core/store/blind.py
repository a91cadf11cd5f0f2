"""The blind test: shown the author's passage and the model's writing on the same prompt, which did the author write?

A person who picks the model's text about as often as the author's (a share near 0.5) cannot tell them apart;
near 0 they always can. The page never learns which text is whose: each text travels with an opaque side id
(a hash of the trial and its role, hidden from the page rather than secret from someone reading this code),
and `shown_left` is stored as the role, so every pick can be checked against what was on screen.
One label per trial and person: a second pick replaces the first, so a changed mind does not count twice.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from datetime import datetime, timezone

import pandas as pd

from fine_tune_dag.core.modeling.statistics import Interval, clustered_mean
from fine_tune_dag.core.store.warehouse import Warehouse

AUTHOR, MODEL = "author", "model"
OTHER = {AUTHOR: MODEL, MODEL: AUTHOR}
SIDES = ("left", "right")  # what a person can answer on the page

# The adapter version whose trials were saved last: the one people are asked about.
_NEWEST_VERSION = "(SELECT adapter_version FROM blind_trials ORDER BY created_at DESC, adapter_version DESC LIMIT 1)"


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()[:16]


def blind_trial_id(adapter_version: str, prompt: str, author_text: str, model_text: str) -> str:
    """Named by its content, so saving the same trials again adds nothing."""
    return _digest(adapter_version, prompt, author_text, model_text)


def side_id(trial_id: str, role: str) -> str:
    """Names one text of a trial for the page without saying whose it is."""
    return _digest(trial_id, role)


def save_blind_trials(db: Warehouse, adapter_version: str, trials: Sequence[tuple[str, str, str]]) -> int:
    """Save (prompt, author_text, model_text) trials of one adapter version; returns how many were new.

    Trials already saved keep their row and creation time, so labels made on them stay attached."""
    created_at = datetime.now(timezone.utc).replace(tzinfo=None)
    rows = {
        blind_trial_id(adapter_version, prompt, author_text, model_text): {
            "adapter_version": adapter_version,
            "prompt": prompt,
            "author_text": author_text,
            "model_text": model_text,
            "created_at": created_at,
        }
        for prompt, author_text, model_text in trials
    }
    saved = set(db.query("SELECT trial_id FROM blind_trials WHERE adapter_version = ?", [adapter_version])["trial_id"])
    new = [{"trial_id": trial_id, **row} for trial_id, row in rows.items() if trial_id not in saved]
    db.insert_rows("blind_trials", pd.DataFrame(new))
    return len(new)


def next_blind_trial(db: Warehouse, labeler: str, rng: random.Random) -> dict[str, str] | None:
    """The first trial of the newest adapter version this person has not answered, its two texts in a random
    order; None when done. Only the opaque `shown_left` says which text is on the left."""
    rows = db.query(
        "SELECT trial_id, prompt, author_text, model_text FROM blind_trials t "
        f"WHERE adapter_version = {_NEWEST_VERSION} AND NOT EXISTS "
        "(SELECT 1 FROM blind_labels l WHERE l.trial_id = t.trial_id AND l.labeler = ?) "
        "ORDER BY created_at, trial_id LIMIT 1",
        [labeler],
    )
    if rows.empty:
        return None
    row = rows.iloc[0]
    shown_left = rng.choice((AUTHOR, MODEL))
    left, right = (row.author_text, row.model_text) if shown_left == AUTHOR else (row.model_text, row.author_text)
    return {
        "trial_id": row.trial_id,
        "prompt": row.prompt,
        "left": left,
        "right": right,
        "shown_left": side_id(row.trial_id, shown_left),
    }


def record_blind_pick(db: Warehouse, trial_id: str, labeler: str, chosen_side: str, shown_left: str) -> str:
    """Save which side a person believed the author wrote; `shown_left` is the side id `next_blind_trial` gave.
    Returns whose text was picked: author or model."""
    if chosen_side not in SIDES:
        raise ValueError(f"side must be one of {', '.join(SIDES)}, not {chosen_side!r}")
    if not labeler.strip():
        raise ValueError("a pick needs the name of who made it")
    if db.query("SELECT 1 FROM blind_trials WHERE trial_id = ?", [trial_id]).empty:
        raise KeyError(f"no blind trial {trial_id!r}")
    roles = {side_id(trial_id, role): role for role in OTHER}
    if shown_left not in roles:
        raise ValueError(f"shown_left {shown_left!r} names neither text of trial {trial_id!r}")
    left = roles[shown_left]
    picked = left if chosen_side == "left" else OTHER[left]
    row = {
        "label_id": _digest(trial_id, labeler),  # one per trial and person: a second pick replaces the first
        "trial_id": trial_id,
        "labeler": labeler,
        "picked": picked,
        "shown_left": left,
        "labeled_at": datetime.now(timezone.utc).replace(tzinfo=None),
    }
    db.insert_rows("blind_labels", pd.DataFrame([row]))
    return picked


def blind_progress(db: Warehouse, labeler: str) -> tuple[int, int]:
    """Trials of the newest adapter version this person has answered, and its trials in all."""
    counts = db.query(
        "SELECT (SELECT count(*) FROM blind_labels l JOIN blind_trials t USING (trial_id) "
        f"WHERE l.labeler = ? AND t.adapter_version = {_NEWEST_VERSION}) AS done, "
        f"(SELECT count(*) FROM blind_trials WHERE adapter_version = {_NEWEST_VERSION}) AS total",
        [labeler],
    )
    return int(counts["done"].iloc[0]), int(counts["total"].iloc[0])


def blind_results(db: Warehouse, adapter_version: str | None = None) -> tuple[int, Interval]:
    """Picks on one adapter version's trials (the newest when None), all people together, and the share that
    took the model's text for the author's, with a bootstrap interval: 0.5 means people cannot tell."""
    version, params = (_NEWEST_VERSION, []) if adapter_version is None else ("?", [adapter_version])
    picks = db.query(
        "SELECT l.picked, l.trial_id FROM blind_labels l JOIN blind_trials t USING (trial_id) "
        f"WHERE t.adapter_version = {version} ORDER BY l.trial_id, l.labeler",
        params,
    )
    return len(picks), clustered_mean([float(p == MODEL) for p in picks["picked"]], picks["trial_id"].tolist())
