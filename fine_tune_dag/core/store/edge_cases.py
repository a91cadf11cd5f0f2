"""Queries over the edge cases and every model's answers to them."""

from __future__ import annotations

import pandas as pd

from fine_tune_dag.core.store.registry import MAIN_LINE
from fine_tune_dag.core.store.warehouse import Warehouse


def main_line_adapters(db: Warehouse, base_model_path: str) -> pd.DataFrame:
    """Version and path of every main-line adapter on this base model, oldest first."""
    return db.query(
        f"SELECT version, path FROM adapters WHERE base_model_path = ? AND {MAIN_LINE} ORDER BY created_at, version",
        [base_model_path],
    )


def versions_up_to(db: Warehouse, version: str) -> list[str]:
    """Adapter versions created up to this one, oldest first."""
    created = db.query("SELECT created_at FROM adapters WHERE version = ?", [version])["created_at"].iloc[0]
    return db.query("SELECT version FROM adapters WHERE created_at <= ? ORDER BY created_at, version", [created])[
        "version"
    ].tolist()


def edge_cases(db: Warehouse) -> pd.DataFrame:
    return db.query("SELECT * FROM edge_cases ORDER BY added_at, case_id")


def edge_case_questions(db: Warehouse) -> pd.DataFrame:
    return db.query("SELECT case_id, question, reference FROM edge_cases")


def edge_case_answers(db: Warehouse) -> pd.DataFrame:
    return db.query("SELECT case_id, model, answer FROM edge_case_answers")


def add_edge_cases(db: Warehouse, cases: pd.DataFrame) -> None:
    """Newly chosen cases (`case_id`, `question`, `reference`, `origin`, `added_at`); a case is kept once chosen."""
    db.insert_rows("edge_cases", cases)


def save_edge_case_answers(db: Warehouse, answers: pd.DataFrame) -> None:
    """One model's answers (`case_id`, `model`, `answer`, `created_at`): each model answers each case once."""
    db.insert_rows("edge_case_answers", answers)
