"""Edge-case selection, the user's file (bad lines reported, never fatal), the side-by-side table, and answers
generated in the evaluation's settings."""

import pandas as pd
import pytest

from fine_tune_dag.assets.config import EdgeCaseConfig
from fine_tune_dag.core.evaluation.config import EvaluationSettings
from fine_tune_dag.core.evaluation.edge_cases import case_id, hardest_for_base, read_user_cases, side_by_side
from fine_tune_dag.core.store.registry import latest_adapter
from fine_tune_dag.core.workflows.edge_cases import track_edge_cases


def test_the_hardest_items_for_the_base_model_come_first():
    items = pd.DataFrame({"question": ["a?", "b?", "c?"], "answer": ["A", "B", "C"], "nll_per_token": [1.0, 3.0, 2.0]})
    assert [c.question for c in hardest_for_base(items, 2)] == ["b?", "c?"]
    assert case_id("What  about Bees?") == case_id("what about bees?")


def test_user_cases_skip_bad_lines_with_reasons(tmp_path):
    path = tmp_path / "edge_cases.jsonl"
    path.write_text(
        '{"question": "Why ride slowly?", "reference": "The hill is long."}\n\nnot json\n{"question": ""}\n'
    )
    cases, problems = read_user_cases(path)
    assert [(c.question, c.reference, c.origin) for c in cases] == [
        ("Why ride slowly?", "The hill is long.", "user file")
    ]
    assert problems == [
        "edge_cases.jsonl line 3: not JSON (Expecting value)",
        'edge_cases.jsonl line 4: no "question" text',
    ]
    assert read_user_cases(tmp_path / "missing.jsonl") == ([], [])


def test_side_by_side_puts_each_models_answer_in_its_column():
    cases = pd.DataFrame({"case_id": ["x"], "question": ["q?"], "reference": [""]})
    answers = pd.DataFrame({"case_id": ["x", "x"], "model": ["base", "v2"], "answer": ["dunno", "I oil it weekly."]})
    text = side_by_side(cases, answers, ["base", "v1", "v2"])
    assert "| q? | — | dunno |  | I oil it weekly. |" in text


def test_edge_cases_take_the_evaluations_settings_and_have_no_dtype_of_their_own():
    assert "dtype" not in EdgeCaseConfig.model_fields
    assert EdgeCaseConfig().evaluation.settings() == EvaluationSettings()  # float32, on purpose: batch-invariant
    assert EdgeCaseConfig(evaluation={"dtype": "bfloat16"}).evaluation.settings().dtype == "bfloat16"


class Quiet:
    def info(self, msg: str) -> None: ...

    def warning(self, msg: str) -> None: ...


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_edge_case_answers_are_generated_in_the_evaluations_dtype(trained_project, tmp_path, dtype):
    db, layout = trained_project.copy(tmp_path / "data")
    settings = EvaluationSettings(dtype=dtype, generation_engine="transformers", max_new_tokens=3)
    metadata = track_edge_cases(db, 2, settings, layout, Quiet())
    assert metadata["generation_engine"] == "transformers" and metadata["generation_precision"] == dtype
    adapter = latest_adapter(db).version
    answers = db.query("SELECT model, count(*) AS n FROM edge_case_answers GROUP BY model ORDER BY model")
    assert dict(zip(answers["model"], answers["n"])) == {"base": 2, adapter: 2}
    assert metadata["answers_generated"] == 4 and metadata["new_cases"] == 2
    assert (layout.reports / adapter / "edge_cases.md").read_text().startswith("# Edge cases")
