"""The warehouse: every tabular asset, the LLM cache and the adapter registry, in DuckDB's SQL.

One machine: an embedded DuckDB file. DuckDB allows one writing process at a time, so connections are
short-lived and opening one retries with backoff while another process holds the lock.

Many machines: the same tables in PostgreSQL (a `postgresql://` URL), reached through DuckDB's postgres
extension, so every query keeps DuckDB's dialect and no caller changes. PostgreSQL's row versioning lets
any number of processes write at once; a write that loses a race to a concurrent one is retried whole.
"""

from __future__ import annotations

import importlib.util
import os
import random
import re
import threading
import time
from contextlib import contextmanager, suppress
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

import duckdb
import pandas as pd

POSTGRES_SCHEMES = ("postgresql://", "postgres://")
T = TypeVar("T")

SCHEMA: dict[str, str] = {
    "raw_notes": """
        note_id VARCHAR PRIMARY KEY, path VARCHAR, title VARCHAR, format VARCHAR, text VARCHAR,
        metadata VARCHAR, sha256 VARCHAR, encoding VARCHAR, char_count INTEGER, parsed_at TIMESTAMP""",
    "rejected_notes": """
        note_id VARCHAR PRIMARY KEY, path VARCHAR, reason VARCHAR, size_bytes BIGINT, sha256 VARCHAR,
        rejected_at TIMESTAMP, run_id VARCHAR""",
    "passages": """
        note_id VARCHAR, passage_index INTEGER, start_char INTEGER, end_char INTEGER, text VARCHAR,
        topic VARCHAR, strategy VARCHAR, char_count INTEGER, PRIMARY KEY (note_id, passage_index)""",
    "qa_pairs": """
        pair_id VARCHAR PRIMARY KEY, note_id VARCHAR, passage_index INTEGER, mode VARCHAR,
        question VARCHAR, answer VARCHAR, status VARCHAR, reason VARCHAR, support DOUBLE""",
    "dataset_splits": """
        pair_id VARCHAR PRIMARY KEY, note_id VARCHAR, split VARCHAR, mode VARCHAR, system VARCHAR,
        question VARCHAR, answer VARCHAR, prompt_tokens INTEGER, answer_tokens INTEGER, dataset_version VARCHAR""",
    "dataset_versions": """
        dataset_version VARCHAR PRIMARY KEY, created_at TIMESTAMP, train_pairs INTEGER, test_pairs INTEGER,
        train_notes INTEGER, test_notes INTEGER, train_tokens INTEGER, test_tokens INTEGER,
        train_path VARCHAR, test_path VARCHAR""",
    "dataset_notes": """
        dataset_version VARCHAR, note_id VARCHAR, path VARCHAR, sha256 VARCHAR, split VARCHAR, pairs INTEGER,
        PRIMARY KEY (dataset_version, note_id)""",
    "llm_cache": """
        cache_key VARCHAR PRIMARY KEY, provider VARCHAR, model VARCHAR, template VARCHAR,
        template_version VARCHAR, response VARCHAR, created_at TIMESTAMP""",
    "llm_requests": """
        request_id VARCHAR PRIMARY KEY, created_at TIMESTAMP, provider VARCHAR, model VARCHAR, template VARCHAR,
        template_version VARCHAR, variables VARCHAR, prompt_hash VARCHAR, input_tokens INTEGER,
        output_tokens INTEGER, latency_s DOUBLE, cost_usd DOUBLE, cache_hit BOOLEAN, status VARCHAR,
        detail VARCHAR, run_id VARCHAR, asset VARCHAR, partition VARCHAR""",
    # the LLM quota every machine shares, on PostgreSQL (a DuckDB file's sit in SQLite beside it: core/store/quota_slots.py)
    "llm_quota_slots": """
        quota VARCHAR, slot_id VARCHAR, sent_at DOUBLE, deadline DOUBLE, tokens INTEGER, settled BOOLEAN,
        PRIMARY KEY (quota, slot_id)""",
    "request_log_pairs": """
        pair_id VARCHAR PRIMARY KEY, source VARCHAR, template VARCHAR, system VARCHAR, question VARCHAR,
        answer VARCHAR, created_at TIMESTAMP""",
    "prompt_completion_pairs": """
        pair_id VARCHAR PRIMARY KEY, source VARCHAR, template VARCHAR, system VARCHAR, question VARCHAR,
        answer VARCHAR, created_at TIMESTAMP""",
    "edge_cases": """
        case_id VARCHAR PRIMARY KEY, question VARCHAR, reference VARCHAR, origin VARCHAR, added_at TIMESTAMP""",
    "edge_case_answers": """
        case_id VARCHAR, model VARCHAR, answer VARCHAR, created_at TIMESTAMP, PRIMARY KEY (case_id, model)""",
    "sweep_results": """
        configuration VARCHAR, adapter_version VARCHAR PRIMARY KEY, dataset_version VARCHAR, created_at TIMESTAMP,
        nll DOUBLE, rouge_l DOUBLE, token_f1 DOUBLE, train_seconds DOUBLE, train_tokens BIGINT, cost_usd DOUBLE""",
    "preference_candidates": """
        candidate_id VARCHAR PRIMARY KEY, prompt_id VARCHAR, system VARCHAR, question VARCHAR, reference VARCHAR,
        pairing VARCHAR, answer_a VARCHAR, origin_a VARCHAR, answer_b VARCHAR, origin_b VARCHAR,
        champion_version VARCHAR, created_at TIMESTAMP""",
    "preference_labels": """
        label_id VARCHAR PRIMARY KEY, candidate_id VARCHAR, labeler VARCHAR, source VARCHAR, choice VARCHAR,
        shown_left VARCHAR, labeled_at TIMESTAMP""",
    "preference_pairs": """
        candidate_id VARCHAR PRIMARY KEY, system VARCHAR, question VARCHAR, chosen VARCHAR, rejected VARCHAR,
        chosen_origin VARCHAR, rejected_origin VARCHAR, label_source VARCHAR, labeler VARCHAR,
        labeled_at TIMESTAMP""",
    # a person's decision on a synthetic pair (accept, edit with the new text, reject): every one kept, latest wins
    "pair_labels": """
        label_id VARCHAR PRIMARY KEY, pair_id VARCHAR, labeler VARCHAR, decision VARCHAR, question VARCHAR,
        answer VARCHAR, labeled_at TIMESTAMP""",
    "blind_trials": """
        trial_id VARCHAR PRIMARY KEY, adapter_version VARCHAR, prompt VARCHAR, author_text VARCHAR,
        model_text VARCHAR, created_at TIMESTAMP""",
    "blind_labels": """
        label_id VARCHAR PRIMARY KEY, trial_id VARCHAR, labeler VARCHAR, picked VARCHAR, shown_left VARCHAR,
        labeled_at TIMESTAMP""",
    "adapters": """
        version VARCHAR PRIMARY KEY, path VARCHAR, base_model VARCHAR, base_model_path VARCHAR,
        dataset_version VARCHAR, created_at TIMESTAMP, device VARCHAR, train_examples INTEGER,
        train_tokens BIGINT, train_seconds DOUBLE, final_loss DOUBLE, hyperparameters VARCHAR""",
    "evaluations": """
        adapter_version VARCHAR PRIMARY KEY, dataset_version VARCHAR, created_at TIMESTAMP, report_path VARCHAR,
        test_examples INTEGER, champion_version VARCHAR, device VARCHAR""",
    "evaluation_metrics": """
        adapter_version VARCHAR, contender VARCHAR, contender_version VARCHAR, metric VARCHAR, value DOUBLE,
        PRIMARY KEY (adapter_version, contender, metric)""",
    "crossval_verdicts": """
        created_at TIMESTAMP, dataset_version VARCHAR, notes_key VARCHAR, folds INTEGER, notes INTEGER,
        choice VARCHAR, verdict VARCHAR, gate_passed BOOLEAN, report_path VARCHAR, PRIMARY KEY (notes_key, created_at)""",
    # what the privacy scan found in each note, as counts by kind (never the values), and the policy it met
    "privacy_findings": """
        note_id VARCHAR PRIMARY KEY, sha256 VARCHAR, kinds VARCHAR, findings INTEGER, provider VARCHAR,
        policy VARCHAR, names VARCHAR, scanned_at TIMESTAMP""",
    "champion_history": """
        promoted_at TIMESTAMP, version VARCHAR, previous_version VARCHAR, dataset_version VARCHAR,
        test_nll DOUBLE, previous_nll DOUBLE, reason VARCHAR, run_id VARCHAR, PRIMARY KEY (version, promoted_at)""",
    # what `forget` removed from where, by the note's key and a hash of its path, never its text
    "forgetting_records": """
        note_key VARCHAR PRIMARY KEY, path_sha256 VARCHAR, forgotten_at TIMESTAMP, removed VARCHAR, files VARCHAR,
        adapters_marked VARCHAR, champion_before VARCHAR, champion_after VARCHAR""",
    # adapters trained on a forgotten note: kept for lineage, never served or promoted again
    "adapter_marks": """
        version VARCHAR, note_key VARCHAR, marked_at TIMESTAMP, PRIMARY KEY (version, note_key)""",
}

