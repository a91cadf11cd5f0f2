"""The LLM quota's slots in the warehouse (`llm_quota_slots`): each quota's lock row and its window's slots.

core/llm/quota.py decides; these statements run inside the one transaction it opens per acquisition.
"""

from __future__ import annotations

import duckdb

from fine_tune_dag.core.store.warehouse import Warehouse

TABLE = "llm_quota_slots"
LOCK_ROW = ""  # the slot_id of each quota's lock row

StoredRow = tuple[str, float, int, bool, float]  # slot_id, sent_at, tokens, settled, deadline


def lock_quota(con: duckdb.DuckDBPyConnection, key: str, now: float) -> None:
    """Hold the quota's lock row until the transaction ends: a concurrent acquirer waits, then fails and retries."""
    (touched,) = con.execute(
        f"UPDATE {TABLE} SET sent_at = ? WHERE quota = ? AND slot_id = ?", [now, key, LOCK_ROW]
    ).fetchone()
    if not touched:  # the quota's first use: a racing creator fails on the key and retries
        con.execute(f"INSERT INTO {TABLE} (quota, slot_id, sent_at) VALUES (?, ?, ?)", [key, LOCK_ROW, now])


def quota_slots(con: duckdb.DuckDBPyConnection, key: str) -> list[StoredRow]:
    return con.execute(
        f"SELECT slot_id, sent_at, tokens, settled, deadline FROM {TABLE} WHERE quota = ? AND slot_id <> ?",
        [key, LOCK_ROW],
    ).fetchall()


def delete_quota_slots(con: duckdb.DuckDBPyConnection, key: str, slot_ids: set[str]) -> None:
    marks = ", ".join("?" * len(slot_ids))
    con.execute(f"DELETE FROM {TABLE} WHERE quota = ? AND slot_id IN ({marks})", [key, *slot_ids])


def insert_quota_slot(
    con: duckdb.DuckDBPyConnection, key: str, slot_id: str, sent_at: float, deadline: float, tokens: int
) -> None:
    con.execute(
        f"INSERT INTO {TABLE} (quota, slot_id, sent_at, deadline, tokens, settled) VALUES (?, ?, ?, ?, ?, FALSE)",
        [key, slot_id, sent_at, deadline, tokens],
    )


def settle_quota_slot(warehouse: Warehouse, key: str, slot_id: str, sent_at: float) -> None:
    """Its row may be gone already: then it has left the window."""
    warehouse.execute(
        f"UPDATE {TABLE} SET sent_at = ?, settled = TRUE WHERE quota = ? AND slot_id = ?", [sent_at, key, slot_id]
    )
