"""Cost before spending: the estimate counts the requests the graph then really makes, prices them,
and drops notes once they are synthesized."""

import re

import dagster as dg
import pytest
from fine_tune_dag_testkit.notes import write_sample_notes
from fine_tune_dag_testkit.scripted import scripted_definitions

from fine_tune_dag.automation.jobs import notes_job
from fine_tune_dag.cli import main
from fine_tune_dag.core.workflows.estimate import CostEstimate, History, estimate_note, expected_training_tokens

LONG_NOTE = "\n\n".join(f"# Part {i}\n\n" + f"Sentence {i} about the workshop and its tools. " * 12 for i in range(6))


def test_a_long_note_costs_a_boundary_call_and_two_calls_per_passage():
    history = History({"grounded_qa": 40.0})
    estimate = estimate_note("n", LONG_NOTE, "Long", history, "gemini-2.5-flash", {"gemini-2.5-flash": (1.0, 10.0)})
    passages = (estimate.requests - 1) // 2
    assert estimate.requests == 1 + 2 * passages and passages >= 3
    assert estimate.candidate_pairs == passages * 3  # 2 grounded questions + 1 instruction per passage
    assert estimate.cost_usd == pytest.approx((estimate.input_tokens * 1.0 + estimate.output_tokens * 10.0) / 1e6)
    assert expected_training_tokens(10, History({}, keep_rate=0.5, pair_tokens=100), 0.8, 2) == 800


def test_estimate_matches_the_calls_the_graph_makes(tmp_path, tiny_model_dir, scripted_llm, capsys):
    notes, data = tmp_path / "notes", tmp_path / "data"
    write_sample_notes(notes, 3)
    (notes / "long.md").write_text(LONG_NOTE, encoding="utf-8")
    args = ["--notes-dir", str(notes), "--data-dir", str(data), "estimate"]
    assert main(args) == 0
    before = capsys.readouterr().out
    expected = int(re.search(r"total: (\d+) requests", before).group(1))
    assert before.startswith("4 notes to synthesize")

    defs = scripted_definitions(notes, data, tiny_model_dir, llm=scripted_llm)
    calls = scripted_llm.total_calls
    with dg.instance_for_test() as instance:
        from fine_tune_dag.runner import register_note_partitions

        job = defs.resolve_job_def(notes_job.name)
        for key in register_note_partitions(instance, notes):
            assert job.execute_in_process(instance=instance, partition_key=key).success
        metadata = instance.get_latest_materialization_event(dg.AssetKey("raw_notes")).asset_materialization.metadata
    assert "expected_llm_requests" in metadata and "expected_llm_cost_usd" in metadata
    made = scripted_llm.total_calls - calls
    assert abs(made - expected) <= 2  # the LLM may draw passage boundaries a little differently than headings do
    assert main(args) == 0
    assert capsys.readouterr().out.startswith("0 notes to synthesize")


def test_cost_estimates_add_up():
    total = CostEstimate()
    total.add(CostEstimate(2, 10, 5, 0.5, 3))
    total.add(CostEstimate(1, 1, 1, 0.25, 0))
    assert (total.requests, total.input_tokens, total.output_tokens, total.cost_usd, total.candidate_pairs) == (
        3,
        11,
        6,
        0.75,
        3,
    )
