"""What the stage modules share: turning core results into Dagster metadata and core errors into failures."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import dagster as dg

from fine_tune_dag.core.common.errors import StageError
from fine_tune_dag.core.common.llm_types import LLMUsage
from fine_tune_dag.core.common.markdown import Markdown
from fine_tune_dag.core.common.memory import PeakMemory, release_free_heap
from fine_tune_dag.core.common.metadata_keys import PEAK_MEMORY_MIB
from fine_tune_dag.resources.llm import release_local_llms


@contextmanager
def stage_failures() -> Iterator[None]:
    """A `StageError` (something the user must fix) fails the step with its reason, and is not retried."""
    try:
        yield
    except StageError as error:
        raise dg.Failure(description=str(error), metadata=error.metadata, allow_retries=False) from error


StageFunction = TypeVar("StageFunction", bound=Callable[..., Any])


def reports_peak_memory(stage: StageFunction) -> StageFunction:
    """The stage's materialization carries the most memory its process held while it ran, so the UI shows
    which stage needs what (below `@dg.asset`; Dagster reads the wrapped function's parameters). The heap it
    freed goes back to the system when it ends, so the next stage (in-process runs share one process) starts
    from what is still in use."""

    @functools.wraps(stage)
    def measured(*args: Any, **kwargs: Any) -> Any:
        with PeakMemory() as peak:
            try:
                result = stage(*args, **kwargs)
            finally:
                release_free_heap()
        if isinstance(result, dg.MaterializeResult):
            return result._replace(metadata={**(result.metadata or {}), PEAK_MEMORY_MIB: peak.mib})
        return result

    return measured  # type: ignore[return-value]


def loads_its_own_model(stage: StageFunction) -> StageFunction:
    """`reports_peak_memory` for a stage that loads a model of its own (training, evaluation, edge cases,
    preferences): the model the local LLM keeps loaded for synthesis is let go first, so an in-process run (the
    demo's) holds one model at a time."""

    @functools.wraps(stage)
    def alone(*args: Any, **kwargs: Any) -> Any:
        release_local_llms()
        return stage(*args, **kwargs)

    return reports_peak_memory(alone)  # type: ignore[arg-type]


def as_metadata(values: Mapping[str, Any]) -> dict[str, Any]:
    """Plain values from core code as the UI should show them: files as paths, Markdown rendered, dicts and
    lists as JSON."""

    def convert(value: Any) -> Any:
        if isinstance(value, Path):
            return dg.MetadataValue.path(str(value))
        if isinstance(value, Markdown):
            return dg.MetadataValue.md(value)
        if isinstance(value, (dict, list, tuple)):
            return dg.MetadataValue.json(value)
        return value

    return {key: convert(value) for key, value in values.items()}


def llm_usage_metadata(usage: LLMUsage, client: object = None) -> dict[str, Any]:
    """The request-log summary every LLM-calling asset shows: calls, tokens, cost, hit rate, rejections; the
    engine a local model generated with; and what the privacy policy let out (an explicit 'allow' named)."""
    engine = getattr(client, "engine", None)
    egress = getattr(client, "egress", None)  # a provider off this machine (or a server beside it)
    privacy = (
        {
            "privacy_policy": egress.describe(),
            "privacy_names": egress.names,
            "privacy_redacted_requests": usage.redacted_requests,
            "privacy_redacted": dg.MetadataValue.json(usage.redacted),  # distinct values by kind, never the values
            "privacy_withheld_requests": usage.withheld,
        }
        if egress is not None
        else {"privacy_policy": "local: the LLM runs on this machine, nothing leaves"}
    )
    return {
        **(engine.metadata() if engine is not None else {}),
        **privacy,
        "llm_requests": usage.requests,
        "llm_calls": usage.calls,
        "llm_cache_hits": usage.cache_hits,
        "llm_cache_hit_rate": round(usage.cache_hits / usage.requests, 3) if usage.requests else 0.0,
        "llm_input_tokens": usage.input_tokens,
        "llm_output_tokens": usage.output_tokens,
        "llm_cost_usd": round(usage.cost_usd, 6),
        "llm_rejected_answers": usage.rejected,
    }
