"""preference_candidates → (people choose on `fine-tune-dag annotate`) → preference_pairs.

Neither asset runs on its own: comparisons cost model time and wait for people, so they are
materialized when someone wants more to label (`preference_candidates`) or has labelled
(`preference_pairs`, then `dpo_adapter`).
"""

from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
import pandas as pd

from fine_tune_dag.assets.common import loads_its_own_model, stage_failures
from fine_tune_dag.assets.config import PreferenceCandidatesConfig
from fine_tune_dag.assets.dataset import dataset_splits
from fine_tune_dag.assets.edge_cases import edge_cases
from fine_tune_dag.assets.tags import GPU_STEP_TAGS
from fine_tune_dag.core.common.errors import StageError
from fine_tune_dag.core.common.fingerprint import fingerprint
from fine_tune_dag.core.common.markdown import preview
from fine_tune_dag.core.evaluation.config import PreferenceSettings
from fine_tune_dag.core.generation.base import EngineSettings, engine_precision
from fine_tune_dag.core.generation.engines import open_engine
from fine_tune_dag.core.store.edge_cases import edge_case_questions
from fine_tune_dag.core.store.labels import candidates_and_labels, labelling_counts, prompts_compared
from fine_tune_dag.core.store.registry import current_champion
from fine_tune_dag.core.store.splits import split_items
from fine_tune_dag.resources.artifacts import ArtifactStoreResource
from fine_tune_dag.resources.llm import LLMResource
from fine_tune_dag.resources.warehouse import WarehouseResource


@dg.asset(
    # The champion is read from the registry when the step runs, as eval_report reads it: a declared
    # dependency would close a cycle (champion → comparisons → DPO → evaluation → champion). Every
    # comparison records the champion version it came from.
    deps=[dataset_splits, edge_cases],
    group_name="preferences",
    pool="gpu",
    op_tags=GPU_STEP_TAGS,
    kinds={"pytorch", "duckdb"},
    code_version=f"preference-candidates-1+{fingerprint(PreferenceSettings())}",
)
@loads_its_own_model
def preference_candidates(
    context: dg.AssetExecutionContext,
    config: PreferenceCandidatesConfig,
    warehouse: WarehouseResource,
    artifacts: ArtifactStoreResource,
    llm: LLMResource,
) -> dg.MaterializeResult:
    """Two answers from different sources (champion vs best-prompted base, the champion at two
    temperatures, the author's passage vs the champion) to train-split questions and edge cases not yet
    compared for this champion; added to the comparisons people label, never replacing one."""
    from fine_tune_dag.core.evaluation.measures import pick_examples
    from fine_tune_dag.core.evaluation.preferences import (
        AUTHOR_VS_CHAMPION,
        assign_pairings,
        generate_candidates,
        judge_prelabels,
        prompts_from_splits,
    )
    from fine_tune_dag.core.models.loading import (
        load_causal_lm,
        load_tokenizer,
        select_device,
        select_dtype,
        with_adapters,
    )

    db = warehouse.get()
    champion = current_champion(db)
    with stage_failures():
        if champion is None:
            raise StageError("no champion yet: comparisons start from the promoted supervised adapter")
    train = split_items(db, "train")
    prompts = prompts_from_splits(train, edge_case_questions(db))
    asked = prompts_compared(db, champion.version)
    settings = config.settings()
    dealt = assign_pairings([p for p in prompts if p.prompt_id not in asked], settings.max_prompts, settings.seed)
    if dealt:
        artifacts.get().fetch(f"adapters/{champion.version}", Path(champion.path))
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
        context.log.info(f"generating with {engine.choice.engine}: {engine.choice.reason}")
        examples = pick_examples(list(zip(train["question"], train["answer"])), seed=settings.seed)
        total = sum(1 if pairing == AUTHOR_VS_CHAMPION else 2 for _, pairing in dealt)
        done = 0

        def log_progress(count: int) -> None:
            nonlocal done
            done += count
            context.log.info(f"generated {done}/{total} answers")

        rows = generate_candidates(engine, tokenizer, dealt, "champion", examples, settings, log_progress)
        engine.close()
        fresh = pd.DataFrame(rows).assign(
            champion_version=champion.version, created_at=datetime.now(timezone.utc).replace(tzinfo=None)
        )
        db.insert_rows("preference_candidates", fresh)
        judge = llm.judge(config.judge, db, context)
        if judge is not None:
            db.insert_rows("preference_labels", pd.DataFrame(judge_prelabels(fresh, judge.complete, settings.seed)))
            context.log.info(f"LLM judge pre-labelled: {judge.usage.calls} calls, {judge.usage.cache_hits} from cache")
    else:
        context.log.info(f"every prompt already has a comparison for champion {champion.version}")
        fresh = pd.DataFrame(columns=["pairing", "question", "origin_a", "origin_b"])
    counts = labelling_counts(db)
    return dg.MaterializeResult(
        metadata={
            "new_comparisons": len(fresh),
            "by_pairing": dg.MetadataValue.json(fresh["pairing"].value_counts().to_dict()),
            "champion_version": champion.version,
            **counts,
            "label_them": "fine-tune-dag annotate",
            "preview": dg.MetadataValue.md(preview(fresh, ["pairing", "question", "origin_a", "origin_b"])),
        }
    )


@dg.asset(
    deps=[preference_candidates],
    group_name="preferences",
    pool="duckdb",
    kinds={"duckdb"},
    code_version="preference-pairs-1",
)
def preference_pairs(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
    """Chosen/rejected answers from the comparisons: a person's latest choice wins over the judge's; ties
    and skips are left out."""
    from fine_tune_dag.core.evaluation.preferences import pairs_from_labels

    db = warehouse.get()
    pairs, counts = pairs_from_labels(*candidates_and_labels(db))
    db.replace_rows("preference_pairs", pairs)
    if counts["overruled_judge"]:
        context.log.info(f"people overruled the judge on {counts['overruled_judge']} comparisons")
    return dg.MaterializeResult(
        metadata={
            "pairs": len(pairs),
            **counts,
            "chosen_origins": dg.MetadataValue.json(pairs["chosen_origin"].value_counts().to_dict()),
            "preview": dg.MetadataValue.md(preview(pairs, ["question", "chosen_origin", "rejected_origin", "labeler"])),
        },
        data_version=dg.DataVersion(fingerprint(pairs[["candidate_id", "chosen"]].values.tolist())),
    )
