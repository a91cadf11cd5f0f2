"""The adapter registry in the warehouse: versions, their evaluations and the champion pointer.

The champion is the newest row of `champion_history` (an empty version there: the base model serves, after
`forget` retired the champion and no other adapter was left); adapters are never deleted, so every version
stays traceable to its dataset, hyperparameters and metrics.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pandas as pd

from fine_tune_dag.core.store.warehouse import Warehouse

METRIC_COLUMNS = ("nll", "perplexity", "rouge_l", "token_f1")


# Sweep adapters compete on the sweep leaderboard; the main line (training, evaluation, champion) skips them.
MAIN_LINE = "coalesce(sweep_configuration, '') = ''"
# Adapters trained on a forgotten note (`adapter_marks`): kept for lineage, never served or promoted again.
NOT_MARKED = "version NOT IN (SELECT version FROM adapter_marks)"
BASE_MODEL_SERVES = ""  # the champion_history version that leaves no champion


def latest_adapter(db: Warehouse) -> pd.Series | None:
    rows = db.query(f"SELECT * FROM adapters WHERE {MAIN_LINE} ORDER BY created_at DESC, version DESC LIMIT 1")
    return None if rows.empty else rows.iloc[0]


def main_line_versions(db: Warehouse) -> pd.DataFrame:
    """Every main-line adapter's version and folder that may be served (none trained on a forgotten note),
    oldest first."""
    return db.query(
        f"SELECT version, path FROM adapters WHERE {MAIN_LINE} AND {NOT_MARKED} ORDER BY created_at, version"
    )


def current_champion(db: Warehouse) -> pd.Series | None:
    """The adapter of the newest champion_history row; None before any promotion and when that row says the base
    model serves."""
    rows = db.query(
        "SELECT a.*, h.promoted_at FROM (SELECT * FROM champion_history ORDER BY promoted_at DESC LIMIT 1) h "
        "JOIN adapters a ON a.version = h.version"
    )
    return None if rows.empty else rows.iloc[0]


def best_unmarked_adapter(db: Warehouse) -> pd.Series | None:
    """The main-line adapter with the lowest answer NLL its evaluation stored, among those not trained on a
    forgotten note; None when none is left."""
    rows = db.query(
        f"SELECT * FROM adapters WHERE {MAIN_LINE} AND {NOT_MARKED} AND test_nll IS NOT NULL "
        "ORDER BY test_nll, created_at DESC LIMIT 1"
    )
    return None if rows.empty else rows.iloc[0]


def latest_evaluation(db: Warehouse) -> pd.Series | None:
    rows = db.query(
        "SELECT e.* FROM evaluations e JOIN adapters a ON a.version = e.adapter_version "
        f"WHERE {MAIN_LINE} ORDER BY e.created_at DESC LIMIT 1"
    )
    return None if rows.empty else rows.iloc[0]


def evaluation_summary(db: Warehouse, adapter_version: str) -> dict[str, dict[str, float]]:
    """Contender → metric → value for the evaluation of one adapter, in evaluation order."""
    rows = db.query(
        "SELECT contender, metric, value FROM evaluation_metrics WHERE adapter_version = ? ORDER BY position",
        [adapter_version],
    )
    summary: dict[str, dict[str, float]] = {}
    for row in rows.itertuples(index=False):
        summary.setdefault(row.contender, {})[row.metric] = float(row.value)
    return summary


def record_evaluation(
    db: Warehouse,
    evaluation: dict,
    summary: dict[str, dict[str, float]],
    contender_versions: dict[str, str],
) -> None:
    """The evaluation, its metrics in long form, and the new adapter's own test metrics on its registry row."""
    version = evaluation["adapter_version"]
    metrics = pd.DataFrame(
        [
            {
                "adapter_version": version,
                "contender": contender,
                "contender_version": contender_versions.get(contender, ""),
                "metric": metric,
                "value": value,
                "position": position,
            }
            for position, (contender, metric, value) in enumerate(
                (contender, metric, value) for contender, values in summary.items() for metric, value in values.items()
            )
        ]
    )
    db.insert_rows("evaluations", pd.DataFrame([evaluation]))
    db.replace_rows("evaluation_metrics", metrics, {"adapter_version": version})
    tuned = summary["tuned"]
    db.execute(
        "UPDATE adapters SET " + ", ".join(f"test_{m} = ?" for m in METRIC_COLUMNS) + " WHERE version = ?",
        [tuned[m] for m in METRIC_COLUMNS] + [version],
    )


def record_adapter(db: Warehouse, row: dict[str, Any]) -> None:
    """A newly saved adapter version's registry row; versions are never overwritten, so each is new."""
    db.insert_rows("adapters", pd.DataFrame([row]))


