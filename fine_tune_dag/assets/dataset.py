"""dataset_splits: kept pairs of all current notes, split by note hash, exported as chat JSONL."""

from datetime import datetime, timezone

import dagster as dg
import pandas as pd

from fine_tune_dag.assets.common import reports_peak_memory, stage_failures
from fine_tune_dag.assets.config import SplitConfig
from fine_tune_dag.assets.models import base_model
from fine_tune_dag.assets.partitions import notes_partitions
from fine_tune_dag.assets.review import pair_labels
from fine_tune_dag.assets.synthesis import qa_pairs
from fine_tune_dag.assets.teacher import prompt_completion_pairs, request_log_pairs
from fine_tune_dag.core.common.chat import render_training_example
from fine_tune_dag.core.common.markdown import length_summary, preview
from fine_tune_dag.core.common.metadata_keys import DATASET_VERSION, TRAIN_NOTES_LOST, TRAIN_PAIRS
from fine_tune_dag.core.dataset.splits import assign_splits, dataset_version, records_of, write_jsonl
from fine_tune_dag.core.dataset.writing import WRITING_MODES
from fine_tune_dag.core.store.notes import note_files, paths_outside, trainable_notes
from fine_tune_dag.core.store.registry import latest_adapter
from fine_tune_dag.core.store.splits import train_notes
from fine_tune_dag.core.store.warehouse import Warehouse
from fine_tune_dag.core.synthesis.qa_pairs import MODES
from fine_tune_dag.core.training.sft_config import TrainingSettings
from fine_tune_dag.core.workflows.dataset import dataset_pairs
from fine_tune_dag.resources.models import ModelsResource
from fine_tune_dag.resources.paths import ProjectPaths
from fine_tune_dag.resources.warehouse import WarehouseResource


def notes_of(db: Warehouse, splits: pd.DataFrame, version: str) -> pd.DataFrame:
    """Which note (file and content hash) gave how many pairs to which side of this dataset version: lineage."""
    from_notes = splits[splits["mode"].isin(MODES + WRITING_MODES)]
    counts = from_notes.groupby(["note_id", "split"]).size().rename("pairs").reset_index()
    return counts.merge(note_files(db), on="note_id", how="left").assign(dataset_version=version)


@dg.asset(
    deps=[qa_pairs, request_log_pairs, prompt_completion_pairs, base_model, pair_labels],
    group_name="dataset",
    pool="duckdb",
    kinds={"python", "duckdb"},
    code_version="splits-4",
)
@reports_peak_memory
def dataset_splits(
    context: dg.AssetExecutionContext,
    config: SplitConfig,
    paths: ProjectPaths,
    warehouse: WarehouseResource,
    models: ModelsResource,
) -> dg.MaterializeResult:
    """Train/test pairs; token counts use the base model's tokenizer and the one chat template."""
    from fine_tune_dag.core.models.loading import load_tokenizer

    db = warehouse.get()
    note_ids = context.instance.get_dynamic_partitions(notes_partitions.name)
    excluded = paths_outside(db, note_ids)
    trainable, rejected, duplicates = trainable_notes(db, note_ids)
    with stage_failures():
        kept, quality = dataset_pairs(db, trainable, config.settings())
    splits = assign_splits(kept, config.test_fraction, config.system_prompt)
    tokenizer = load_tokenizer(models.resolve().path)
    rendered = [render_training_example(tokenizer, r["messages"]) for r in records_of(splits)]
    splits["prompt_tokens"] = [e.prompt_length for e in rendered]
    splits["answer_tokens"] = [len(e.input_ids) - e.prompt_length for e in rendered]
    version = dataset_version(splits)
    splits["dataset_version"] = version
    db.replace_rows("dataset_splits", splits)
    export = paths.exports / version
    files = {
        side: write_jsonl(export / f"{side}.jsonl", records_of(splits[splits["split"] == side]))
        for side in ("train", "test")
    }
    tokens = (splits["prompt_tokens"] + splits["answer_tokens"]).groupby(splits["split"]).sum()
    side = {s: splits[splits["split"] == s] for s in ("train", "test")}
    summary = {  # a row of dataset_versions, whose column names are the metadata keys automation reads
        DATASET_VERSION: version,
        "created_at": datetime.now(timezone.utc).replace(tzinfo=None),
        TRAIN_PAIRS: len(side["train"]),
        "test_pairs": len(side["test"]),
        "train_notes": side["train"]["note_id"].nunique(),
        "test_notes": side["test"]["note_id"].nunique(),
        "train_tokens": int(tokens.get("train", 0)),
        "test_tokens": int(tokens.get("test", 0)),
        "train_path": str(files["train"]),
        "test_path": str(files["test"]),
        "reviewed_train_pairs": int(side["train"]["reviewed"].sum()),
    }
    trained = latest_adapter(db)  # before this version's lineage joins dataset_notes
    lost = train_notes(db, trained.dataset_version) - set(side["train"]["note_id"]) if trained is not None else set()
    db.insert_rows("dataset_versions", pd.DataFrame([summary]))
    db.insert_rows("dataset_notes", notes_of(db, splits, version))
    if side["test"].empty:
        context.log.warning("the test split is empty: add notes or raise test_fraction to evaluate adapters")
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(splits),
            **{k: v for k, v in summary.items() if k not in ("created_at", "train_path", "test_path")},
            TRAIN_NOTES_LOST: len(lost),
            "notes_excluded": dg.MetadataValue.json(excluded),
            "notes_rejected": dg.MetadataValue.json(
                dict(zip(rejected["path"].fillna(rejected["note_id"]), rejected["reason"]))
            ),
            "duplicate_notes": dg.MetadataValue.json(duplicates),
            **quality,
            "weight_by_source_kind": dg.MetadataValue.json(splits.groupby("source_kind")["weight"].sum().to_dict()),
            "estimated_training_tokens": dg.MetadataValue.int(int(summary["train_tokens"] * TrainingSettings.epochs)),
            "answer_tokens": dg.MetadataValue.json(length_summary(splits["answer_tokens"].tolist())),
            "train_jsonl": dg.MetadataValue.path(str(files["train"])),
            "test_jsonl": dg.MetadataValue.path(str(files["test"])),
            "preview": dg.MetadataValue.md(preview(splits, ["split", "mode", "question", "answer"], rows=6)),
        },
        data_version=dg.DataVersion(version),
    )
