"""The DuckDB warehouse: every tabular asset, the LLM cache and the adapter registry.

DuckDB allows one writing process at a time, so connections are short-lived and opening one
retries with backoff while another process holds the lock.
"""

from __future__ import annotations

import random
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import duckdb
import pandas as pd

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
    "champion_history": """
        promoted_at TIMESTAMP, version VARCHAR, previous_version VARCHAR, dataset_version VARCHAR,
        test_nll DOUBLE, previous_nll DOUBLE, reason VARCHAR, run_id VARCHAR, PRIMARY KEY (version, promoted_at)""",
}

# Columns added after a table first shipped: applied to warehouses created by older versions.
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
)

_LOCK_MARKERS = ("lock", "Conflicting")
_SCHEMA_READY: set[tuple[str, int]] = set()  # (database file, inode): a recreated file is set up again


class Warehouse:
    def __init__(self, path: Path | str, lock_timeout_s: float = 120.0) -> None:
        self.path = Path(path)
        self.lock_timeout_s = lock_timeout_s

    @contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.lock_timeout_s
        delay = 0.05
        while True:
            try:
                con = duckdb.connect(str(self.path))
                break
            except duckdb.IOException as error:
                if not any(m in str(error) for m in _LOCK_MARKERS) or time.monotonic() > deadline:
                    raise
                time.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 2.0)
        try:
            self._ensure_schema(con)
            yield con
        finally:
            con.close()

    def _ensure_schema(self, con: duckdb.DuckDBPyConnection) -> None:
        """Tables and migrations once per database file and process, not on every short connection."""
        key = (str(self.path.resolve()), self.path.stat().st_ino)
        if key in _SCHEMA_READY:
            return
        for table, columns in SCHEMA.items():
            con.execute(f"CREATE TABLE IF NOT EXISTS {table} ({columns})")
        for statement in MIGRATIONS:
            con.execute(statement)
        _SCHEMA_READY.add(key)

    def query(self, sql: str, params: Sequence[Any] = ()) -> pd.DataFrame:
        with self.connect() as con:
            return con.execute(sql, list(params)).df()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        with self.connect() as con:
            con.execute(sql, list(params))

    def replace_rows(self, table: str, rows: pd.DataFrame, where: dict[str, Any] | None = None) -> None:
        """Delete the rows matching `where` (all rows when None) and insert `rows`, in one transaction."""
        where = where or {}
        condition = " AND ".join(f"{column} = ?" for column in where) or "TRUE"
        with self.connect() as con:
            con.execute("BEGIN TRANSACTION")
            con.execute(f"DELETE FROM {table} WHERE {condition}", list(where.values()))
            if len(rows):
                con.register("incoming_rows", rows)
                con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM incoming_rows")
                con.unregister("incoming_rows")
            con.execute("COMMIT")

    def insert_rows(self, table: str, rows: pd.DataFrame) -> None:
        """Insert, replacing rows with the same primary key (re-materializing the same thing)."""
        if not len(rows):
            return
        with self.connect() as con:
            con.register("incoming_rows", rows)
            con.execute(f"INSERT OR REPLACE INTO {table} BY NAME SELECT * FROM incoming_rows")
            con.unregister("incoming_rows")
