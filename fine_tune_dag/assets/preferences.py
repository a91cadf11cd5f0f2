"""preference_candidates → (people choose on `fine-tune-dag annotate`) → preference_pairs.

Neither asset runs on its own: comparisons cost model time and wait for people, so they are
materialized when someone wants more to label (`preference_candidates`) or has labelled
(`preference_pairs`, then `dpo_adapter`).
"""

from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
import pandas as pd
from pydantic import Field

from fine_tune_dag.assets.dataset import dataset_splits
from fine_tune_dag.assets.edge_cases import edge_cases
from fine_tune_dag.assets.evaluation import SPLIT_ITEMS_SQL
from fine_tune_dag.assets.tags import GPU_STEP_TAGS
from fine_tune_dag.core.modeling.evaluation import pick_examples
from fine_tune_dag.core.modeling.models import (
    load_causal_lm,
    load_tokenizer,
    select_device,
    select_dtype,
    with_adapters,
)
from fine_tune_dag.core.modeling.preferences import (
    AUTHOR_VS_CHAMPION,
    PreferenceSettings,
    assign_pairings,
    generate_candidates,
    judge_prelabels,
    pairs_from_labels,
    prompts_from_splits,
)
from fine_tune_dag.core.store.fingerprint import fingerprint
from fine_tune_dag.core.store.registry import current_champion
from fine_tune_dag.core.text.markdown import preview
from fine_tune_dag.resources.artifacts import ArtifactStoreResource
from fine_tune_dag.resources.llm import LLMResource
from fine_tune_dag.resources.warehouse import WarehouseResource

_DEFAULTS = PreferenceSettings()


class PreferenceCandidatesConfig(dg.Config):
    max_prompts: int = Field(default=_DEFAULTS.max_prompts, description="new comparisons per materialization")
    max_new_tokens: int = _DEFAULTS.max_new_tokens
    low_temperature: float = _DEFAULTS.low_temperature
    high_temperature: float = _DEFAULTS.high_temperature
    batch_size: int = _DEFAULTS.batch_size
    seed: int = _DEFAULTS.seed
    device: str = "auto"
    dtype: str = "auto"
    judge: str = Field(
        default="auto", description="pre-label with the LLM judge: 'auto' (when the LLM is Gemini), 'llm', or 'none'"
    )

    def settings(self) -> PreferenceSettings:
        return PreferenceSettings(
            self.max_prompts,
            self.max_new_tokens,
            self.low_temperature,
            self.high_temperature,
            self.batch_size,
            self.seed,
        )


@dg.asset(
    # The champion is read from the registry when the step runs, as eval_report reads it: a declared
    # dependency would close a cycle (champion → comparisons → DPO → evaluation → champion). Every
    # comparison records the champion version it came from.
    deps=[dataset_splits, edge_cases],
    group_name="preferences",
    pool="gpu",
    op_tags=GPU_STEP_TAGS,
    kinds={"pytorch", "duckdb"},
    code_version=f"preference-candidates-1+{fingerprint(_DEFAULTS)}",
)
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
    db = warehouse.get()
    champion = current_champion(db)
    if champion is None:
        raise dg.Failure(
            description="no champion yet: comparisons start from the promoted supervised adapter", allow_retries=False
        )
    train = db.query(SPLIT_ITEMS_SQL, ["train"])
    prompts = prompts_from_splits(train, db.query("SELECT case_id, question, reference FROM edge_cases"))
    asked = set(
        db.query("SELECT prompt_id FROM preference_candidates WHERE champion_version = ?", [champion.version])[
            "prompt_id"
        ]
    )
    settings = config.settings()
    dealt = assign_pairings([p for p in prompts if p.prompt_id not in asked], settings.max_prompts, settings.seed)
    if dealt:
        artifacts.get().fetch(f"adapters/{champion.version}", Path(champion.path))
        device = select_device(config.device)
        base = load_causal_lm(Path(champion.base_model_path), device, select_dtype(config.dtype, device))
        model = with_adapters(base, {"champion": champion.path})
        examples = pick_examples(list(zip(train["question"], train["answer"])), seed=settings.seed)
        total = sum(1 if pairing == AUTHOR_VS_CHAMPION else 2 for _, pairing in dealt)
        done = 0

        def log_progress(count: int) -> None:
            nonlocal done
            done += count
            context.log.info(f"generated {done}/{total} answers")

        rows = generate_candidates(
            model, load_tokenizer(Path(champion.path)), dealt, "champion", examples, settings, log_progress
        )
        fresh = pd.DataFrame(rows).assign(
            champion_version=champion.version, created_at=datetime.now(timezone.utc).replace(tzinfo=None)
        )
        db.insert_rows("preference_candidates", fresh)
        if config.judge == "llm" or (config.judge == "auto" and llm.provider == "gemini"):
            judge = llm.cached(db, context)
            db.insert_rows("preference_labels", pd.DataFrame(judge_prelabels(fresh, judge.complete, settings.seed)))
            context.log.info(f"LLM judge pre-labelled: {judge.usage.calls} calls, {judge.usage.cache_hits} from cache")
    else:
        context.log.info(f"every prompt already has a comparison for champion {champion.version}")
        fresh = pd.DataFrame(columns=["pairing", "question", "origin_a", "origin_b"])
    counts = db.query(
        "SELECT (SELECT count(*) FROM preference_candidates) AS comparisons, "
        "(SELECT count(DISTINCT candidate_id) FROM preference_labels WHERE source = 'human') AS labelled_by_people, "
        "(SELECT count(DISTINCT candidate_id) FROM preference_labels WHERE source = 'judge') AS prelabelled"
    ).iloc[0]
    return dg.MaterializeResult(
        metadata={
            "new_comparisons": len(fresh),
            "by_pairing": dg.MetadataValue.json(fresh["pairing"].value_counts().to_dict()),
            "champion_version": champion.version,
            **{name: int(value) for name, value in counts.items()},
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
    db = warehouse.get()
    pairs, counts = pairs_from_labels(
        db.query("SELECT * FROM preference_candidates ORDER BY created_at, candidate_id"),
        db.query("SELECT * FROM preference_labels"),
    )
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
