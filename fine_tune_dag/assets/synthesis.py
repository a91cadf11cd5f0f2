"""qa_pairs: synthetic questions for each passage, filtered, with kept and rejected both stored."""

from collections import Counter

import dagster as dg
import pandas as pd

from fine_tune_dag.assets.chunking import passages
from fine_tune_dag.assets.common import llm_usage_metadata, reports_peak_memory, stage_failures
from fine_tune_dag.assets.config import SynthesisConfig
from fine_tune_dag.assets.partitions import notes_partitions
from fine_tune_dag.core.common.fingerprint import fingerprint
from fine_tune_dag.core.common.markdown import preview, table
from fine_tune_dag.core.store.notes import rows_for_note, save_qa_pairs
from fine_tune_dag.core.synthesis.chunking import Passage
from fine_tune_dag.core.synthesis.pair_judge import (
    JUDGE_REJECTION,
    JUDGE_TEMPLATE,
    Judgement,
    apply_judgements,
    judge_request,
    parse_judgement,
)
from fine_tune_dag.core.synthesis.qa_pairs import (
    NEAR_DUPLICATE_QUESTION,
    TEMPLATES,
    SynthesisSettings,
    candidate_pairs,
    filter_pairs,
    synthesis_request,
)
from fine_tune_dag.resources.llm import LLMResource
from fine_tune_dag.resources.warehouse import WarehouseResource


@dg.asset(
    partitions_def=notes_partitions,
    # no pool: its LLM calls hold nothing another note needs, and its one write is a short transaction
    deps=[passages],
    group_name="dataset",
    kinds={"python", "duckdb"},
    code_version="+".join(
        ["synthesis-2", *(t.tag for t in (*TEMPLATES.values(), JUDGE_TEMPLATE)), fingerprint(SynthesisSettings())]
    ),
)
@reports_peak_memory
def qa_pairs(
    context: dg.AssetExecutionContext, config: SynthesisConfig, warehouse: WarehouseResource, llm: LLMResource
) -> dg.MaterializeResult:
    """Grounded Q&A and instruction back-translation pairs, each checked against its passage."""
    note_id = context.partition_key
    settings = config.settings()
    db = warehouse.get()
    with stage_failures():
        rows = rows_for_note(db, "passages", note_id, "passages", order_by="passage_index")
    note_passages = [
        Passage(r.note_id, r.passage_index, r.start_char, r.end_char, r.text, r.topic, r.strategy)
        for r in rows.itertuples(index=False)
    ]
    jobs = [(p, mode) for p in note_passages for mode in settings.modes]
    cached = llm.cached(db, context)
    done = 0

    def log_progress(count: int) -> None:
        nonlocal done
        done += count
        context.log.info(f"{note_id}: {done}/{len(jobs)} synthesis requests answered")

    with stage_failures():  # under the privacy policy 'block', a note with personal data fails here, saying why
        answers = cached.complete([synthesis_request(p, mode, settings) for p, mode in jobs], on_progress=log_progress)
    candidates = [
        (pair, p)
        for (p, mode), answer in zip(jobs, answers)
        for pair in candidate_pairs(p, mode, answer, settings.questions_per_passage)
    ]
    filtered = filter_pairs(candidates, settings)
    judge = llm.judge(config.judge, db, context)
    judgements: dict[str, Judgement] = {}
    if judge is not None:
        by_index = {p.index: p for p in note_passages}
        to_judge = [pair for pair in filtered if pair.status == "kept"]
        verdicts = judge.complete([judge_request(pair, by_index[pair.passage_index].text) for pair in to_judge])
        judgements = {pair.pair_id: parse_judgement(verdict) for pair, verdict in zip(to_judge, verdicts)}
        filtered = apply_judgements(filtered, judgements, settings.judge_min_score)
    pairs = pd.DataFrame([vars(pair) for pair in filtered])
    save_qa_pairs(db, note_id, pairs)
    kept = pairs[pairs["status"] == "kept"]
    rejected = pairs[pairs["status"] == "rejected"]
    reasons = Counter(rejected["reason"])
    judged = pairs["judge_score"].notna()
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(pairs),
            "passages": len(note_passages),
            "kept": len(kept),
            "rejected": len(rejected),
            "rejection_rate": round(len(rejected) / len(pairs), 3) if len(pairs) else 0.0,
            "near_duplicate_questions": int((rejected["reason"] == NEAR_DUPLICATE_QUESTION).sum()),
            "judge": "off" if judge is None else f"{judge.client.model_name}, min score {settings.judge_min_score}",
            "judged": int(judged.sum()),
            "judge_rejected": int(rejected["reason"].str.startswith(JUDGE_REJECTION).sum()),
            "judge_unreadable": len(judgements) - int(judged.sum()),
            "kept_by_mode": dg.MetadataValue.json(dict(Counter(kept["mode"]))),
            "rejection_reasons": dg.MetadataValue.md(table(reasons.most_common(), ["reason", "pairs"])),
            **llm_usage_metadata(cached.usage, cached.client),
            **({"judge_" + k: v for k, v in llm_usage_metadata(judge.usage).items()} if judge is not None else {}),
            "kept_preview": dg.MetadataValue.md(preview(kept, ["mode", "question", "answer"])),
            "rejected_preview": dg.MetadataValue.md(preview(rejected, ["mode", "reason", "question"])),
        }
    )
