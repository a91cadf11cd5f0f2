"""Reading the LLM request log: filtered listings and the calls/tokens/cost/hit-rate summary."""

from __future__ import annotations

from datetime import datetime

import pandas as pd

from fine_tune_dag.core.store.warehouse import Warehouse

LISTED_COLUMNS = [
    "created_at",
    "model",
    "template",
    "template_version",
    "input_tokens",
    "output_tokens",
    "latency_s",
    "cost_usd",
    "cache_hit",
    "status",
    "asset",
    "partition",
]


def read_requests(
    db: Warehouse,
    template: str | None = None,
    status: str | None = None,
    since: datetime | None = None,
    run_id: str | None = None,
    limit: int | None = None,
) -> pd.DataFrame:
    """Newest first; every filter optional."""
    conditions, params = [], []
    for column, value in (("template", template), ("status", status), ("run_id", run_id)):
        if value:
            conditions.append(f"{column} = ?")
            params.append(value)
    if since is not None:
        conditions.append("created_at >= ?")
        params.append(since)
    where = " AND ".join(conditions) or "TRUE"
    limit_sql = f" LIMIT {int(limit)}" if limit else ""
    return db.query(f"SELECT * FROM llm_requests WHERE {where} ORDER BY created_at DESC{limit_sql}", params)


def summarize_requests(log: pd.DataFrame) -> dict[str, float]:
    """Tokens and cost count paid calls only: a cache hit logs what the answer cost once, not again."""
    paid = log[~log["cache_hit"].astype(bool)] if len(log) else log
    hits = len(log) - len(paid)
    return {
        "requests": len(log),
        "calls": len(paid),
        "cache_hits": hits,
        "cache_hit_rate": round(hits / len(log), 3) if len(log) else 0.0,
        "input_tokens": int(paid["input_tokens"].sum()) if len(paid) else 0,
        "output_tokens": int(paid["output_tokens"].sum()) if len(paid) else 0,
        "cost_usd": round(float(paid["cost_usd"].sum()), 6) if len(paid) else 0.0,
        "rejected": int((log["status"] != "ok").sum()) if len(log) else 0,
    }
