"""The LLM quota's slots: each quota's lock row and its window's slots, in one transaction per acquisition.

Where they live follows the warehouse. On PostgreSQL, its `llm_quota_slots` table: every machine sees it.
Beside a DuckDB file, a SQLite file (`<warehouse>.quota.sqlite`): a DuckDB file admits one process at a time
and checkpoints as the last connection closes, which at 8 concurrent note runs quadrupled a run's CPU
(bench/scale.py), while SQLite takes a short write lock per transaction from any number of processes.
core/llm/quota.py decides; these statements carry it out.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import duckdb

from fine_tune_dag.core.store.warehouse import Warehouse

TABLE = "llm_quota_slots"
LOCK_ROW = ""  # the slot_id of each quota's lock row
SQLITE_SCHEMA = f"""CREATE TABLE IF NOT EXISTS {TABLE} (
    quota TEXT, slot_id TEXT, sent_at REAL, deadline REAL, tokens INTEGER, settled INTEGER,
    PRIMARY KEY (quota, slot_id))"""

StoredRow = tuple[str, float, int, bool, float]  # slot_id, sent_at, tokens, settled, deadline


class QuotaSlots:
    """One warehouse's quota slots; `transaction()` yields a connection for the functions below."""

    def __init__(self, warehouse: Warehouse) -> None:
        self.warehouse = warehouse
        self.sqlite: Path | None = (
            None if warehouse.url else warehouse.path.with_name(f"{warehouse.path.name}.quota.sqlite")
        )

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """A write transaction that no other acquirer of these slots can interleave with."""
        if self.sqlite is None:
            with self.warehouse.connect() as con:
                con.execute("BEGIN TRANSACTION")
                try:
                    yield con
                    con.execute("COMMIT")
                except duckdb.Error:
                    with suppress(duckdb.TransactionException):  # a failed COMMIT has already ended it
                        con.execute("ROLLBACK")
                    raise
            return
        self.sqlite.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.sqlite, timeout=120, isolation_level=None)
        try:
            con.execute("PRAGMA journal_mode=WAL")
            con.execute(SQLITE_SCHEMA)
            con.execute("BEGIN IMMEDIATE")  # the write lock now: acquirers take turns
            try:
                yield con
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        finally:
            con.close()


def lock_quota(con: Any, key: str, now: float) -> None:
    """Hold the quota's lock row until the transaction ends: on PostgreSQL a concurrent acquirer waits, then fails
    and retries (SQLite's write lock already keeps it out)."""
    cursor = con.execute(f"UPDATE {TABLE} SET sent_at = ? WHERE quota = ? AND slot_id = ?", [now, key, LOCK_ROW])
    touched = cursor.rowcount if isinstance(con, sqlite3.Connection) else cursor.fetchone()[0]
    if not touched:  # the quota's first use: a racing creator fails on the key and retries
        con.execute(f"INSERT INTO {TABLE} (quota, slot_id, sent_at) VALUES (?, ?, ?)", [key, LOCK_ROW, now])


def quota_slots(con: Any, key: str) -> list[StoredRow]:
    rows = con.execute(
        f"SELECT slot_id, sent_at, tokens, settled, deadline FROM {TABLE} WHERE quota = ? AND slot_id <> ?",
        [key, LOCK_ROW],
    ).fetchall()
    return [(slot_id, sent_at, tokens, bool(settled), deadline) for slot_id, sent_at, tokens, settled, deadline in rows]


def delete_quota_slots(con: Any, key: str, slot_ids: set[str]) -> None:
    marks = ", ".join("?" * len(slot_ids))
    con.execute(f"DELETE FROM {TABLE} WHERE quota = ? AND slot_id IN ({marks})", [key, *slot_ids])


def insert_quota_slot(con: Any, key: str, slot_id: str, sent_at: float, deadline: float, tokens: int) -> None:
    con.execute(
        f"INSERT INTO {TABLE} (quota, slot_id, sent_at, deadline, tokens, settled) VALUES (?, ?, ?, ?, ?, FALSE)",
        [key, slot_id, sent_at, deadline, tokens],
    )


def settle_quota_slot(con: Any, key: str, slot_id: str, sent_at: float) -> None:
    """Its row may be gone already: then it has left the window."""
    con.execute(
        f"UPDATE {TABLE} SET sent_at = ?, settled = TRUE WHERE quota = ? AND slot_id = ?", [sent_at, key, slot_id]
    )
