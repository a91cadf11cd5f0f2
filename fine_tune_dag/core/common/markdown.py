"""Small Markdown helpers for reports and Dagster metadata previews (no tabulate dependency)."""

from __future__ import annotations

import re
from typing import Any, Sequence

import pandas as pd

_HEADING = re.compile(r"^\s{0,3}#{1,6}(\s|$)")
_RULE = re.compile(r"^\s*([-=*_])(\s*\1){2,}\s*$")
_MARKER = re.compile(r"^\s*(?:(?:>\s*)+|[-*+•]\s+|\d{1,9}[.)]\s+)")
_EMPHASIS = re.compile(r"\*+|_{2,}")


def prose_words(text: str) -> list[str]:
    """The words of a text as plain prose: headings and rules dropped, list and quote markers and emphasis
    stripped, so that formatting is the same for every writer."""
    lines = [line for line in text.splitlines() if not (_HEADING.match(line) or _RULE.match(line))]
    return _EMPHASIS.sub("", " ".join(_MARKER.sub("", line) for line in lines)).split()


def cell(value: Any, limit: int = 160) -> str:
    """One table cell: single line, pipes escaped, long text cut with an ellipsis."""
    flat = " ".join(str(value).split()).replace("|", "\\|")
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str], limit: int = 160) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v, limit) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def preview(frame: pd.DataFrame, columns: Sequence[str], rows: int = 5, limit: int = 120) -> str:
    """The first rows of a frame as a Markdown table, for the Dagster UI."""
    if frame.empty:
        return "_no rows_"
    return table(frame[list(columns)].head(rows).itertuples(index=False), columns, limit)


def length_summary(lengths: Sequence[int]) -> dict[str, int]:
    """Min, median, 90th percentile and max of a length distribution."""
    if len(lengths) == 0:
        return {"min": 0, "p50": 0, "p90": 0, "max": 0}
    series = pd.Series(lengths)
    return {
        "min": int(series.min()),
        "p50": int(series.quantile(0.5)),
        "p90": int(series.quantile(0.9)),
        "max": int(series.max()),
    }


class Markdown(str):
    """Text meant to be rendered as Markdown where it is shown (the Dagster UI renders it)."""
