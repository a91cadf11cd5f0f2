"""raw_notes: one parsed note per partition."""

from pathlib import Path

import dagster as dg

from fine_tune_dag.assets.partitions import notes_partitions
from fine_tune_dag.assets.tags import NOTE_PATH_TAG
from fine_tune_dag.core.ingest.notes import NoteParseError, find_note, parse_note
from fine_tune_dag.core.store.forgetting import forgetting_record
from fine_tune_dag.core.store.notes import reject_note, save_parsed_note
from fine_tune_dag.core.workflows.estimate import History, estimate_note
from fine_tune_dag.resources.llm import LLMResource
from fine_tune_dag.resources.paths import ProjectPaths
from fine_tune_dag.resources.sources import SourcesResource
from fine_tune_dag.resources.warehouse import WarehouseResource


@dg.asset(
    partitions_def=notes_partitions,
    group_name="ingest",
    # no pool: parsing holds nothing another note needs, and its writes are short transactions (at 8 concurrent
    # note runs the one `duckdb` slot held through parsing cost 23 s a run in bench/scale.py)
    kinds={"python", "duckdb"},
    code_version="ingest-2",
)
def raw_notes(
    context: dg.AssetExecutionContext,
    paths: ProjectPaths,
    warehouse: WarehouseResource,
    llm: LLMResource,
    sources: SourcesResource,
) -> dg.MaterializeResult:
    """The note file parsed to text (Markdown, text, PDF, DOCX, a mailbox or message, a chat export, a web page,
    an e-book) with its title, format, source kind and hash."""
    note_id = context.partition_key
    db = warehouse.get()
    forgotten = forgetting_record(db, note_id)
    if forgotten is not None:
        raise dg.Failure(
            description=f"note {note_id} was forgotten on {forgotten.forgotten_at:%Y-%m-%d} (fine-tune-dag forget) "
            "and is not read again: move its file out of the notes folder",
            allow_retries=False,
        )
    path: Path | None = None
    try:
        path = find_note(paths.notes, note_id, context.run.tags.get(NOTE_PATH_TAG))
        note = parse_note(path, paths.notes, sources.settings())
    except NoteParseError as error:
        reject_note(db, note_id, error.path, error.reason, context.run_id, path)
        raise dg.Failure(
            description=str(error), metadata={"file": error.path, "reason": error.reason}, allow_retries=False
        ) from error
    except FileNotFoundError as error:
        reject_note(db, note_id, None, str(error), context.run_id)
        raise dg.Failure(description=str(error), allow_retries=False) from error
    save_parsed_note(db, note)
    history = History.from_warehouse(db, llm.provider)
    expected = estimate_note(note_id, note.text, note.title, history, llm.model, llm.price_table())
    return dg.MaterializeResult(
        metadata={
            "file": dg.MetadataValue.path(str(paths.notes / note.path)),
            "title": note.title,
            "format": note.format,
            "source_kind": note.source_kind,
            "characters": note.char_count,
            "words": len(note.text.split()),
            "encoding": note.encoding or "n/a",
            "sha256": note.sha256,
            "expected_llm_requests": expected.requests,
            "expected_llm_tokens": expected.input_tokens + expected.output_tokens,
            "expected_llm_cost_usd": round(expected.cost_usd, 6),
            "front_matter": dg.MetadataValue.json(note.metadata),
            "preview": dg.MetadataValue.md(
                f"**{note.title}**\n\n" + note.text[:600] + ("…" if len(note.text) > 600 else "")
            ),
        },
        data_version=dg.DataVersion(note.sha256),
    )
