"""dataset_splits: kept pairs of all current notes, split by note hash, exported as chat JSONL."""

from datetime import datetime, timezone

import dagster as dg
import pandas as pd
from pydantic import Field

from fine_tune_dag.assets.models import base_model
from fine_tune_dag.assets.partitions import notes_partitions
from fine_tune_dag.assets.synthesis import qa_pairs
from fine_tune_dag.assets.teacher import prompt_completion_pairs, request_log_pairs
from fine_tune_dag.automation.conditions import dataset_condition
from fine_tune_dag.core.modeling.chat import DEFAULT_SYSTEM_PROMPT, render_training_example
from fine_tune_dag.core.modeling.models import load_tokenizer
from fine_tune_dag.core.modeling.sft import TrainingSettings
from fine_tune_dag.core.store.warehouse import Warehouse
from fine_tune_dag.core.text.markdown import length_summary, preview
from fine_tune_dag.core.text.splits import (
    DEFAULT_TEST_FRACTION,
    assign_splits,
    dataset_version,
    records_of,
    write_jsonl,
)
from fine_tune_dag.core.text.synthesis import MODES
from fine_tune_dag.resources.models import ModelsResource
from fine_tune_dag.resources.paths import ProjectPaths
from fine_tune_dag.resources.warehouse import WarehouseResource


class SplitConfig(dg.Config):
    test_fraction: float = Field(
        default=DEFAULT_TEST_FRACTION, description="share of notes held out; assigned by a hash of the note id"
    )
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    sources: list[str] = Field(
        default=["notes"],
        description="where pairs come from: 'notes', 'request_log' (request_log_pairs), "
        "'prompt_completion' (prompt_completion_pairs), or a mix",
    )


SOURCES = ("notes", "request_log", "prompt_completion")


def kept_pairs(db: Warehouse, source: str, note_ids: list[str]) -> pd.DataFrame:
    """Pairs of one source; teacher pairs are split one by one (their group is the pair), notes by note."""
    if source == "notes":
        return db.query(
            "SELECT pair_id, note_id, mode, NULL AS system, question, answer FROM qa_pairs "
            "WHERE status = 'kept' AND note_id IN (SELECT unnest(?::VARCHAR[]))",
            [note_ids],
        )
    return db.query(
        f"SELECT pair_id, '{source}:' || pair_id AS note_id, '{source}' AS mode, system, question, answer "
        f"FROM {source}_pairs"
    )


def trainable_notes(db: Warehouse, note_ids: list[str]) -> tuple[list[str], pd.DataFrame, dict[str, str]]:
    """Registered notes that parse now, one per distinct content; plus the rejected and the copies.

    A rejected note's rows from an earlier good version stay in the warehouse but out of training,
    and a copy of another note would put the same pairs on both sides of the split.
    """
    rejected = db.query(
        "SELECT note_id, path, reason FROM rejected_notes WHERE note_id IN (SELECT unnest(?::VARCHAR[])) ORDER BY path",
        [note_ids],
    )
    parsed = db.query(
        "SELECT note_id, path, sha256 FROM raw_notes WHERE note_id IN (SELECT unnest(?::VARCHAR[])) "
        "AND note_id NOT IN (SELECT note_id FROM rejected_notes) ORDER BY path",
        [note_ids],
    )
    first_path = parsed.drop_duplicates("sha256").set_index("sha256")["path"]
    copies = parsed[parsed.duplicated("sha256")]
    duplicates = {row.path: first_path[row.sha256] for row in copies.itertuples()}
    return parsed[~parsed.duplicated("sha256")]["note_id"].tolist(), rejected, duplicates


def notes_of(db: Warehouse, splits: pd.DataFrame, version: str) -> pd.DataFrame:
    """Which note (file and content hash) gave how many pairs to which side of this dataset version: lineage."""
    from_notes = splits[splits["mode"].isin(MODES)]
    counts = from_notes.groupby(["note_id", "split"]).size().rename("pairs").reset_index()
    files = db.query("SELECT note_id, path, sha256 FROM raw_notes")
    return counts.merge(files, on="note_id", how="left").assign(dataset_version=version)


@dg.asset(
    deps=[qa_pairs, request_log_pairs, prompt_completion_pairs, base_model],
    group_name="dataset",
    pool="duckdb",
    kinds={"python", "duckdb"},
    code_version="splits-2",
    automation_condition=dataset_condition(),
)
def dataset_splits(
    context: dg.AssetExecutionContext,
    config: SplitConfig,
    paths: ProjectPaths,
    warehouse: WarehouseResource,
    models: ModelsResource,
) -> dg.MaterializeResult:
    """Train/test pairs; token counts use the base model's tokenizer and the one chat template."""
    db = warehouse.get()
    note_ids = context.instance.get_dynamic_partitions(notes_partitions.name)
    excluded = db.query(
        "SELECT DISTINCT path FROM raw_notes WHERE note_id NOT IN (SELECT unnest(?::VARCHAR[])) ORDER BY path",
        [note_ids],
    )["path"].tolist()
    unknown = set(config.sources) - set(SOURCES)
    if unknown:
        raise dg.Failure(description=f"unknown sources {sorted(unknown)}; choose from {SOURCES}", allow_retries=False)
    trainable, rejected, duplicates = trainable_notes(db, note_ids)
    kept = pd.concat([kept_pairs(db, source, trainable) for source in config.sources], ignore_index=True)
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
    summary = {
        "dataset_version": version,
        "created_at": datetime.now(timezone.utc).replace(tzinfo=None),
        "train_pairs": len(side["train"]),
        "test_pairs": len(side["test"]),
        "train_notes": side["train"]["note_id"].nunique(),
        "test_notes": side["test"]["note_id"].nunique(),
        "train_tokens": int(tokens.get("train", 0)),
        "test_tokens": int(tokens.get("test", 0)),
        "train_path": str(files["train"]),
        "test_path": str(files["test"]),
    }
    db.insert_rows("dataset_versions", pd.DataFrame([summary]))
    db.insert_rows("dataset_notes", notes_of(db, splits, version))
    if side["test"].empty:
        context.log.warning("the test split is empty: add notes or raise test_fraction to evaluate adapters")
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(splits),
            **{k: v for k, v in summary.items() if k not in ("created_at", "train_path", "test_path")},
            "notes_excluded": dg.MetadataValue.json(excluded),
            "notes_rejected": dg.MetadataValue.json(
                dict(zip(rejected["path"].fillna(rejected["note_id"]), rejected["reason"]))
            ),
            "duplicate_notes": dg.MetadataValue.json(duplicates),
            "estimated_training_tokens": dg.MetadataValue.int(int(summary["train_tokens"] * TrainingSettings.epochs)),
            "answer_tokens": dg.MetadataValue.json(length_summary(splits["answer_tokens"].tolist())),
            "train_jsonl": dg.MetadataValue.path(str(files["train"])),
            "test_jsonl": dg.MetadataValue.path(str(files["test"])),
            "preview": dg.MetadataValue.md(preview(splits, ["split", "mode", "question", "answer"], rows=6)),
        },
        data_version=dg.DataVersion(version),
    )
