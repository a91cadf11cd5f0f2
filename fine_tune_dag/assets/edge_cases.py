"""edge_cases: the hardest held-out questions and the user's own, answered by every adapter version."""

from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
import pandas as pd

from fine_tune_dag.assets.common import loads_its_own_model, stage_failures
from fine_tune_dag.assets.config import EdgeCaseConfig
from fine_tune_dag.assets.dataset import dataset_splits
from fine_tune_dag.assets.tags import GPU_STEP_TAGS
from fine_tune_dag.assets.training import lora_adapter
from fine_tune_dag.core.common.chat import DEFAULT_SYSTEM_PROMPT, chat_messages, render_prompt_ids
from fine_tune_dag.core.common.errors import StageError
from fine_tune_dag.core.dataset.splits import records_of
from fine_tune_dag.core.evaluation.edge_cases import hardest_for_base, read_user_cases, side_by_side
from fine_tune_dag.core.generation.base import EngineSettings, engine_precision
from fine_tune_dag.core.generation.engines import open_engine
from fine_tune_dag.core.models.memory_budget import resolve_memory_budget
from fine_tune_dag.core.store.edge_cases import edge_case_answers, main_line_adapters
from fine_tune_dag.core.store.edge_cases import edge_cases as edge_cases_table
from fine_tune_dag.core.store.registry import latest_adapter
from fine_tune_dag.core.store.splits import split_items
from fine_tune_dag.resources.paths import ProjectPaths
from fine_tune_dag.resources.warehouse import WarehouseResource

USER_CASES_FILE = "edge_cases.jsonl"


@dg.asset(
    deps=[lora_adapter, dataset_splits],
    group_name="evaluation",
    pool="gpu",
    op_tags=GPU_STEP_TAGS,
    kinds={"pytorch", "duckdb"},
    code_version="edge-cases-1",
)
@loads_its_own_model
def edge_cases(
    context: dg.AssetExecutionContext, config: EdgeCaseConfig, paths: ProjectPaths, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """Cases are kept once chosen; each model answers each case once, so every version is compared on them."""
    from fine_tune_dag.core.evaluation.measures import answer_nll
    from fine_tune_dag.core.generation.batch import generate_batch
    from fine_tune_dag.core.models.loading import (
        load_causal_lm,
        load_tokenizer,
        select_device,
        select_dtype,
        with_adapters,
    )
    from fine_tune_dag.core.workflows.evaluation import SHOWN_VERSIONS

    db = warehouse.get()
    newest = latest_adapter(db)
    with stage_failures():
        if newest is None:
            raise StageError("no adapter trained yet: materialize lora_adapter first")
    adapters = main_line_adapters(db, newest.base_model_path)
    budget = resolve_memory_budget(config.memory_budget_gb)  # before the weights take their share
    device = select_device(config.device)
    base = load_causal_lm(Path(newest.base_model_path), device, select_dtype(config.dtype, device))
    model = with_adapters(base, dict(zip(adapters.version, adapters.path)))
    tokenizer = load_tokenizer(Path(newest.path))

    test = split_items(db, "test")
    with model.disable_adapter():
        scores = answer_nll(model, tokenizer, [r["messages"] for r in records_of(test)], config.batch_size, budget)
    test["nll_per_token"] = scores["nll_sum"] / scores["answer_tokens"].clip(lower=1)
    user_cases, problems = read_user_cases(paths.data / USER_CASES_FILE)
    for problem in problems:
        context.log.warning(f"edge case skipped: {problem}")
    chosen = hardest_for_base(test, config.hardest) + user_cases
    known = set(edge_cases_table(db)["case_id"])
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    new_cases = pd.DataFrame([vars(c) | {"added_at": now} for c in chosen if c.case_id not in known])
    db.insert_rows("edge_cases", new_cases.drop_duplicates("case_id") if len(new_cases) else new_cases)
    cases = edge_cases_table(db)

    system = str(test["system"].iloc[0]) if len(test) else DEFAULT_SYSTEM_PROMPT
    answered = edge_case_answers(db)
    done = set(zip(answered["case_id"], answered["model"]))
    todo = {name: cases[[(c, name) not in done for c in cases["case_id"]]] for name in ["base", *adapters["version"]]}
    todo = {name: cases_left for name, cases_left in todo.items() if not cases_left.empty}
    folders = dict(zip(adapters.version.astype(str), adapters.path))
    engine = open_engine(  # only the versions with cases left: each one the engine runs is converted once
        Path(newest.base_model_path),
        {name: Path(folders[name]) for name in todo if name != "base"},
        tokenizer,
        EngineSettings(config.generation_engine, engine_precision(config.dtype), config.batch_size),  # type: ignore[arg-type]
        device,
        lambda: model,
    )
    context.log.info(f"generating with {engine.choice.engine}: {engine.choice.reason}")
    written = 0
    for name, todo_cases in todo.items():
        prompts = [render_prompt_ids(tokenizer, chat_messages(system, q)) for q in todo_cases["question"]]
        outputs = generate_batch(
            engine,
            tokenizer,
            prompts,
            config.max_new_tokens,
            batch_size=config.batch_size,
            adapter=None if name == "base" else name,
            memory_budget=budget,
        )
        answers = pd.DataFrame({"case_id": todo_cases["case_id"], "model": name, "answer": outputs, "created_at": now})
        db.insert_rows("edge_case_answers", answers)
        written += len(answers)
        context.log.info(f"{name}: answered {len(answers)} edge cases")
    shown = ["base", *adapters["version"].tolist()[-SHOWN_VERSIONS:]]
    answers = edge_case_answers(db)
    markdown = side_by_side(cases, answers, shown)
    folder = paths.reports / newest.version
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "edge_cases.md").write_text(f"# Edge cases\n\n{markdown}\n", encoding="utf-8")
    return dg.MaterializeResult(
        metadata={
            **engine.choice.metadata(),
            "cases": len(cases),
            "new_cases": len(new_cases),
            "from_user_file": len(user_cases),
            "user_file_problems": dg.MetadataValue.json(problems),
            "answers_generated": written,
            "versions_tracked": len(adapters),
            "memory_budget_gb": round(budget.gb, 2),
            "memory_budget_reason": budget.reason,
            "side_by_side": dg.MetadataValue.md(markdown),
        }
    )
