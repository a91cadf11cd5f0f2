"""Comparisons for people to label: two answers from different sources to prompts not yet compared for the
current champion, pre-labelled by an LLM judge when one is asked for."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from fine_tune_dag.core.common.errors import StageError
from fine_tune_dag.core.common.markdown import Markdown, preview
from fine_tune_dag.core.evaluation.config import PreferenceSettings
from fine_tune_dag.core.evaluation.measures import pick_examples
from fine_tune_dag.core.evaluation.preferences import (
    AUTHOR_VS_CHAMPION,
    Prompt,
    assign_pairings,
    generate_candidates,
    judge_prelabels,
    prompts_from_splits,
)
from fine_tune_dag.core.generation.base import EngineSettings, engine_precision
from fine_tune_dag.core.generation.engines import open_engine
from fine_tune_dag.core.llm.cache import CachedLLM
from fine_tune_dag.core.models.loading import load_causal_lm, load_tokenizer, select_device, select_dtype, with_adapters
from fine_tune_dag.core.store.artifacts import ArtifactStore
from fine_tune_dag.core.store.edge_cases import edge_case_questions
from fine_tune_dag.core.store.labels import add_candidates, add_labels, labelling_counts, prompts_compared
from fine_tune_dag.core.store.registry import current_champion
from fine_tune_dag.core.store.splits import split_items
from fine_tune_dag.core.store.warehouse import Warehouse
from fine_tune_dag.core.workflows.adapters import Log

SHOWN_COLUMNS = ["pairing", "question", "origin_a", "origin_b"]


def champion_answers(
    champion: pd.Series,
    dealt: list[tuple[Prompt, str]],
    train: pd.DataFrame,
    settings: PreferenceSettings,
    store: ArtifactStore,
    log: Log,
) -> pd.DataFrame:
    """Both sides of each dealt comparison, generated from the champion (and the base model it was trained on)."""
    store.fetch(f"adapters/{champion.version}", Path(champion.path))
    device = select_device(settings.device)
    tokenizer = load_tokenizer(Path(champion.path))
    engine = open_engine(
        Path(champion.base_model_path),
        {"champion": Path(champion.path)},
        tokenizer,
        EngineSettings(settings.generation_engine, engine_precision(settings.dtype), settings.batch_size),  # type: ignore[arg-type]
        device,
        lambda: with_adapters(
            load_causal_lm(Path(champion.base_model_path), device, select_dtype(settings.dtype, device)),
            {"champion": champion.path},
        ),
    )
    log.info(f"generating with {engine.choice.engine}: {engine.choice.reason}")
    examples = pick_examples(list(zip(train["question"], train["answer"])), seed=settings.seed)
    total = sum(1 if pairing == AUTHOR_VS_CHAMPION else 2 for _, pairing in dealt)
    done = 0

    def log_progress(count: int) -> None:
        nonlocal done
        done += count
        log.info(f"generated {done}/{total} answers")

    rows = generate_candidates(engine, tokenizer, dealt, "champion", examples, settings, log_progress)
    engine.close()
    return pd.DataFrame(rows).assign(
        champion_version=champion.version, created_at=datetime.now(timezone.utc).replace(tzinfo=None)
    )


def add_comparisons(
    db: Warehouse,
    settings: PreferenceSettings,
    store: ArtifactStore,
    judge: Callable[[], CachedLLM | None],
    log: Log,
) -> dict[str, Any]:
    """New comparisons for the champion's train-split questions and edge cases not yet compared, added beside
    the earlier ones; `judge` (called only when there is something to judge) pre-labels them. Returns the
    metadata."""
    champion = current_champion(db)
    if champion is None:
        raise StageError("no champion yet: comparisons start from the promoted supervised adapter")
    train = split_items(db, "train")
    prompts = prompts_from_splits(train, edge_case_questions(db))
    asked = prompts_compared(db, champion.version)
    dealt = assign_pairings([p for p in prompts if p.prompt_id not in asked], settings.max_prompts, settings.seed)
    if dealt:
        fresh = champion_answers(champion, dealt, train, settings, store, log)
        add_candidates(db, fresh)
        llm = judge()
        if llm is not None:
            add_labels(db, pd.DataFrame(judge_prelabels(fresh, llm.complete, settings.seed)))
            log.info(f"LLM judge pre-labelled: {llm.usage.calls} calls, {llm.usage.cache_hits} from cache")
    else:
        log.info(f"every prompt already has a comparison for champion {champion.version}")
        fresh = pd.DataFrame(columns=SHOWN_COLUMNS)
    return {
        "new_comparisons": len(fresh),
        "by_pairing": fresh["pairing"].value_counts().to_dict(),
        "champion_version": champion.version,
        **labelling_counts(db),
        "label_them": "fine-tune-dag annotate",
        "preview": Markdown(preview(fresh, SHOWN_COLUMNS)),
    }
