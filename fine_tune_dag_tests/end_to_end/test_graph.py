"""The whole graph materialized in-process: tiny random Llama as base model, a scripted LLM for
synthesis (a random model writes no usable questions), real DuckDB, real files, and the default
promotion gate."""

from __future__ import annotations

import re
from pathlib import Path

import dagster as dg
import pytest
from fine_tune_dag_testkit.notes import SAMPLE_TOPICS, write_sample_notes
from fine_tune_dag_testkit.scripted import scripted_definitions

from fine_tune_dag.core.common.metadata_keys import PEAK_MEMORY_MIB
from fine_tune_dag.core.dataset.mixing import MIX_SOURCES, mixed_conversations
from fine_tune_dag.core.evaluation.efficacy import ADVICE, beaten_by
from fine_tune_dag.core.evaluation.gate import stored_interval
from fine_tune_dag.core.ingest.notes import discover_notes
from fine_tune_dag.core.store.registry import current_champion, evaluation_summary
from fine_tune_dag.core.store.splits import train_split
from fine_tune_dag.core.store.warehouse import Warehouse
from fine_tune_dag.runner import materialize_graph

TOPICS = SAMPLE_TOPICS
CITED_RIGHT = 0.625


def write_notes(folder: Path) -> None:
    write_sample_notes(folder)
    (folder / "broken.md").write_bytes(b"\x00\x01\x02\xff" * 50)


@pytest.fixture
def graph(tmp_path, tiny_model_dir, scripted_llm):
    notes, data = tmp_path / "notes", tmp_path / "data"
    write_notes(notes)
    return scripted_definitions(notes, data, tiny_model_dir, llm=scripted_llm), notes, data


RUN_CONFIG = {
    "ops": {
        "passages": {"config": {"min_chars": 60, "max_chars": 200}},
        # 4 of the 10 notes held out: the gate's intervals need at least 3
        "dataset_splits": {"config": {"test_fraction": 0.6}},
        # enough for the adapter to beat every untuned contender beyond noise on voice and answer NLL
        "lora_adapter": {
            "config": {"max_steps": 12, "learning_rate": 1e-2, "batch_size": 4, "logging_steps": 2, "dtype": "float32"}
        },
        "eval_report": {"config": {"max_new_tokens": 6, "dtype": "float32"}},
    }
}


