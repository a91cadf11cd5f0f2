"""The pair judge: its verdicts are read from the shapes models answer in, pairs below the threshold are rejected
with their score and reason stored, and qa_pairs runs it through the configured teacher only when asked."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
from fine_tune_dag_testkit.scripted import ScriptedLLM, scripted_definitions

from fine_tune_dag.cli import register_note_partitions
from fine_tune_dag.core.store.warehouse import Warehouse
from fine_tune_dag.core.synthesis.pair_judge import Judgement, apply_judgements, parse_judgement
from fine_tune_dag.core.synthesis.qa_pairs import QAPair


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("Score: 4\nReason: answered by the passage", Judgement(4, "answered by the passage")),
        ("**Score:** 2\n**Reason:** the answer only repeats the question.", Judgement(2, "the answer only repeats the question")),
        ('Sure! {"score": 5, "reason": "in the writer\'s own words"}', Judgement(5, "in the writer's own words")),
        ('{"score": "3", "reason": "partly"}', Judgement(3, "partly")),
        ("I would rate this 3/5 because the answer adds a detail.", Judgement(3, "because the answer adds a detail")),
        ("1 - invented", Judgement(1, "invented")),
        ("rating = 5", Judgement(5, "")),
        ("Score: 9\nReason: great", Judgement(None, "great")),  # outside the rubric: unreadable
        ('{"score": 7, "reason": "x"}', Judgement(None, '{"score": 7, "reason": "x"}')),
        ("The pair looks fine to me.", Judgement(None, "The pair looks fine to me")),
        ("", Judgement(None, "")),
    ],
)
def test_verdicts_are_read_from_the_shapes_models_answer_in(output: str, expected: Judgement) -> None:
    assert parse_judgement(output) == expected


def pair(pair_id: str, status: str = "kept", reason: str | None = None) -> QAPair:
    return QAPair(pair_id, "n", 0, "grounded", "Q?", "A.", status, reason)


def test_pairs_below_the_threshold_are_rejected_and_every_judged_pair_keeps_its_score_and_reason() -> None:
    pairs = [pair("low"), pair("edge"), pair("high"), pair("unread"), pair("unjudged"), pair("filtered", "rejected", "empty")]
    verdicts = {
        "low": Judgement(2, "repeats the question"),
        "edge": Judgement(4, "fine"),
        "high": Judgement(5, "exact"),
        "unread": Judgement(None, "no idea"),
    }
    judged = {p.pair_id: p for p in apply_judgements(pairs, verdicts, min_score=4)}
    assert (judged["low"].status, judged["low"].reason) == ("rejected", "judge scored 2 (below 4)")
    assert [judged[k].status for k in ("edge", "high", "unread", "unjudged")] == ["kept"] * 4
    assert (judged["low"].judge_score, judged["low"].judge_reason) == (2, "repeats the question")
    assert (judged["unread"].judge_score, judged["unread"].judge_reason) == (None, "no idea")
    assert judged["unjudged"].judge_score is None and judged["unjudged"].judge_reason is None
    assert judged["filtered"] == pairs[-1]
    assert apply_judgements(pairs, verdicts, min_score=5)[1].status == "rejected"


class ScriptedJudge(ScriptedLLM):
    """The scripted teacher, judging too: grounded pairs (which restate their passage's first sentence) score 2,
    back-translated ones 5, answered as JSON."""

    @staticmethod
    def _answer(template: str, prompt: str) -> str:
        if template == "pair_judge":
            if "Question: What do you say about" in prompt:
                return "Score: 2\nReason: the answer only restates the passage's first line"
            return '{"score": 5, "reason": "answered by the passage in its words"}'
        return ScriptedLLM._answer(template, prompt)


NOTE = (
    "I oil the chain every Sunday and wipe it on Monday. A clean chain lasts three thousand kilometres.\n\n"
    "Truing a wheel wants patience more than tools. Quarter turns on the spoke key, never more.\n"
)


def synthesize(tmp_path: Path, tiny_model_dir: Path, llm: ScriptedLLM, judge: str) -> tuple[dict, Warehouse]:
    notes, data = tmp_path / "notes", tmp_path / "data"
    notes.mkdir(exist_ok=True)
    (notes / "chain.md").write_text(NOTE, encoding="utf-8")
    defs = scripted_definitions(notes, data, tiny_model_dir, llm=llm)
    instance = dg.DagsterInstance.ephemeral()
    (key,) = register_note_partitions(instance, notes)
    config = {
        "passages": {"config": {"strategy": "heuristic", "min_chars": 20, "max_chars": 120}},
        "qa_pairs": {"config": {"judge": judge}},
    }
    result = defs.resolve_job_def("notes_job").execute_in_process(
        instance=instance, partition_key=key, run_config={"ops": config}
    )
    assert result.success
    metadata = {k: v.value for k, v in result.asset_materializations_for_node("qa_pairs")[0].metadata.items()}
    return metadata, Warehouse(data / "warehouse.duckdb")


def test_the_judge_scores_kept_pairs_through_the_teacher_and_rejects_those_below_the_threshold(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    llm = ScriptedJudge()
    metadata, db = synthesize(tmp_path, tiny_model_dir, llm, judge="llm")
    pairs = db.query("SELECT * FROM qa_pairs ORDER BY pair_id")
    grounded, translated = pairs[pairs["mode"] == "grounded"], pairs[pairs["mode"] == "back_translation"]
    assert len(grounded) == len(translated) == 2
    assert (grounded["judge_score"] == 2).all() and (grounded["status"] == "rejected").all()
    assert set(grounded["reason"]) == {"judge scored 2 (below 4)"}
    assert set(grounded["judge_reason"]) == {"the answer only restates the passage's first line"}
    assert (translated["judge_score"] == 5).all() and (translated["status"] == "kept").all()
    assert llm.calls["pair_judge"] == 4  # one per pair the filters kept
    assert (metadata["judged"], metadata["judge_rejected"], metadata["judge_unreadable"], metadata["kept"]) == (4, 2, 0, 2)
    assert metadata["judge"] == "scripted-1, min score 4" and metadata["judge_llm_calls"] == 4


@pytest.mark.parametrize("judge", ["off", "auto"])  # auto: off for a local teacher
def test_without_the_judge_no_verdict_is_asked_for_and_no_score_stored(
    tmp_path: Path, tiny_model_dir: Path, judge: str
) -> None:
    llm = ScriptedJudge()
    metadata, db = synthesize(tmp_path, tiny_model_dir, llm, judge=judge)
    assert llm.calls["pair_judge"] == 0 and metadata["judge"] == "off" and metadata["judged"] == 0
    pairs = db.query("SELECT status, judge_score, judge_reason FROM qa_pairs")
    assert pairs["judge_score"].isna().all() and pairs["judge_reason"].isna().all()
    assert (pairs["status"] == "kept").all()