# Columns added after a table first shipped, applied to DuckDB files created by older versions. CREATE_SCHEMA
# builds them into the tables of a new database (PostgreSQL warehouses are all new, and the postgres
# extension passes an ALTER's DuckDB type names to PostgreSQL verbatim).
MIGRATIONS: tuple[str, ...] = (
    "ALTER TABLE llm_cache ADD COLUMN IF NOT EXISTS status VARCHAR DEFAULT 'ok'",
    "ALTER TABLE llm_cache ADD COLUMN IF NOT EXISTS messages VARCHAR",
    "ALTER TABLE llm_cache ADD COLUMN IF NOT EXISTS input_tokens INTEGER DEFAULT 0",
    "ALTER TABLE llm_cache ADD COLUMN IF NOT EXISTS output_tokens INTEGER DEFAULT 0",
    "ALTER TABLE adapters ADD COLUMN IF NOT EXISTS dataset_train_pairs INTEGER DEFAULT 0",
    "ALTER TABLE adapters ADD COLUMN IF NOT EXISTS run_id VARCHAR",
    "ALTER TABLE adapters ADD COLUMN IF NOT EXISTS sweep_configuration VARCHAR DEFAULT ''",
    "ALTER TABLE adapters ADD COLUMN IF NOT EXISTS test_nll DOUBLE",
    "ALTER TABLE adapters ADD COLUMN IF NOT EXISTS test_perplexity DOUBLE",
    "ALTER TABLE adapters ADD COLUMN IF NOT EXISTS test_rouge_l DOUBLE",
    "ALTER TABLE adapters ADD COLUMN IF NOT EXISTS test_token_f1 DOUBLE",
    "ALTER TABLE adapters ADD COLUMN IF NOT EXISTS method VARCHAR DEFAULT 'sft'",
    "ALTER TABLE adapters ADD COLUMN IF NOT EXISTS parent_version VARCHAR",
    # the order metrics were recorded in: PostgreSQL has no insertion order to read back
    "ALTER TABLE evaluation_metrics ADD COLUMN IF NOT EXISTS position INTEGER DEFAULT 0",
    # the verdict in words, computed once by the evaluation and shown wherever it is read
    "ALTER TABLE evaluations ADD COLUMN IF NOT EXISTS recommendation VARCHAR",
    # the note a blind trial's passage came from (its bootstrap cluster) and the side its author text is shown on
    "ALTER TABLE blind_trials ADD COLUMN IF NOT EXISTS note_id VARCHAR",
    "ALTER TABLE blind_trials ADD COLUMN IF NOT EXISTS author_side VARCHAR",
    # what kind of source a note came from (note, mail, chat, web, ebook), for weighting the kinds in training
    "ALTER TABLE raw_notes ADD COLUMN IF NOT EXISTS source_kind VARCHAR DEFAULT 'note'",
    # JSON: other people's words kept beside the author's (a chat's lines each reply answered), never text
    "ALTER TABLE raw_notes ADD COLUMN IF NOT EXISTS context VARCHAR",
    # the pair judge's score (1-5) and reason, where it ran (core/synthesis/pair_judge.py)
    "ALTER TABLE qa_pairs ADD COLUMN IF NOT EXISTS judge_score INTEGER",
    "ALTER TABLE qa_pairs ADD COLUMN IF NOT EXISTS judge_reason VARCHAR",
    # whether a person reviewed the pair, what kind of source its note is, and its weight in the training mix
    "ALTER TABLE dataset_splits ADD COLUMN IF NOT EXISTS reviewed BOOLEAN DEFAULT false",
    "ALTER TABLE dataset_splits ADD COLUMN IF NOT EXISTS source_kind VARCHAR DEFAULT 'note'",
    "ALTER TABLE dataset_splits ADD COLUMN IF NOT EXISTS weight DOUBLE DEFAULT 1.0",
    "ALTER TABLE dataset_versions ADD COLUMN IF NOT EXISTS reviewed_train_pairs INTEGER DEFAULT 0",
)


