"""The evaluation's three steps, each on its own: assembling the contenders (no model), measuring them on the tiny
model, and reporting and recording from measurements given by hand (no model)."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pandas as pd

from fine_tune_dag.core.evaluation.canary import CanarySettings, make_canaries
from fine_tune_dag.core.evaluation.config import EvaluationSettings
from fine_tune_dag.core.evaluation.efficacy import HeldOut
from fine_tune_dag.core.evaluation.gate import PromotionPolicy
from fine_tune_dag.core.generation.base import EngineChoice
from fine_tune_dag.core.store.artifacts import ArtifactStore
from fine_tune_dag.core.store.registry import (
    evaluation_summary,
    latest_adapter,
    latest_evaluation,
    promote,
    record_adapter,
)
from fine_tune_dag.core.workflows.evaluation import (
    Contenders,
    HeldOutResults,
    Measurement,
    assemble_contenders,
    measure_contenders,
    report_and_record,
)

UNTUNED = ["base", "prompted", "base+rag"]
SMALL = EvaluationSettings(
    max_examples=2,
    max_voice_items=2,
    max_written_notes=1,
    max_new_tokens=3,
    written_max_new_tokens=4,
    generation_engine="transformers",
)


class Recorded:
    """A logger that keeps what it was told."""

    def __init__(self) -> None:
        self.infos: list[str] = []
        self.warnings: list[str] = []

    def info(self, msg: str) -> None:
        self.infos.append(msg)

    def warning(self, msg: str) -> None:
        self.warnings.append(msg)


def register_copy(db, adapter: pd.Series, version: str, **changes) -> None:
    """Another registry row for the same adapter folder: a champion to compare against, without training one."""
    row = adapter.drop(labels=["test_nll", "test_perplexity", "test_rouge_l", "test_token_f1"]).to_dict()
    record_adapter(db, row | {"version": version, "created_at": datetime(2020, 1, 1)} | changes)
    promote(db, version, 1.0, None, None, "by hand", "test")


def test_assembling_names_every_contender_and_the_champion_only_on_the_same_base(trained_project, tmp_path):
    db, layout = trained_project.copy(tmp_path / "data")
    adapter = latest_adapter(db)
    log = Recorded()
    assembled = assemble_contenders(db, adapter, SMALL, layout, ArtifactStore(), log)
    assert [c.name for c in assembled.contenders] == [*UNTUNED, "tuned", "tuned+rag"]
    assert [c.name for c in assembled.contenders if c.writes] == ["prompted", "tuned"]
    assert [c.adapter for c in assembled.contenders] == [None, None, None, "tuned", "tuned"]
    assert assembled.champion is None and assembled.versions == {"tuned": adapter.version}
    test_items = len(assembled.split.qa)
    assert test_items > SMALL.max_examples and len(assembled.test) == SMALL.max_examples
    assert len(assembled.voice_items) == min(SMALL.max_voice_items, len(assembled.split.voice)) > 0
    rag = next(c for c in assembled.contenders if c.name == "tuned+rag")
    assert len(rag.cited) == SMALL.max_examples and all(rag.cited)  # retrieval put notes in context
    assert log.warnings == []

    register_copy(db, adapter, "elsewhere", base_model="other", base_model_path="/models/other")
    assembled = assemble_contenders(db, adapter, SMALL, layout, ArtifactStore(), log)
    assert "champion" not in [c.name for c in assembled.contenders] and assembled.champion is None
    assert log.warnings == [
        "champion elsewhere was trained on other, not "
        f"{adapter.base_model}: the newcomer is judged against the base model"
    ]

    register_copy(db, adapter, "same-base")
    assembled = assemble_contenders(db, adapter, SMALL, layout, ArtifactStore(), log)
    assert [c.name for c in assembled.contenders] == [*UNTUNED, "champion", "tuned", "tuned+rag"]
    assert assembled.champion.version == "same-base"
    assert assembled.versions == {"tuned": adapter.version, "champion": "same-base"}
    assert assembled.adapter_paths == {"tuned": adapter.path, "champion": adapter.path}


def test_measuring_asks_every_contender_the_same_items_in_the_evaluations_dtype(trained_project, tmp_path):
    db, layout = trained_project.copy(tmp_path / "data")
    assembled = assemble_contenders(db, latest_adapter(db), SMALL, layout, ArtifactStore(), Recorded())
    measured = measure_contenders(assembled, SMALL, Recorded())
    outcome, names = measured.outcome, [c.name for c in assembled.contenders]
    assert list(outcome.qa) == names and list(outcome.voice) == names
    references, notes = assembled.test["answer"].tolist(), assembled.test["note_id"].tolist()
    for name in names:  # the same items, in the same order, however each contender is asked
        assert outcome.qa[name]["reference"].tolist() == references and outcome.qa[name]["note"].tolist() == notes
        assert (outcome.qa[name]["answer_tokens"] > 0).all() and outcome.qa[name]["nll_sum"].notna().all()
        assert len(outcome.voice[name]) == len(assembled.voice_items)
    assert outcome.qa["base"]["nll_sum"].tolist() != outcome.qa["tuned"]["nll_sum"].tolist()  # adapter switched
    assert {name: len(notes) for name, notes in outcome.written.items()} == {"prompted": 1, "tuned": 1}
    assert set(outcome.attributed) == {"prompted", "tuned"}  # the classifier learned from the train passages
    assert outcome.held_out.qa_notes == assembled.test["note_id"].tolist()
    assert (measured.device, measured.engine.engine, measured.engine.precision) == ("cpu", "transformers", "float32")
    assert measured.calibration is not None
    assert measured.canaries == []  # nobody asked for the audit's canaries


def scripted_measurement(assembled: Contenders, nll: dict[str, float]) -> Measurement:
    """Every contender's figures set by hand: answer NLL per token `nll[name]`, voice NLL the same, the tuned
    adapter answering with the references themselves, the others with one word."""
    test, voice_items = assembled.test, assembled.voice_items
    tokens = [5] * len(test)
    qa, voice = {}, {}
    for name, value in nll.items():
        generations = test["answer"].tolist() if name.startswith("tuned") else ["hm"] * len(test)
        frame = pd.DataFrame(
            {
                "nll_sum": [value * t for t in tokens],
                "answer_tokens": tokens,
                "question": test["question"].tolist(),
                "reference": test["answer"].tolist(),
                "generation": generations,
                "rouge_l": [1.0 if g != "hm" else 0.0 for g in generations],
                "token_f1": [1.0 if g != "hm" else 0.0 for g in generations],
                "unsupported": [0.0] * len(test),
                "words": [len(g.split()) for g in generations],
                "source": test["source"].tolist(),
                "note": test["note_id"].tolist(),
                "cited": [[]] * len(test),
            }
        )
        frame.attrs["seconds"] = {"nll": 0.1, "generation": 0.2 * len(test)}
        qa[name] = frame
        voice[name] = pd.DataFrame(
            {"nll_sum": [value * 10] * len(voice_items), "answer_tokens": [10] * len(voice_items)}
        )
    tuned = next(c for c in assembled.contenders if c.name == "tuned")
    notes = voice_items["note_id"].tolist()
    outcome = HeldOutResults(
        qa,
        voice,
        {"prompted": ["a note"], "tuned": ["my note"]},
        {},
        HeldOut(notes, test["note_id"].tolist(), notes[:1]),
        [list(m) for m in tuned.voice],
        test["path"].tolist(),
    )
    return Measurement(outcome, None, "cpu", EngineChoice("transformers", "asked for", "float32"))


def test_reporting_records_the_evaluation_from_measurements_given_by_hand(trained_project, tmp_path):
    db, layout = trained_project.copy(tmp_path / "data")
    adapter = latest_adapter(db)
    assembled = assemble_contenders(db, adapter, SMALL, layout, ArtifactStore(), Recorded())
    nll = {"base": 2.0, "prompted": 1.5, "base+rag": 1.8, "tuned": 0.5, "tuned+rag": 0.4}
    summary, metadata = report_and_record(
        db, assembled, scripted_measurement(assembled, nll), SMALL, layout, PromotionPolicy(), ArtifactStore()
    )
    assert {name: round(values["nll"], 6) for name, values in summary.items()} == nll
    assert summary["tuned"]["rouge_l"] == 1.0 and summary["base"]["rouge_l"] == 0.0
    stored = evaluation_summary(db, adapter.version)  # recorded, in the same order (NaN where not measured)
    assert list(stored) == list(summary) and [list(v) for v in stored.values()] == [list(v) for v in summary.values()]
    pd.testing.assert_frame_equal(pd.DataFrame(stored), pd.DataFrame(summary))
    recorded = latest_evaluation(db)
    assert (recorded.adapter_version, recorded.test_examples, recorded.device) == (adapter.version, 2, "cpu")
    assert recorded.champion_version is None and recorded.recommendation == metadata["recommendation"]
    assert float(db.query("SELECT test_nll FROM adapters WHERE version = ?", [adapter.version]).iloc[0, 0]) == 0.5
    assert metadata["tuned_nll"] == 0.5 and metadata["base_nll"] == 2.0
    assert metadata["blind_trials"].startswith("1 new")  # the tuned adapter's one written note
    assert metadata["generation_engine"] == "transformers" and metadata["generation_precision"] == "float32"
    report = Path(metadata["report"]).read_text()
    assert report.startswith(f"# Evaluation of adapter {adapter.version}")
    assert "| generated by | transformers (float32): asked for |" in report
    assert Path(metadata["report"]).parent == layout.reports / adapter.version
    assert "canaries planted on purpose" not in report


def test_the_memorization_section_shows_planted_canaries_only_when_asked(trained_project, tmp_path):
    db, layout = trained_project.copy(tmp_path / "data")
    assembled = assemble_contenders(db, latest_adapter(db), SMALL, layout, ArtifactStore(), Recorded())
    asked = replace(SMALL, canary_audit=True)
    measured = measure_contenders(assembled, asked, Recorded())
    planted = make_canaries(CanarySettings())  # what `fine-tune-dag plant-canaries` writes
    assert [e.canary for e in measured.canaries] == planted and {e.candidates for e in measured.canaries} == {4096}
    _, metadata = report_and_record(db, assembled, measured, asked, layout, PromotionPolicy(), ArtifactStore())
    report = Path(metadata["report"]).read_text()
    assert "## Memorization: canaries planted on purpose" in report
    for exposure in measured.canaries:  # each ranked, its words shown and its secret not
        assert f"| the {exposure.canary.prefix} code is … | {exposure.rank} of 4096 | {exposure.bits:.1f} |" in report
        assert exposure.canary.secret not in report
    # the tiny random model never saw them: all within noise of chance (6.3 bits for four)
    assert "**0 of 4 above that bound**: within noise of chance" in report
