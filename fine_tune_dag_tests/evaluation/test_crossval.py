"""The cross-validated verdict: folds by note, each training and evaluating an adapter on a tiny model, the
pooled comparison over every note, resumable, never promoted; and an adapter kept on its evidence."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
from fine_tune_dag_testkit.notes import write_sample_notes
from fine_tune_dag_testkit.scripted import scripted_definitions

from fine_tune_dag.core.common.errors import StageError
from fine_tune_dag.core.dataset.splits import folds_by_note_hash
from fine_tune_dag.core.evaluation.efficacy import HeldOut
from fine_tune_dag.core.store.crossval import record_crossval_verdict
from fine_tune_dag.core.store.registry import current_champion, latest_evaluation
from fine_tune_dag.core.store.splits import notes_key
from fine_tune_dag.core.store.warehouse import Warehouse
from fine_tune_dag.core.workflows.crossval import load_results, plan_folds, pooled, save_results
from fine_tune_dag.core.workflows.evaluation import HeldOutResults
from fine_tune_dag.runner import materialize_graph

TINY_TRAINING = {"max_steps": 2, "batch_size": 4, "learning_rate": 5e-2, "warmup_ratio": 0.0, "dtype": "float32"}
TINY_EVALUATION = {"max_new_tokens": 4, "written_max_new_tokens": 8, "dtype": "float32"}


def test_folds_deal_every_note_once_in_sizes_that_differ_by_one_at_most():
    notes = [f"note-{i}" for i in range(14)]
    assignment = folds_by_note_hash(notes, 5)
    assert set(assignment) == set(notes)
    sizes = pd.Series(assignment).value_counts().sort_index().tolist()
    assert sizes == [3, 3, 3, 3, 2]
    assert folds_by_note_hash(reversed(notes), 5) == assignment  # the order notes come in changes nothing
    rows = pd.DataFrame({"note_id": notes})
    plans = plan_folds(rows, 5)
    assert sorted(n for p in plans for n in p.test_notes) == sorted(notes)
    assert all(set(p.test_notes).isdisjoint(p.train_notes) for p in plans)
    with pytest.raises(StageError, match="3 notes cannot make 5 folds"):
        plan_folds(rows.head(3), 5)


def _outcome(notes: list[str], nll: float) -> HeldOutResults:
    voice = pd.DataFrame({"nll_sum": [nll * 10] * len(notes), "answer_tokens": [10] * len(notes)})
    qa = pd.DataFrame({"nll_sum": [nll] * len(notes), "answer_tokens": [1] * len(notes), "cited": [[]] * len(notes)})
    return HeldOutResults(
        {"base": qa, "tuned": qa},
        {"base": voice, "tuned": voice.assign(nll_sum=voice["nll_sum"] - 5)},
        {"tuned": ["a note"] * len(notes)},
        {"tuned": [1.0] * len(notes)},
        HeldOut(notes, notes, notes),
        [[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]] * len(notes),
        [f"{n}.md" for n in notes],
    )


def test_folds_pool_into_one_evaluation_over_every_note_and_survive_a_round_trip(tmp_path):
    first, second = _outcome(["a", "b"], 2.0), _outcome(["c"], 3.0)
    saved = load_results(save_results(second, tmp_path / "fold.json"))
    assert saved.held_out == second.held_out and saved.written == second.written
    pd.testing.assert_frame_equal(saved.voice["tuned"], second.voice["tuned"])
    both = pooled([first, saved])
    assert both.held_out.voice_notes == ["a", "b", "c"] and both.held_out.notes == 3
    assert both.voice["tuned"]["nll_sum"].tolist() == [15.0, 15.0, 25.0]
    assert both.attributed == {"tuned": [1.0, 1.0, 1.0]} and len(both.voice_prompts) == 3


def run_config(test_fraction: float) -> dict:
    return {
        "ops": {
            "passages": {"config": {"min_chars": 60, "max_chars": 200}},
            "dataset_splits": {"config": {"test_fraction": test_fraction}},
            "lora_adapter": {"config": TINY_TRAINING},
            "eval_report": {"config": TINY_EVALUATION},
        }
    }


def test_the_crossvalidated_job_holds_every_note_out_once_resumes_and_promotes_nothing(
    tmp_path, tiny_model_dir
):
    notes, data = tmp_path / "notes", tmp_path / "data"
    write_sample_notes(notes, 6)
    defs = scripted_definitions(notes, data, tiny_model_dir, crossval_folds=3)
    db = Warehouse(data / "warehouse.duckdb")
    config = {"training": TINY_TRAINING, "evaluation": TINY_EVALUATION}
    with dg.instance_for_test() as instance:
        assert materialize_graph(defs, instance, notes, run_config(0.5)).success
        champion_before = getattr(current_champion(db), "version", None)
        job = defs.resolve_job_def("crossval_job")
        assert job.partitions_def.get_partition_keys() == ["fold-1-of-3", "fold-2-of-3", "fold-3-of-3"]
        fold_config = {"ops": {"crossval_folds": {"config": config}}}
        for key in job.partitions_def.get_partition_keys():
            assert job.execute_in_process(instance=instance, partition_key=key, run_config=fold_config).success
        again = job.execute_in_process(instance=instance, partition_key="fold-2-of-3", run_config=fold_config)
        resumed = again.asset_materializations_for_node("crossval_folds")[0].metadata["resumed"].value
        assert resumed is True  # a fold already measured for this dataset and these settings is kept
        verdict_job = defs.resolve_job_def("crossval_verdict_job")
        result = verdict_job.execute_in_process(
            instance=instance, run_config={"ops": {"crossval_verdict": {"config": config}}}
        )
        assert result.success
    metadata = result.asset_materializations_for_node("crossval_verdict")[0].metadata
    assert metadata["held_out"].value.startswith("6 held-out notes:")  # every note held out once, pooled
    report = Path(metadata["report"].value).read_text()
    assert report.startswith("# Cross-validated verdict on 6 notes (3 folds)")
    assert "### The new adapter against each contender" in report and "6 notes" in report
    assert "Few held-out notes" not in report
    row = db.query("SELECT * FROM crossval_verdicts").iloc[0]
    assert (row.folds, row.notes) == (3, 6) and row.verdict == metadata["verdict"].value
    assert getattr(current_champion(db), "version", None) == champion_before  # the folds promote nothing
    assert db.query("SELECT count(*) AS n FROM adapters")["n"].iloc[0] == 1  # the folds' adapters are not registered


def test_an_adapter_trained_on_every_note_is_kept_on_a_crossvalidated_verdict_of_tune(tmp_path, tiny_model_dir):
    notes, data = tmp_path / "notes", tmp_path / "data"
    write_sample_notes(notes, 6)
    defs = scripted_definitions(notes, data, tiny_model_dir)
    db = Warehouse(data / "warehouse.duckdb")
    with dg.instance_for_test() as instance:
        held = materialize_graph(defs, instance, notes, run_config(0.0))
        assert held.success and not held.promoted  # nothing held out, no cross-validated verdict: not judged
        evaluation = latest_evaluation(db)
        report = Path(evaluation.report_path).read_text()
        assert "voice (per-token NLL of your held-out passages) not judged: no held-out items" in report
        assert "**Not judged:** answer NLL and grounding: no held-out Q&A items" in report
        version = str(db.query("SELECT dataset_version FROM adapters").iloc[0, 0])
        record_crossval_verdict(
            db, version, notes_key(db, version), 3, 6, "tuned", "**Tune**: the new adapter — …", True, "crossval.md"
        )
        kept = materialize_graph(defs, instance, notes, run_config(0.0))
        assert kept.success and kept.promoted
    report = Path(latest_evaluation(db).report_path).read_text()
    assert report.splitlines()[4] == "**Tune**: the new adapter — …"
    assert "trained on every note after a cross-validated verdict of Tune over 6 notes" in report
    assert "| judged on | a cross-validated verdict on every note (crossval.md)" in report