def _schema_with_additions() -> dict[str, str]:
    """SCHEMA with every migrated column in place, for creating a table from nothing."""
    tables = dict(SCHEMA)
    for statement in MIGRATIONS:
        table, column = re.fullmatch(r"ALTER TABLE (\w+) ADD COLUMN IF NOT EXISTS (.+)", statement).groups()
        tables[table] += f", {column}"
    return tables


CREATE_SCHEMA = _schema_with_additions()
_LOCK_MARKERS = ("lock", "Conflicting")
# a write that raced a concurrent one (PostgreSQL's serialization failures, DuckDB's write conflicts): retried whole
_CONFLICT_MARKERS = ("could not serialize", "deadlock detected", "Transaction conflict", "duplicate key value")
_SCHEMA_READY: set[tuple[str, int]] = set()  # (database, inode or 0): a recreated file is set up again
_ATTACHED: dict[tuple[str, int], duckdb.DuckDBPyConnection] = {}  # (url, pid): one attachment per process
_ATTACH_LOCK = threading.Lock()
_OPEN_LOCK = threading.Lock()


def is_write_conflict(error: Exception) -> bool:
    """A write that raced a concurrent one and may simply be tried again."""
    return any(marker in str(error) for marker in _CONFLICT_MARKERS)


def is_postgres_url(location: Path | str) -> bool:
    return isinstance(location, str) and location.startswith(POSTGRES_SCHEMES)


