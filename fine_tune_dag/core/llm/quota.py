"""One LLM quota for every worker process and machine: the window's slots live beside the warehouse
(in PostgreSQL's `llm_quota_slots`, or a SQLite file next to a DuckDB one: core/store/quota_slots.py).

Each quota (provider, model, endpoint) has one lock row beside its slots. An acquirer updates that row
first, so its transaction holds the row until it commits: on PostgreSQL a concurrent acquirer's update
waits for that commit and then fails as a serialization failure (the postgres extension runs REPEATABLE
READ), and is retried whole; SQLite's write lock admits one acquirer at a time anyway. Reading the window,
deciding and inserting the slot therefore never interleave with another acquirer's.

A worker that dies between acquiring and settling leaves its slot unsettled. It cannot count for ever:
the client gives up on a request `in_flight_s` (its timeout) after sending it, so the server received it
by then or never, and the slot leaves the window a window after that deadline, whether or not its process
still lives. That never undercounts, and bounds how long a killed worker's slots hold capacity. Rows
that left the window are deleted by the next acquirer. Times are wall-clock (`time.time`), since
processes and machines compare them.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import duckdb

from fine_tune_dag.core.llm.ratelimit import RateLimiter, Slot
from fine_tune_dag.core.store.quota_slots import (
    QuotaSlots,
    delete_quota_slots,
    insert_quota_slot,
    lock_quota,
    quota_slots,
    settle_quota_slot,
)
from fine_tune_dag.core.store.warehouse import Warehouse, is_write_conflict

T = TypeVar("T")


@dataclass
class StoredSlot(Slot):
    slot_id: str = ""


def quota_key(provider: str, model: str, base_url: str) -> str:
    """Who shares a quota: the provider's model at one endpoint (any user:password left out of the URL)."""
    parts = urlsplit(base_url)
    endpoint = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
    return f"{provider}/{model}/{endpoint}"


class SharedRateLimiter(RateLimiter):
    """`RateLimiter`'s window over the slots of every process using `warehouse`, for quota `key`."""

    def __init__(
        self,
        warehouse: Warehouse,
        key: str,
        requests_per_minute: int,
        tokens_per_minute: int,
        in_flight_s: float,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        window_s: float = 60.0,
    ) -> None:
        super().__init__(requests_per_minute, tokens_per_minute, clock, sleep, window_s)
        self.slots, self.key, self.in_flight_s = QuotaSlots(warehouse), key, in_flight_s

    def settle(self, slot: Slot) -> None:
        """Count `slot` from now, for every process (its row may be gone already: then it left the window)."""
        super().settle(slot)
        self._transaction(lambda con: settle_quota_slot(con, self.key, slot.slot_id, slot.sent_at))

    def _admit(self, tokens: int, waited: float) -> StoredSlot | float:
        """This process's threads take turns; other processes' acquirers are kept out by the lock row."""
        with self._lock:
            return self._transaction(lambda con: self._admit_in(con, tokens, waited))

    def _transaction(self, work: Callable[[Any], T]) -> T:
        """`work` in one transaction, run again whole when it raced another process's (PostgreSQL)."""
        while True:
            try:
                with self.slots.transaction() as con:
                    return work(con)
            except duckdb.Error as error:
                if not is_write_conflict(error):
                    raise
            # another transaction committed first: the rows are free again, so try at once (jittered)
            time.sleep(random.uniform(0.0, 0.01))

    def _admit_in(self, con: Any, tokens: int, waited: float) -> StoredSlot | float:
        now = self._clock()
        lock_quota(con, self.key, now)
        stored = [
            StoredSlot(sent_at, tokens, settled=settled, deadline=deadline, slot_id=slot_id)
            for slot_id, sent_at, tokens, settled, deadline in quota_slots(con, self.key)
        ]
        counting = self.window.counting(stored, now)
        if gone := {slot.slot_id for slot in stored} - {slot.slot_id for slot in counting}:
            delete_quota_slots(con, self.key, gone)
        admitted: StoredSlot | float = self.window.wait(counting, tokens, now)
        if not admitted:
            admitted = StoredSlot(now, tokens, waited, deadline=now + self.in_flight_s, slot_id=uuid.uuid4().hex)
            insert_quota_slot(con, self.key, admitted.slot_id, admitted.sent_at, admitted.deadline, tokens)
        return admitted
