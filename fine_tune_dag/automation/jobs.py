"""Every job, in one place; sensors, schedules, the CLI and definitions import these objects, never names."""

import dagster as dg

from fine_tune_dag.assets.champion import champion_adapter
from fine_tune_dag.assets.chunking import passages
from fine_tune_dag.assets.crossval import CROSSVAL_FOLDS, CROSSVAL_VERDICT
from fine_tune_dag.assets.dataset import dataset_splits
from fine_tune_dag.assets.dpo import dpo_adapter
from fine_tune_dag.assets.edge_cases import edge_cases
from fine_tune_dag.assets.evaluation import eval_report
from fine_tune_dag.assets.forgetting import forget
from fine_tune_dag.assets.ingest import raw_notes
from fine_tune_dag.assets.models import base_model
from fine_tune_dag.assets.partitions import notes_partitions
from fine_tune_dag.assets.preferences import preference_candidates, preference_pairs
from fine_tune_dag.assets.retrieval import retrieval_index
from fine_tune_dag.assets.synthesis import qa_pairs
from fine_tune_dag.assets.teacher import prompt_completion_pairs, request_log_pairs
from fine_tune_dag.assets.training import lora_adapter

NOTE_ASSETS = [raw_notes, passages, qa_pairs]
TEACHER_ASSETS = [request_log_pairs, prompt_completion_pairs]
MODEL_ASSETS = [dataset_splits, retrieval_index, base_model, lora_adapter, edge_cases, eval_report, champion_adapter]
PREFERENCE_ASSETS = [preference_candidates, preference_pairs, dpo_adapter]
ALL_ASSETS = [*NOTE_ASSETS, *TEACHER_ASSETS, *MODEL_ASSETS, *PREFERENCE_ASSETS]

notes_job = dg.define_asset_job(
    "notes_job",
    selection=dg.AssetSelection.assets(*NOTE_ASSETS),
    partitions_def=notes_partitions,
    description="Parse, chunk and synthesize Q&A for one note partition.",
)
dataset_job = dg.define_asset_job(
    "dataset_job",
    selection=dg.AssetSelection.assets(dataset_splits, retrieval_index),
    description="Rebuild the train/test splits and the retrieval index from the notes that exist now.",
)
retrain_job = dg.define_asset_job(
    "retrain_job",
    selection=dg.AssetSelection.assets(lora_adapter, edge_cases, eval_report, champion_adapter),
    description="Train a new adapter on the current splits, evaluate it, promote it if it passes the gate.",
)
train_and_evaluate_job = dg.define_asset_job(
    "train_and_evaluate_job",
    selection=dg.AssetSelection.assets(*MODEL_ASSETS),
    description="Build the dataset from every note, train a new adapter, evaluate it and maybe promote it.",
)
comparisons_job = dg.define_asset_job(
    "comparisons_job",
    selection=dg.AssetSelection.assets(preference_candidates),
    description="New answer pairs for people to compare (fine-tune-dag annotate), from the champion and other sources.",
)
preference_job = dg.define_asset_job(
    "preference_job",
    selection=dg.AssetSelection.assets(preference_pairs, dpo_adapter, eval_report, champion_adapter),
    description="Learn from people's choices: preference pairs, a DPO adapter from the champion, its evaluation "
    "and promotion if it passes the gate.",
)

# The cross-validation assets are built per number of folds (assets/crossval.py), so selected by key.
crossval_job = dg.define_asset_job(
    "crossval_job",
    selection=dg.AssetSelection.assets(CROSSVAL_FOLDS),
    description="One fold of the cross-validated verdict: train on the other folds' notes, evaluate on this one's.",
)
crossval_verdict_job = dg.define_asset_job(
    "crossval_verdict_job",
    selection=dg.AssetSelection.assets(CROSSVAL_VERDICT),
    description="Pool every fold's items and decide: was fine-tuning worth it, on every note held out once?",
)



@dg.job(
    description="Forget one note (config: its file or partition key): its derived data everywhere, the adapters "
    "trained on it, the champion if it was one; retrain_after_forget then trains without it."
)
def forget_job() -> None:
    forget()


JOBS = [
    notes_job,
    dataset_job,
    retrain_job,
    train_and_evaluate_job,
    comparisons_job,
    preference_job,
    crossval_job,
    crossval_verdict_job,
    forget_job,
]
TRAINING_JOBS = (retrain_job, train_and_evaluate_job)  # the jobs that train an adapter
