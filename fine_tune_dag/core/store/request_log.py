"""The LLM cache and request log in the warehouse: cached answers by key, filtered listings, the
calls/tokens/cost/hit-rate summary, and answered requests for teacher → student pairs."""

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


def cached_answers(db: Warehouse, keys: list[str]) -> pd.DataFrame:
    """The cached answer rows of these content hashes (missing keys have no row)."""
    return db.query(
        "SELECT cache_key, response, status, input_tokens, output_tokens FROM llm_cache "
        "WHERE cache_key IN (SELECT unnest(?::VARCHAR[]))",
        [keys],
    )


def cache_answers(db: Warehouse, rows: pd.DataFrame) -> None:
    """Answers by their request's content hash (`cache_key`), so the same request is never paid for twice."""
    db.insert_rows("llm_cache", rows)


def log_requests(db: Warehouse, rows: pd.DataFrame) -> None:
    """One row per request, cache hit or not: what it cost, how long it took and which asset asked."""
    db.insert_rows("llm_requests", rows)


def answered_requests(
    db: Warehouse,
    templates: list[str],
    assets: list[str],
    since: datetime | None,
    until: datetime | None,
) -> pd.DataFrame:
    """Distinct answered requests (template, messages, response) of these templates, assets (any when empty)
    and dates."""
    conditions, params = ["r.status = 'ok'", "r.template IN (SELECT unnest(?::VARCHAR[]))"], [templates]
    if assets:
        conditions.append("r.asset IN (SELECT unnest(?::VARCHAR[]))")
        params.append(assets)
    for bound, operator in ((since, ">="), (until, "<")):
        if bound is not None:
            conditions.append(f"r.created_at {operator} ?")
            params.append(bound)
    return db.query(
        "SELECT DISTINCT r.template, c.messages, c.response FROM llm_requests r "
        "JOIN llm_cache c ON c.cache_key = r.prompt_hash WHERE " + " AND ".join(conditions),
        params,
    )
