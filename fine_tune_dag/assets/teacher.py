"""Teacher → student datasets: the LLM's logged answers, or a user's prompts answered by the teacher,
as training pairs for a smaller model trained by the same `lora_adapter`."""

from datetime import datetime
from pathlib import Path

import dagster as dg
import pandas as pd

from fine_tune_dag.assets.chunking import passages
from fine_tune_dag.assets.common import llm_usage_metadata
from fine_tune_dag.assets.config import PromptCompletionConfig, RequestLogConfig
from fine_tune_dag.assets.synthesis import qa_pairs
from fine_tune_dag.core.common.llm_types import LLMRequest
from fine_tune_dag.core.common.markdown import length_summary, preview
from fine_tune_dag.core.store.notes import save_prompt_completion_pairs, save_request_log_pairs
from fine_tune_dag.core.store.request_log import answered_requests
from fine_tune_dag.core.synthesis.teacher import (
    PAIR_COLUMNS,
    PromptFileError,
    PromptRow,
    pairs_from_request_log,
    parse_generated_inputs,
    read_prompt_file,
    teacher_pair_id,
)
from fine_tune_dag.prompts import load_prompt
from fine_tune_dag.resources.llm import LLMResource
from fine_tune_dag.resources.warehouse import WarehouseResource

ANSWER_TEMPLATE = load_prompt("prompt_completion")
GENERATOR_TEMPLATE = load_prompt("input_generator")


def _metadata(pairs: pd.DataFrame) -> dict:
    return {
        "dagster/row_count": len(pairs),
        "answer_words": dg.MetadataValue.json(length_summary([len(a.split()) for a in pairs["answer"]])),
        "preview": dg.MetadataValue.md(preview(pairs, ["template", "question", "answer"])),
    }


@dg.asset(
    deps=[passages, qa_pairs],
    group_name="dataset",
    pool="duckdb",
    kinds={"duckdb"},
    code_version="request-log-pairs-1",
)
def request_log_pairs(config: RequestLogConfig, warehouse: WarehouseResource) -> dg.MaterializeResult:
    """Every distinct answered request of the chosen templates, assets and dates, as a student pair."""
    db = warehouse.get()
    since, until = (datetime.fromisoformat(bound) if bound else None for bound in (config.since, config.until))
    requests = answered_requests(db, config.templates, config.assets, since, until)
    pairs = pairs_from_request_log(requests)
    save_request_log_pairs(db, pairs)
    return dg.MaterializeResult(metadata={"templates": dg.MetadataValue.json(config.templates), **_metadata(pairs)})


@dg.asset(
    group_name="dataset",
    pool="duckdb",
    kinds={"duckdb"},
    code_version=f"prompt-completion-1+{ANSWER_TEMPLATE.tag}+{GENERATOR_TEMPLATE.tag}",
)
def prompt_completion_pairs(
    context: dg.AssetExecutionContext,
    config: PromptCompletionConfig,
    warehouse: WarehouseResource,
    llm: LLMResource,
) -> dg.MaterializeResult:
    """A user's prompts (or the teacher's invented ones) with the teacher's completions."""
    db = warehouse.get()
    cached = llm.cached(db, context)
    if config.prompts_file:
        try:
            rows = read_prompt_file(Path(config.prompts_file))
        except PromptFileError as error:
            raise dg.Failure(description=str(error), metadata={"file": error.path}, allow_retries=False) from error
        origin = config.prompts_file
    elif config.generator_task:
        generated = cached.complete(
            [LLMRequest.from_template(GENERATOR_TEMPLATE, 1024, count=str(config.count), task=config.generator_task)]
        )[0]
        rows = [PromptRow(prompt) for prompt in parse_generated_inputs(generated, config.count)]
        origin = f"generated: {config.generator_task}"
    else:
        raise dg.Failure(description="set prompts_file or generator_task in the config", allow_retries=False)
    unanswered = [row.prompt for row in rows if not row.completion]
    answers = dict(
        zip(
            unanswered,
            cached.complete(
                [LLMRequest.from_template(ANSWER_TEMPLATE, config.max_new_tokens, prompt=p) for p in unanswered]
            ),
        )
    )
    system = ANSWER_TEMPLATE.system.strip()
    pairs = pd.DataFrame(
        [
            [teacher_pair_id("prompt_completion", system, row.prompt), "prompt_completion", ANSWER_TEMPLATE.name]
            + [system, row.prompt, row.completion or answers[row.prompt]]
            for row in rows
            if (row.completion or answers[row.prompt]).strip()
        ],
        columns=PAIR_COLUMNS,
    ).drop_duplicates("pair_id")
    save_prompt_completion_pairs(db, pairs)
    return dg.MaterializeResult(
        metadata={
            "origin": origin,
            "prompts": len(rows),
            **llm_usage_metadata(cached.usage, cached.client),
            **_metadata(pairs),
        }
    )