def test_whole_graph_materializes_and_a_bad_note_fails_alone(graph, scripted_llm):
    defs, notes, data = graph
    dg.Definitions.validate_loadable(defs)
    instance = dg.DagsterInstance.ephemeral()
    before = {p: p.read_bytes() for p in notes.iterdir()}
    run = _materialize(defs, instance, notes)
    assert run.success, run.model_failure
    broken = [k for k in discover_notes(notes) if k.startswith("broken")]
    assert list(run.failed_notes) == broken
    assert "broken.md" in run.failed_notes[broken[0]] and "binary" in run.failed_notes[broken[0]]

    db = Warehouse(data / "warehouse.duckdb")
    counts = db.query(
        "SELECT (SELECT count(*) FROM raw_notes) notes, (SELECT count(*) FROM passages) passages, "
        "(SELECT count(*) FROM qa_pairs WHERE status = 'kept') kept, (SELECT count(*) FROM dataset_splits) split_rows"
    ).iloc[0]
    assert counts["notes"] == len(TOPICS) and counts["passages"] >= len(TOPICS) and counts["kept"] > 0
    modes = db.query("SELECT mode, count(*) AS n FROM dataset_splits GROUP BY mode").set_index("mode")["n"]
    assert modes.drop(["pretrain", "write", "continue"]).sum() == counts["kept"]
    assert modes["pretrain"] == modes["write"] == counts["passages"]  # every passage of every note, verbatim
    assert_no_test_note_text_is_trained_on(db)
    passages = db.query("SELECT p.*, n.text AS note_text FROM passages p JOIN raw_notes n USING (note_id)")
    assert all(r.note_text[r.start_char : r.end_char] == r.text for r in passages.itertuples())

    splits = db.query("SELECT DISTINCT split FROM dataset_splits")
    assert set(splits["split"]) == {"train", "test"}
    version = db.query("SELECT * FROM dataset_versions").iloc[-1]
    assert Path(version.train_path).exists() and Path(version.test_path).exists()

    adapter = db.query("SELECT * FROM adapters").iloc[0]
    folder = Path(adapter.path)
    assert {"adapter_config.json", "adapter_model.safetensors", "metrics.csv", "training_config.json"} <= {
        p.name for p in folder.iterdir()
    }
    report = db.query("SELECT * FROM evaluations").iloc[0]
    text = Path(report.report_path).read_text()
    summary = evaluation_summary(db, report.adapter_version)
    assert list(summary) == ["base", "prompted", "base+rag", "tuned", "tuned+rag"]  # no champion yet
    assert text.splitlines()[2] == "## Was fine-tuning worth it on your notes?" and "loss_curve.png" in text
    train_pairs = int(db.query("SELECT count(*) FROM dataset_splits WHERE split = 'train'").iloc[0, 0])
    assert f"| pairs reviewed by people | 0 of {train_pairs} train pairs (accepted or edited on " in text
    # the headline is the verdict the registry keeps, and the contender it names is beaten by none in the table
    assert text.splitlines()[4] == report.recommendation.splitlines()[0]
    # the tiny adapter writes more like the notes than anything untuned, but its six random tokens per answer
    # invent more than the base model's: the measures disagree, and the verdict says so rather than "Tune"
    assert report.recommendation.startswith("**Undecided**") and "the measures disagree" in report.recommendation
    assert "tuned is better beyond noise on voice (per-token NLL of your held-out passages) over base, prompted, " in (
        report.recommendation
    )
    assert all(beaten_by(summary, name) for name in ADVICE if name in summary)
    assert summary["tuned"]["voice_perplexity"] < summary["base"]["voice_perplexity"]
    assert summary["tuned"]["voice_perplexity_notes"] == 4 and summary["tuned"]["voice_perplexity_items"] >= 8
    cited = stored_interval(summary["base+rag"], "cited_right")  # BM25 over the scripted questions, deterministic
    assert (cited.value, cited.notes) == (CITED_RIGHT, 4)

    # promoted through the default gate, which says so in its own words
    assert run.promoted and current_champion(db).version == adapter.version
    reason = db.query("SELECT reason FROM champion_history")["reason"].tolist()
    assert len(reason) == 1 and reason[0].startswith("better than base beyond noise: voice") and "over 4 notes" in reason[0]
    assert (Path(report.report_path).parent / "loss_curve.png").stat().st_size > 1000
    assert {p: p.read_bytes() for p in notes.iterdir()} == before  # notes are never written

    materialization = instance.get_latest_materialization_event(dg.AssetKey("eval_report")).asset_materialization
    assert "data:image/png;base64" in materialization.metadata["report_markdown"].value
    qa = instance.get_latest_materialization_event(dg.AssetKey("qa_pairs")).asset_materialization
    assert {"kept", "rejected", "rejection_rate", "llm_calls", "llm_cache_hits"} <= set(qa.metadata)
    # every heavy stage shows the most memory its process held while it ran
    peaks = {
        name: instance.get_latest_materialization_event(dg.AssetKey(name))
        .asset_materialization.metadata[PEAK_MEMORY_MIB]
        .value
        for name in ("base_model", "passages", "qa_pairs", "dataset_splits", "lora_adapter", "eval_report")
    }
    assert all(peak > 50 for peak in peaks.values()), peaks

    calls_first = scripted_llm.total_calls
    assert calls_first > 0
    rerun = _materialize(defs, instance, notes)
    assert rerun.success
    assert scripted_llm.total_calls == calls_first  # unchanged notes: every answer from the cache
    assert len(db.query("SELECT * FROM adapters")) == 2  # a new version, the old one kept
    assert folder.exists()
    # the same data trains the same adapter: no worse than the champion, so it replaces it (a tie never blocks)
    assert rerun.promoted and current_champion(db).version != adapter.version
    newest = db.query("SELECT reason FROM champion_history ORDER BY promoted_at DESC LIMIT 1")["reason"].iloc[0]
    assert "not worse than the champion beyond the margin: voice" in newest


def assert_no_test_note_text_is_trained_on(db: Warehouse) -> None:
    """Every training source, retrieval-augmented Q&A with its distractors included, holds nothing of a test note."""
    test_notes = db.query("SELECT DISTINCT note_id FROM dataset_splits WHERE split = 'test'")["note_id"].tolist()
    held_out = db.query("SELECT text FROM passages WHERE note_id IN (SELECT unnest(?::VARCHAR[]))", [test_notes])[
        "text"
    ].tolist()
    assert held_out
    everything = {source: 1.0 for source in MIX_SOURCES}
    conversations, counts = mixed_conversations(train_split(db), everything, seed=0)
    assert all(counts.values())
    trained = "\n".join(message["content"] for conversation in conversations for message in conversation)
    sentences = [s for passage in held_out for s in re.split(r"(?<=[.!?])\s+", passage) if len(s) > 40]
    assert sentences and not [s for s in sentences if s in trained]


def _materialize(defs, instance, notes):
    return materialize_graph(defs, instance, notes, run_config=RUN_CONFIG)


def test_register_command_adds_one_partition_per_note(tmp_path, monkeypatch):
    from fine_tune_dag.cli import main

    write_notes(tmp_path / "notes")
    (tmp_path / "notes" / ".hidden.md").write_text("skipped")
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    assert main(["--notes-dir", str(tmp_path / "notes"), "register"]) == 0
    with dg.DagsterInstance.get() as instance:
        keys = instance.get_dynamic_partitions("notes")
    assert sorted(keys) == sorted(discover_notes(tmp_path / "notes")) and len(keys) == len(TOPICS) + 1
