"""Teacher → student: logged answers and user prompts become pairs, the dataset takes its sources
from config, and the same lora_adapter trains the student."""

import json

import dagster as dg
import pytest
from fine_tune_dag_testkit.notes import write_sample_notes
from fine_tune_dag_testkit.scripted import scripted_definitions

from fine_tune_dag.core.store.warehouse import Warehouse
from fine_tune_dag.core.synthesis.teacher import PromptFileError, parse_generated_inputs, read_prompt_file
from fine_tune_dag.runner import materialize_graph


def test_prompt_files_read_csv_and_jsonl_and_name_bad_lines(tmp_path):
    csv_file = tmp_path / "p.csv"
    csv_file.write_text('prompt,completion\n"How do I true a wheel?",\nWhat is a spoke key?,A small wrench.\n')
    rows = read_prompt_file(csv_file)
    assert [(r.prompt, r.completion) for r in rows] == [
        ("How do I true a wheel?", ""),
        ("What is a spoke key?", "A small wrench."),
    ]
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"prompt": "Why wax a chain?"}\n\n{"prompt": 3}\n')
    with pytest.raises(PromptFileError, match=r'p.jsonl: line 3 has no string "prompt"'):
        read_prompt_file(jsonl)
    (tmp_path / "broken.jsonl").write_text('{"prompt": "ok"}\n{nope\n')
    with pytest.raises(PromptFileError, match="line 2 is not JSON"):
        read_prompt_file(tmp_path / "broken.jsonl")
    (tmp_path / "q.csv").write_text("question\nhi there\n")
    with pytest.raises(PromptFileError, match="no 'prompt' column"):
        read_prompt_file(tmp_path / "q.csv")


def test_generated_inputs_are_cleaned_and_bounded():
    output = (
        "1. How often to oil?\n2) How often to oil?\n- Why do brakes squeal?\nok\n* Which tyre pressure for gravel?"
    )
    assert parse_generated_inputs(output, 2) == ["How often to oil?", "Why do brakes squeal?"]


def test_student_datasets_from_the_request_log_and_prompts(tmp_path, tiny_model_dir):
    notes, data = tmp_path / "notes", tmp_path / "data"
    write_sample_notes(notes, 3)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {"prompt": "How do I choose a saddle for long rides?"},
                {"prompt": "What keeps bees calm in winter?", "completion": "A dry hive and no disturbance."},
            ]
        )
    )
    defs = scripted_definitions(notes, data, tiny_model_dir)
    db = Warehouse(data / "warehouse.duckdb")
    with dg.instance_for_test() as instance:
        assert materialize_graph(defs, instance, notes, run_config=_config(["notes"], prompts)).success
        graded = db.query("SELECT count(DISTINCT prompt_hash) AS n FROM llm_requests WHERE template = 'grounded_qa'")
        job = defs.resolve_implicit_global_asset_job_def()
        teacher = job.execute_in_process(
            instance=instance,
            asset_selection=[dg.AssetKey("request_log_pairs"), dg.AssetKey("prompt_completion_pairs")],
            run_config=_config(["notes"], prompts, only=("request_log_pairs", "prompt_completion_pairs")),
        )
        assert teacher.success
        log_pairs = db.query("SELECT * FROM request_log_pairs")
        assert len(log_pairs) == graded["n"].iloc[0] > 0
        assert log_pairs["system"].str.contains("questions about a piece of personal writing").all()
        completions = db.query("SELECT * FROM prompt_completion_pairs ORDER BY question")
        assert completions["answer"].tolist()[1] == "A dry hive and no disturbance."  # given, not asked
        asked = db.query("SELECT count(*) AS n FROM llm_requests WHERE template = 'prompt_completion'")["n"].iloc[0]
        assert asked == 1

        student = job.execute_in_process(
            instance=instance,
            asset_selection=[dg.AssetKey("dataset_splits"), dg.AssetKey("lora_adapter")],
            run_config=_config(["request_log", "prompt_completion"], prompts, only=("dataset_splits", "lora_adapter")),
        )
        assert student.success
    splits = db.query("SELECT * FROM dataset_splits")
    assert set(splits["mode"]) == {"request_log", "prompt_completion"}
    assert len(splits) == len(log_pairs) + len(completions)
    assert splits.loc[splits["mode"] == "prompt_completion", "system"].str.startswith("You are a careful").all()
    latest = db.query("SELECT * FROM adapters ORDER BY created_at DESC LIMIT 1").iloc[0]
    assert latest.dataset_version == splits["dataset_version"].iloc[0]  # the student, by the same trainer


def _config(sources, prompts, only=None) -> dict:
    ops = {
        "passages": {"config": {"min_chars": 60, "max_chars": 200}},
        "dataset_splits": {"config": {"test_fraction": 0.5, "sources": sources}},
        "lora_adapter": {"config": {"max_steps": 1, "batch_size": 4, "dtype": "float32"}},
        "eval_report": {"config": {"max_new_tokens": 4, "max_examples": 4, "dtype": "float32"}},
        "request_log_pairs": {"config": {"templates": ["grounded_qa"]}},
        "prompt_completion_pairs": {"config": {"prompts_file": str(prompts)}},
    }
    return {"ops": {name: value for name, value in ops.items() if only is None or name in only}}
