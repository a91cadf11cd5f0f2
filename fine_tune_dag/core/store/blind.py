"""The blind test: shown the author's passage and the model's writing on the same prompt, which did the author write?

A person who picks the model's text about as often as the author's (a share near 0.5) cannot tell them apart;
near 0 they always can. That share only measures voice if nothing else tells the two apart, so each pair is made
comparable before it is saved (`matched_pair`: no headings or list markers, one paragraph each, the same number
of words) and which side the author's text is shown on is drawn once per trial and stored with it.

The page never learns which text is whose: each text travels with an opaque side id (a hash of the trial and its
role, hidden from the page rather than secret from someone reading this code), and `shown_left` is stored as the
role, so every pick can be checked against what was on screen. One label per trial and person: a second pick
replaces the first, so a changed mind does not count twice.

Trials saved before pairs were matched have no note and no stored side: they are shown as saved, on the side
their id draws with seed 0, and each counts as a note of its own.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

import pandas as pd

from fine_tune_dag.core.common.markdown import prose_words
from fine_tune_dag.core.common.statistics import Interval, clustered_mean
from fine_tune_dag.core.store.warehouse import Warehouse

AUTHOR, MODEL = "author", "model"
OTHER = {AUTHOR: MODEL, MODEL: AUTHOR}
SIDES = ("left", "right")  # what a person can answer on the page, and where the author's text can be shown

NO_READINGS = "no readings yet — run `fine-tune-dag annotate --blind` to see if readers can tell yours from the model's"

# The adapter version whose trials were saved last: the one people are asked about.
_NEWEST_VERSION = "(SELECT adapter_version FROM blind_trials ORDER BY created_at DESC, adapter_version DESC LIMIT 1)"


@dataclass(frozen=True)
class BlindTrial:
    """One held-out passage of a note, the prompt it answers, and what the model wrote on that prompt."""

    note_id: str
    prompt: str
    author_text: str
    model_text: str


@dataclass(frozen=True)
class SavedTrials:
    """What `save_blind_trials` did: trials new to the warehouse, and trials left out because one text had no
    words once matched (a model that wrote nothing cannot be mistaken for anyone)."""

    new: int
    left_out: int


@dataclass(frozen=True)
class BlindReading:
    """The picks on one adapter version's trials, all people together, and how many trials they were made on:
    `share` is the share that took the model's text for the author's, its interval resampling notes."""

    picks: int
    trials: int
    share: Interval

    @property
    def text(self) -> str:
        """The report's sentence on the blind test."""
        if not self.picks:
            return NO_READINGS
        return (
            f"readers took the model's text for yours in {self.share} of {_count(self.picks, 'pick')} over "
            f"{_count(self.trials, 'trial')} from {_count(self.share.notes, 'note')}; 0.5 means they cannot tell"
        )


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'s' * (number != 1)}"


def matched_pair(author_text: str, model_text: str) -> tuple[str, str]:
    """The two texts as a reader should compare them: markup stripped, each one paragraph (the author's
    paragraphing is not the model's, and a cut leaves it meaningless), both cut to the shorter's word count, so
    neither length nor layout gives the author away. Empty texts when either has no words."""
    author, model = prose_words(author_text), prose_words(model_text)
    words = min(len(author), len(model))
    return " ".join(author[:words]), " ".join(model[:words])


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()[:16]


def blind_trial_id(adapter_version: str, trial: BlindTrial) -> str:
    """Named by the trial as given (before matching), so saving the same trials again adds nothing."""
    return _digest(adapter_version, trial.note_id, trial.prompt, trial.author_text, trial.model_text)


def side_id(trial_id: str, role: str) -> str:
    """Names one text of a trial for the page without saying whose it is."""
    return _digest(trial_id, role)


def drawn_author_side(trial_id: str, seed: int = 0) -> str:
    """Where the author's text is shown, drawn from a generator of this trial alone: the same trial and seed
    always give the same side, whatever else is saved with it."""
    return random.Random(f"{seed}\x1f{trial_id}").choice(SIDES)


def save_blind_trials(db: Warehouse, adapter_version: str, trials: Sequence[BlindTrial], seed: int = 0) -> SavedTrials:
    """Save one adapter version's trials (one per held-out passage), each pair matched and its author side drawn.

    Trials already saved keep their row, side and creation time, so labels made on them stay attached."""
    created_at = datetime.now(timezone.utc).replace(tzinfo=None)
    rows: dict[str, dict[str, object]] = {}
    left_out = 0
    for trial in trials:
        author_text, model_text = matched_pair(trial.author_text, trial.model_text)
        if not model_text:
            left_out += 1
            continue
        trial_id = blind_trial_id(adapter_version, trial)
        rows[trial_id] = {
            "trial_id": trial_id,
            "adapter_version": adapter_version,
            "note_id": trial.note_id,
            "prompt": trial.prompt,
            "author_text": author_text,
            "model_text": model_text,
            "author_side": drawn_author_side(trial_id, seed),
            "created_at": created_at,
        }
    saved = set(db.query("SELECT trial_id FROM blind_trials WHERE adapter_version = ?", [adapter_version])["trial_id"])
    new = [row for trial_id, row in rows.items() if trial_id not in saved]
    db.insert_rows("blind_trials", pd.DataFrame(new))
    return SavedTrials(new=len(new), left_out=left_out)


def next_blind_trial(db: Warehouse, labeler: str) -> dict[str, str] | None:
    """The first trial of the newest adapter version this person has not answered, its texts on the sides stored
    with it; None when done. Only the opaque `shown_left` says which text is on the left."""
    rows = db.query(
        "SELECT trial_id, prompt, author_text, model_text, author_side FROM blind_trials t "
        f"WHERE adapter_version = {_NEWEST_VERSION} AND NOT EXISTS "
        "(SELECT 1 FROM blind_labels l WHERE l.trial_id = t.trial_id AND l.labeler = ?) "
        "ORDER BY created_at, trial_id LIMIT 1",
        [labeler],
    )
    if rows.empty:
        return None
    row = rows.iloc[0]
    author_side = drawn_author_side(row.trial_id) if pd.isna(row.author_side) else row.author_side
    shown_left = AUTHOR if author_side == "left" else MODEL
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


def blind_results(db: Warehouse, adapter_version: str | None = None, seed: int = 0) -> BlindReading:
    """The picks on one adapter version's trials (the newest when None): a note's passages share its subject and
    day, so the share's interval resamples notes, not picks."""
    version, params = (_NEWEST_VERSION, []) if adapter_version is None else ("?", [adapter_version])
    picks = db.query(
        "SELECT l.picked, l.trial_id, coalesce(t.note_id, t.trial_id) AS note FROM blind_labels l "
        f"JOIN blind_trials t USING (trial_id) WHERE t.adapter_version = {version} ORDER BY l.trial_id, l.labeler",
        params,
    )
    share = clustered_mean([float(p == MODEL) for p in picks["picked"]], picks["note"].tolist(), seed=seed)
    return BlindReading(picks=len(picks), trials=int(picks["trial_id"].nunique()), share=share)
