"""The real bundled SmolLM2-135M-Instruct through the whole graph on two short notes: GGUF
conversion, LLM chunking and synthesis, a few LoRA steps, evaluation. About 11 minutes on 2 cores
(measured while other sessions loaded the machine, load average 5-6)."""

from pathlib import Path

import dagster as dg
import pytest

from fine_tune_dag.core.models.loading import select_device
from fine_tune_dag.core.store.registry import evaluation_summary
from fine_tune_dag.core.store.warehouse import Warehouse
from fine_tune_dag.definitions import build_definitions
from fine_tune_dag.runner import materialize_graph

NOTES = {
    # the-workshop.md lands in the test split at the default 20%, river-path.txt in train.
    "the-workshop.md": (
        "# The workshop\n\nHere is the thing: the workshop is a converted boathouse on the river, and the wind "
        "comes through the big door every afternoon at four. I keep the tools on a pegboard, each one drawn "
        "around in marker, so an empty outline tells me who borrowed what. Small tools, small wins. Pepper, "
        "my dog, sleeps under the truing stand and only moves for the postman.\n"
    ),
    "river-path.txt": (
        "The river path runs six kilometres from the workshop to the old lock. I ride it every morning before "
        "opening, slowly, because the gravel is loose and the herons do not move for anyone. True enough, it "
        "is the best test ride there is: a bad bearing sings on the gravel long before it would on tarmac. "
        "When a customer asks whether their wheel is fixed, I tell them to ride the river path and listen.\n"
    ),
}

RUN_CONFIG = {
    "ops": {
        # the default 2e-4 lowers the held-out answer NLL by 0.5%; 1e-3 by 2.7% (4.537 → 4.417) in the same 3 steps
        "lora_adapter": {"config": {"max_steps": 3, "batch_size": 4, "logging_steps": 1, "learning_rate": 1e-3}},
        "eval_report": {
            "config": {"max_new_tokens": 16, "max_examples": 4, "max_written_notes": 2, "written_max_new_tokens": 32}
        },
    }
}


@pytest.fixture(scope="module")
def bundled_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundled")
    notes, data = root / "notes", root / "data"
    notes.mkdir()
    for name, text in NOTES.items():
        (notes / name).write_text(text, encoding="utf-8")
    defs = build_definitions(notes_dir=str(notes), data_dir=str(data))
    instance = dg.DagsterInstance.ephemeral()
    return materialize_graph(defs, instance, notes, RUN_CONFIG), Warehouse(data / "warehouse.duckdb"), data


def test_bundled_model_runs_the_whole_graph(bundled_run):
    run, db, data = bundled_run
    assert run.success, run.model_failure
    assert not run.failed_notes
    assert (data / "models" / "SmolLM2-135M-Instruct" / "model.safetensors").exists()
    splits = db.query("SELECT split, count(*) AS n FROM dataset_splits GROUP BY split")
    assert set(splits["split"]) == {"train", "test"}
    adapter = db.query("SELECT * FROM adapters").iloc[0]
    assert adapter.device == select_device() and Path(adapter.path, "adapter_model.safetensors").exists()
    report = db.query("SELECT * FROM evaluations").iloc[0]
    summary = evaluation_summary(db, report.adapter_version)
    # the adapter writes more like the author: the held-out note's own words are likelier under it, by more than
    # rounding (three steps at 1e-3 move the held-out answer NLL by about 2.7%, the perplexity by more)
    assert summary["tuned"]["voice_perplexity"] < 0.98 * summary["base"]["voice_perplexity"]
    assert list(summary) == ["base", "prompted", "base+rag", "tuned", "tuned+rag"]
    text = Path(report.report_path).read_text()
    assert text.splitlines()[2] == "## Was fine-tuning worth it on your notes?"
    assert f"| tuned | the new adapter (fine-tuned) | {summary['tuned']['voice_perplexity']:.3f} [" in text
    # one held-out note: the report says its intervals cannot decide, and judges answers only where it has any
    assert "**Few held-out notes (1 < 5):**" in text
    base, tuned = summary["base"]["nll"], summary["tuned"]["nll"]
    assert 0 < tuned < 0.995 * base if report.test_examples else "**Not judged:** answer NLL and grounding" in text


def test_back_translation_keeps_the_authors_words(bundled_run):
    _, db, _ = bundled_run
    pairs = db.query(
        "SELECT p.answer, n.text FROM qa_pairs p JOIN raw_notes n USING (note_id) WHERE mode = 'back_translation'"
    )
    assert len(pairs) == len(NOTES)
    assert all(r.answer in r.text for r in pairs.itertuples())