class Warehouse:
    """`location`: a DuckDB file, or a PostgreSQL URL (`postgresql://user@host:5432/database`)."""

    def __init__(self, location: Path | str, lock_timeout_s: float = 120.0) -> None:
        self.url = str(location) if is_postgres_url(location) else ""
        self.path = Path("postgresql") if self.url else Path(location)
        self.lock_timeout_s = lock_timeout_s

    @property
    def location(self) -> str:
        """What names this warehouse to another process: its URL, or its file's absolute path."""
        return self.url or str(self.path.resolve())

    def __repr__(self) -> str:
        return f"Warehouse({_without_password(self.url) if self.url else str(self.path)!r})"

    @contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        con = self._open_postgres() if self.url else self._open_file()
        try:
            self._ensure_schema(con)
            yield con
        finally:
            con.close()

    def _open_file(self) -> duckdb.DuckDBPyConnection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.lock_timeout_s
        delay = 0.05
        while True:
            try:
                with _OPEN_LOCK:  # duckdb's cache of open files races when threads open the same file at once
                    return duckdb.connect(str(self.path))
            except duckdb.IOException as error:
                if not any(m in str(error) for m in _LOCK_MARKERS) or time.monotonic() > deadline:
                    raise
                time.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 2.0)

    def _open_postgres(self) -> duckdb.DuckDBPyConnection:
        """A cursor on this process's one in-memory DuckDB that has the PostgreSQL database attached: attaching
        costs tens of milliseconds, a cursor nothing, and each cursor runs its own PostgreSQL transaction."""
        key = (self.url, os.getpid())
        with _ATTACH_LOCK:
            if key not in _ATTACHED:
                database = duckdb.connect()
                load_postgres_extension(database)
                # PostgreSQL's text cannot hold NUL, which a model's output may: it is dropped, the rest kept
                database.execute("SET GLOBAL pg_null_byte_replacement = ''")
                database.execute(f"ATTACH '{self.url.replace(chr(39), chr(39) * 2)}' AS warehouse (TYPE postgres)")
                _ATTACHED[key] = database
            cursor = _ATTACHED[key].cursor()
        cursor.execute("USE warehouse")
        return cursor

    def _ensure_schema(self, con: duckdb.DuckDBPyConnection) -> None:
        """Tables and migrations once per database and process, not on every short connection."""
        key = (self.url, 0) if self.url else (str(self.path.resolve()), self.path.stat().st_ino)
        if key in _SCHEMA_READY:
            return
        statements = [f"CREATE TABLE IF NOT EXISTS {table} ({columns})" for table, columns in CREATE_SCHEMA.items()]
        for statement in statements if self.url else [*statements, *MIGRATIONS]:
            # processes starting together race to create the same tables: the loser finds them made
            self._retry_conflicts(partial(con.execute, statement))
        _SCHEMA_READY.add(key)

    def _retry_conflicts(self, attempt: Callable[[], T], tries: int = 6) -> T:
        for count in range(1, tries + 1):
            try:
                return attempt()
            except duckdb.Error as error:
                if count == tries or not is_write_conflict(error):
                    raise
                time.sleep(0.01 * 2**count * (1 + random.random()))
        raise AssertionError("unreachable")

    def changed_since(self, stamp: object) -> tuple[bool, object]:
        """Whether the registry may have changed since `stamp` (None: never read), and the new stamp. A file's
        stamp is its and its log's modification times, costing no query; PostgreSQL's is one small query."""
        if self.url:
            new: object = tuple(
                self.query(
                    "SELECT (SELECT count(*) FROM adapters) AS adapters, "
                    "(SELECT max(promoted_at) FROM champion_history) AS promoted"
                ).iloc[0]
            )
        else:
            files = (self.path, self.path.with_name(self.path.name + ".wal"))
            new = tuple(f.stat().st_mtime_ns if f.exists() else 0 for f in files)
        return stamp is None or new != stamp, new

    def rewrite(self) -> None:
        """Copy a DuckDB file's live rows into a new file and put it in the old one's place: deleted rows stay
        in a database file's free blocks (and its log) until overwritten, so data meant to be gone is not only
        unreachable but absent. PostgreSQL's own VACUUM does this for its tables; nothing is done here."""
        if self.url or not self.path.exists():
            return
        fresh = self.path.with_name(f".{self.path.name}.rewrite")
        fresh.unlink(missing_ok=True)
        with self.connect() as con:
            con.execute("CHECKPOINT")
            con.execute(f"ATTACH '{fresh}' AS fresh")
            database = con.execute("SELECT current_database()").fetchone()[0]
            con.execute(f'COPY FROM DATABASE "{database}" TO fresh')
            con.execute("DETACH fresh")
        os.replace(fresh, self.path)
        self.path.with_name(self.path.name + ".wal").unlink(missing_ok=True)

    def query(self, sql: str, params: Sequence[Any] = ()) -> pd.DataFrame:
        with self.connect() as con:
            return con.execute(sql, list(params)).df()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        with self.connect() as con:
            self._retry_conflicts(lambda: con.execute(sql, list(params)))

    def replace_rows(self, table: str, rows: pd.DataFrame, where: dict[str, Any] | None = None) -> None:
        """Delete the rows matching `where` (all rows when None) and insert `rows`, in one transaction."""
        where = where or {}
        condition = " AND ".join(f"{column} = ?" for column in where) or "TRUE"

        def replace(con: duckdb.DuckDBPyConnection) -> None:
            con.execute(f"DELETE FROM {table} WHERE {condition}", list(where.values()))
            if len(rows):
                _insert(con, table, rows, "INSERT")

        self.transaction(replace)

    def transaction(self, work: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        """`work` on one connection in one transaction, tried again whole when it raced a concurrent write."""
        with self.connect() as con:

            def attempt() -> T:
                con.execute("BEGIN TRANSACTION")
                try:
                    result = work(con)
                    con.execute("COMMIT")
                except duckdb.Error:
                    with suppress(duckdb.TransactionException):  # a failed COMMIT has already ended it
                        con.execute("ROLLBACK")
                    raise
                return result

            return self._retry_conflicts(attempt)

    def insert_rows(self, table: str, rows: pd.DataFrame) -> None:
        """Insert, replacing rows with the same primary key (re-materializing the same thing)."""
        if not len(rows):
            return
        with self.connect() as con:
            self._retry_conflicts(lambda: _insert(con, table, rows, "INSERT OR REPLACE"))


def _insert(con: duckdb.DuckDBPyConnection, table: str, rows: pd.DataFrame, verb: str) -> None:
    """Only the frame's columns are named, so the table's defaults fill the rest on either engine (DuckDB's
    `BY NAME` would send PostgreSQL explicit NULLs)."""
    columns = ", ".join(f'"{column}"' for column in rows.columns)
    con.register("incoming_rows", rows)
    try:
        con.execute(f"{verb} INTO {table} ({columns}) SELECT {columns} FROM incoming_rows")
    finally:
        con.unregister("incoming_rows")


def load_postgres_extension(con: duckdb.DuckDBPyConnection) -> None:
    """DuckDB's postgres extension: from the `duckdb-ext-postgres` wheel when installed (offline machines;
    it is built for the duckdb it pins), otherwise from DuckDB's extension repository."""
    wheel = importlib.util.find_spec("duckdb_ext")
    if wheel is not None and wheel.submodule_search_locations:
        folder = Path(next(iter(wheel.submodule_search_locations))) / "extensions"
        con.execute("SET autoinstall_known_extensions = false")
        con.execute(f"SET extension_directory = '{folder}'")
    else:
        con.execute("INSTALL postgres")
    con.execute("LOAD postgres")


def _without_password(url: str) -> str:
    """A URL fit for logs: `user:secret@host` becomes `user@host`."""
    head, at, tail = url.rpartition("@")
    if not at:
        return url
    scheme, _, credentials = head.partition("://")
    return f"{scheme}://{credentials.split(':', 1)[0]}@{tail}"
