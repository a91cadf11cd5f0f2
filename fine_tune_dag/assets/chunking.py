"""passages: single-topic verbatim spans of each note."""

import dagster as dg
import pandas as pd

from fine_tune_dag.assets.common import llm_usage_metadata, reports_peak_memory, stage_failures
from fine_tune_dag.assets.config import ChunkingConfig
from fine_tune_dag.assets.ingest import raw_notes
from fine_tune_dag.assets.partitions import notes_partitions
from fine_tune_dag.core.common.fingerprint import fingerprint
from fine_tune_dag.core.common.markdown import length_summary, preview
from fine_tune_dag.core.privacy.egress import EgressBlocked
from fine_tune_dag.core.privacy.scan import count_kinds
from fine_tune_dag.core.store.notes import rows_for_note, save_passages
from fine_tune_dag.core.store.privacy import save_findings
from fine_tune_dag.core.synthesis.chunking import (
    BOUNDARY_TEMPLATE,
    ChunkingResult,
    ChunkingSettings,
    boundary_requests,
    heuristic_passages,
    needs_boundary_request,
    passages_from_boundary_answers,
)
from fine_tune_dag.resources.llm import LLMResource
from fine_tune_dag.resources.warehouse import WarehouseResource


@dg.asset(
    partitions_def=notes_partitions,
    # no pool: its LLM calls hold nothing another note needs, and its one write is a short transaction
    deps=[raw_notes],
    group_name="ingest",
    kinds={"python", "duckdb"},
    code_version=f"chunking-1+{BOUNDARY_TEMPLATE.tag}+{fingerprint(ChunkingSettings())}",
)
@reports_peak_memory
def passages(
    context: dg.AssetExecutionContext, config: ChunkingConfig, warehouse: WarehouseResource, llm: LLMResource
) -> dg.MaterializeResult:
    """Passages whose text is an exact character span of the note; the LLM only picks boundaries. The note is scanned
    for personal data first (counts by kind in the metadata), and the boundary request passes the LLM's egress
    step: under 'block' a note with findings is chunked by headings and paragraphs instead, nothing sent."""
    note_id = context.partition_key
    db = warehouse.get()
    with stage_failures():
        note = rows_for_note(db, "raw_notes", note_id, "raw_notes").iloc[0]
    settings = config.settings()
    cached = llm.cached(db, context)
    # every note is scanned, whatever the provider: counts by kind are shown here and by `fine-tune-dag privacy`
    egress = llm.egress()
    findings = egress.scanner().scan(note.text)
    found = count_kinds(findings)
    save_findings(db, note_id, note.sha256, found, llm.provider, egress.choice.policy, egress.names)
    if needs_boundary_request(note.text, settings):
        requests = boundary_requests(
            note.text, settings, config.boundary_max_new_tokens, note=note_id, keep_whole=[f.text for f in findings]
        )
        try:
            answers = cached.complete(requests)
            result = passages_from_boundary_answers(note_id, note.text, note.title, answers, settings)
        except EgressBlocked as blocked:  # chunking needs no LLM: headings and paragraphs, nothing sent
            fallback = heuristic_passages(note_id, note.text, note.title, settings)
            result = ChunkingResult(fallback.passages, fallback.strategy, str(blocked))
    else:
        result = heuristic_passages(note_id, note.text, note.title, settings)
    if result.fallback_reason:
        context.log.warning(
            f"{note.path}: LLM boundaries rejected ({result.fallback_reason}); used headings and paragraphs"
        )
    rows = pd.DataFrame(
        [
            {
                "note_id": p.note_id,
                "passage_index": p.index,
                "start_char": p.start,
                "end_char": p.end,
                "text": p.text,
                "topic": p.topic,
                "strategy": p.strategy,
                "char_count": len(p.text),
            }
            for p in result.passages
        ]
    )
    save_passages(db, note_id, rows)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(rows),
            "note": note.path,
            "strategy_configured": settings.strategy,
            "strategy_used": result.strategy,
            "fallback_reason": result.fallback_reason or "none",
            "privacy_findings": dg.MetadataValue.json(found),  # counts by kind, never the values
            "privacy_findings_total": sum(found.values()),
            "privacy_names": egress.names,  # the policy, and what it let out, come with the LLM usage below
            "passage_chars": dg.MetadataValue.json(length_summary(rows["char_count"].tolist())),
            **llm_usage_metadata(cached.usage, cached.client),
            "preview": dg.MetadataValue.md(preview(rows, ["passage_index", "topic", "char_count", "text"])),
        }
    )
