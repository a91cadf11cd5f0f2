"""Edge cases: the held-out questions the base model finds hardest and the user's own, chosen once and answered
once by every main-line adapter version, in the evaluation's settings (dtype, device, engine), so the answers
eval_report shows beside its own were generated as it generates."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
from peft import PeftModel

from fine_tune_dag.core.common.chat import DEFAULT_SYSTEM_PROMPT, chat_messages, render_prompt_ids
from fine_tune_dag.core.common.errors import StageError
from fine_tune_dag.core.common.markdown import Markdown
from fine_tune_dag.core.dataset.splits import records_of
from fine_tune_dag.core.evaluation.config import EvaluationSettings
from fine_tune_dag.core.evaluation.edge_cases import EdgeCase, hardest_for_base, read_user_cases, side_by_side
from fine_tune_dag.core.evaluation.measures import answer_nll
from fine_tune_dag.core.generation.base import GenerationEngine
from fine_tune_dag.core.generation.batch import generate_batch
from fine_tune_dag.core.models.loading import load_causal_lm, load_tokenizer, select_device, select_dtype, with_adapters
from fine_tune_dag.core.models.memory_budget import MemoryBudget, resolve_memory_budget
from fine_tune_dag.core.store.edge_cases import (
    add_edge_cases,
    edge_case_answers,
    edge_cases,
    main_line_adapters,
    save_edge_case_answers,
)
from fine_tune_dag.core.store.layout import DataLayout
from fine_tune_dag.core.store.registry import latest_adapter
from fine_tune_dag.core.store.splits import split_items
from fine_tune_dag.core.store.warehouse import Warehouse
from fine_tune_dag.core.workflows.adapters import Log
from fine_tune_dag.core.workflows.evaluation import SHOWN_VERSIONS, contender_engine

USER_CASES_FILE = "edge_cases.jsonl"


@dataclass(frozen=True)
class ChosenCases:
    """What choosing added: cases new to the table, those read from the user's file and the file's bad lines."""

    new: int
    from_user_file: int
    problems: list[str]


def choose_cases(
    db: Warehouse,
    model: PeftModel,
    tokenizer: Any,
    hardest: int,
    user_file: Path,
    settings: EvaluationSettings,
    budget: MemoryBudget,
    log: Log,
) -> ChosenCases:
    """The `hardest` test items for the base model (`model` with its adapters off) and the user's cases, added
    to the table unless already there; a bad line of the user's file is reported and skipped."""
    test = split_items(db, "test")
    with model.disable_adapter():
        scores = answer_nll(model, tokenizer, [r["messages"] for r in records_of(test)], settings.batch_size, budget)
    test["nll_per_token"] = scores["nll_sum"] / scores["answer_tokens"].clip(lower=1)
    user_cases, problems = read_user_cases(user_file)
    for problem in problems:
        log.warning(f"edge case skipped: {problem}")
    chosen: list[EdgeCase] = hardest_for_base(test, hardest) + user_cases
    known = set(edge_cases(db)["case_id"])
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    new_cases = pd.DataFrame([vars(c) | {"added_at": now} for c in chosen if c.case_id not in known])
    new_cases = new_cases.drop_duplicates("case_id") if len(new_cases) else new_cases
    add_edge_cases(db, new_cases)
    return ChosenCases(len(new_cases), len(user_cases), problems)


def unanswered(db: Warehouse, models: list[str]) -> dict[str, pd.DataFrame]:
    """Each model's cases it has not answered yet; models with none left are left out."""
    cases = edge_cases(db)
    answered = edge_case_answers(db)
    done = set(zip(answered["case_id"], answered["model"]))
    todo = {name: cases[[(c, name) not in done for c in cases["case_id"]]] for name in models}
    return {name: left for name, left in todo.items() if not left.empty}


def answer_cases(
    db: Warehouse,
    engine: GenerationEngine,
    tokenizer: Any,
    todo: dict[str, pd.DataFrame],
    system: str,
    settings: EvaluationSettings,
    budget: MemoryBudget,
    log: Log,
) -> int:
    """Every model's answers to its cases left (greedy, the evaluation's answer length), stored model by model;
    returns how many were written."""
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    written = 0
    for name, cases in todo.items():
        prompts = [render_prompt_ids(tokenizer, chat_messages(system, q)) for q in cases["question"]]
        outputs = generate_batch(
            engine,
            tokenizer,
            prompts,
            settings.max_new_tokens,
            batch_size=settings.batch_size,
            adapter=None if name == "base" else name,
            memory_budget=budget,
        )
        save_edge_case_answers(
            db, pd.DataFrame({"case_id": cases["case_id"], "model": name, "answer": outputs, "created_at": now})
        )
        written += len(cases)
        log.info(f"{name}: answered {len(cases)} edge cases")
    return written


def track_edge_cases(
    db: Warehouse, hardest: int, settings: EvaluationSettings, layout: DataLayout, log: Log
) -> dict[str, Any]:
    """Choose new cases, answer every case each main-line version (and the base model) has not answered, and
    write the side-by-side table to the newest version's report folder; returns the metadata."""
    newest = latest_adapter(db)
    if newest is None:
        raise StageError("no adapter trained yet: materialize lora_adapter first")
    adapters = main_line_adapters(db, newest.base_model_path)
    budget = resolve_memory_budget(settings.memory_budget_gb)  # before the weights take their share
    device = select_device(settings.device)
    base = load_causal_lm(Path(newest.base_model_path), device, select_dtype(settings.dtype, device))
    model = with_adapters(base, dict(zip(adapters.version, adapters.path)))
    tokenizer = load_tokenizer(Path(newest.path))
    chosen = choose_cases(db, model, tokenizer, hardest, layout.data / USER_CASES_FILE, settings, budget, log)

    test = split_items(db, "test")
    system = str(test["system"].iloc[0]) if len(test) else DEFAULT_SYSTEM_PROMPT
    todo = unanswered(db, ["base", *adapters["version"]])
    folders = dict(zip(adapters.version.astype(str), adapters.path))
    # only the versions with cases left: each one the engine runs is converted once
    wanted = {name: folders[name] for name in todo if name != "base"}
    engine = contender_engine(Path(newest.base_model_path), wanted, tokenizer, settings, device, model, log)
    written = answer_cases(db, engine, tokenizer, todo, system, settings, budget, log)
    engine.close()

    cases = edge_cases(db)
    markdown = side_by_side(cases, edge_case_answers(db), ["base", *adapters["version"].tolist()[-SHOWN_VERSIONS:]])
    folder = layout.reports / newest.version
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "edge_cases.md").write_text(f"# Edge cases\n\n{markdown}\n", encoding="utf-8")
    return {
        **engine.choice.metadata(),
        "cases": len(cases),
        "new_cases": chosen.new,
        "from_user_file": chosen.from_user_file,
        "user_file_problems": chosen.problems,
        "answers_generated": written,
        "versions_tracked": len(adapters),
        "memory_budget_gb": round(budget.gb, 2),
        "memory_budget_reason": budget.reason,
        "side_by_side": Markdown(markdown),
    }