def record_sweep_result(db: Warehouse, row: dict[str, Any]) -> None:
    """One sweep configuration's adapter, its test figures and what its training cost."""
    db.insert_rows("sweep_results", pd.DataFrame([row]))


def adapter_by_version(db: Warehouse, version: str) -> pd.Series:
    rows = db.query("SELECT * FROM adapters WHERE version = ?", [version])
    if rows.empty:
        raise KeyError(f"no adapter version {version} in the registry")
    return rows.iloc[0]


def resolve_adapter(db: Warehouse, reference: str) -> pd.Series:
    """An adapter row by "champion", "latest", or a version; a clear error when there is none."""
    if reference == "champion":
        found = current_champion(db)
    elif reference == "latest":
        found = latest_adapter(db)
    else:
        return adapter_by_version(db, reference)
    if found is None:
        raise KeyError(f"no {reference} adapter yet: train one first (make demo, or lora_adapter in the UI)")
    return found


def _champion_row(db: Warehouse, version: str, previous: pd.Series | None, **values: object) -> None:
    row = {
        "promoted_at": datetime.now(timezone.utc).replace(tzinfo=None),
        "version": version,
        "previous_version": None if previous is None else previous.version,
        **values,
    }
    db.insert_rows("champion_history", pd.DataFrame([row]))


def promote(
    db: Warehouse,
    version: str,
    test_nll: float,
    previous: pd.Series | None,
    previous_nll: float | None,
    reason: str,
    run_id: str,
) -> None:
    """A new champion row; `previous_nll` is the old champion's NLL on the same test items, when it was evaluated."""
    adapter = adapter_by_version(db, version)
    _champion_row(
        db,
        version,
        previous,
        dataset_version=adapter.dataset_version,
        test_nll=test_nll,
        previous_nll=previous_nll,
        reason=reason,
        run_id=run_id,
    )


def clear_champion(db: Warehouse, previous: pd.Series, reason: str, run_id: str) -> None:
    """No champion any more: the base model serves until an adapter passes the gate."""
    _champion_row(db, BASE_MODEL_SERVES, previous, reason=reason, run_id=run_id)


def lineage_text(db: Warehouse, limit: int = 10) -> str:
    """Newest adapters first: the notes and dataset version behind each, its report and whether it leads."""
    adapters = db.query("SELECT * FROM adapters ORDER BY created_at DESC, version DESC LIMIT ?", [limit])
    if adapters.empty:
        return "no adapter trained yet"
    champion = current_champion(db)
    evaluations = db.query("SELECT * FROM evaluations").set_index("adapter_version")
    promoted = db.query("SELECT version, min(promoted_at) AS at FROM champion_history GROUP BY version")
    promoted_at = dict(zip(promoted["version"], promoted["at"]))
    lines = []
    for adapter in adapters.itertuples(index=False):
        mark = "  ★ champion" if champion is not None and champion.version == adapter.version else ""
        lines.append(f"adapter {adapter.version}{mark}")
        lines.append(
            f"  trained {adapter.created_at:%Y-%m-%d %H:%M} on {adapter.device}: {adapter.train_examples} examples, "
            f"base model {adapter.base_model}"
        )
        notes = db.query(
            "SELECT * FROM dataset_notes WHERE dataset_version = ? ORDER BY split DESC, path",
            [adapter.dataset_version],
        )
        lines.append(f"  dataset {adapter.dataset_version}: {_sides(notes)}")
        for note in notes.itertuples(index=False):
            lines.append(f"    {note.split:<5} {note.path}  ({note.pairs} pairs, sha256 {str(note.sha256)[:10]})")
        if adapter.version in evaluations.index:
            evaluation = evaluations.loc[adapter.version]
            summary = evaluation_summary(db, adapter.version)
            scores = ", ".join(f"{name} {values['nll']:.3f}" for name, values in summary.items())
            lines.append(f"  report {evaluation.report_path}")
            lines.append(f"    answer NLL on {evaluation.test_examples} test items: {scores}")
        else:
            lines.append("  not evaluated yet")
        if adapter.version in promoted_at:
            lines.append(f"  promoted to champion {promoted_at[adapter.version]:%Y-%m-%d %H:%M}")
        lines.append("")
    return "\n".join(lines).rstrip()


def _sides(notes: pd.DataFrame) -> str:
    if notes.empty:
        return "no note lineage recorded"
    parts = []
    for side in ("train", "test"):
        chosen = notes[notes["split"] == side]
        parts.append(f"{int(chosen['pairs'].sum())} {side} pairs from {len(chosen)} notes")
    return ", ".join(parts)


def newest_sweep_results(db: Warehouse) -> pd.DataFrame:
    """The sweep results of the newest dataset version a sweep ran on."""
    return db.query(
        "SELECT * FROM sweep_results WHERE dataset_version = "
        "(SELECT dataset_version FROM sweep_results ORDER BY created_at DESC LIMIT 1)"
    )
