"""Helpers the stage modules share: reading a note's rows and reporting LLM usage."""

import dagster as dg
import pandas as pd

from fine_tune_dag.core.llm.types import LLMUsage
from fine_tune_dag.core.store.warehouse import Warehouse


def rows_for_note(
    warehouse: Warehouse, table: str, note_id: str, upstream: str, order_by: str = "note_id"
) -> pd.DataFrame:
    """The note's rows of an upstream table; missing rows mean the upstream partition was never built."""
    rows = warehouse.query(f"SELECT * FROM {table} WHERE note_id = ? ORDER BY {order_by}", [note_id])
    if rows.empty:
        raise dg.Failure(
            description=f"no {table} rows for note '{note_id}': materialize {upstream} for this partition first",
            allow_retries=False,
        )
    return rows


def llm_usage_metadata(usage: LLMUsage) -> dict[str, int | float]:
    """The request-log summary every LLM-calling asset shows: calls, tokens, cost, hit rate, rejections."""
    return {
        "llm_requests": usage.requests,
        "llm_calls": usage.calls,
        "llm_cache_hits": usage.cache_hits,
        "llm_cache_hit_rate": round(usage.cache_hits / usage.requests, 3) if usage.requests else 0.0,
        "llm_input_tokens": usage.input_tokens,
        "llm_output_tokens": usage.output_tokens,
        "llm_cost_usd": round(usage.cost_usd, 6),
        "llm_rejected_answers": usage.rejected,
    }
