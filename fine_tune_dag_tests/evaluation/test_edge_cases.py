"""Edge-case selection, the user's file (bad lines reported, never fatal) and the side-by-side table."""

import pandas as pd

from fine_tune_dag.core.evaluation.edge_cases import case_id, hardest_for_base, read_user_cases, side_by_side


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
