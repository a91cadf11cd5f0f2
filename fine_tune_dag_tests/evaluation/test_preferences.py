"""Preference data and DPO on a tiny model: candidates from two sources, human choices over the judge's,
and a DPO run that widens the chosen answers' log-probability margin over the rejected ones."""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import torch
from fine_tune_dag_testkit.notes import write_sample_notes
from fine_tune_dag_testkit.scripted import scripted_definitions

from fine_tune_dag.core.common.chat import DEFAULT_SYSTEM_PROMPT, chat_messages
from fine_tune_dag.core.evaluation.config import PreferenceSettings
from fine_tune_dag.core.evaluation.preferences import (
    AUTHOR_VS_CHAMPION,
    CHAMPION_TEMPERATURES,
    CHAMPION_VS_PROMPTED_BASE,
    PAIRINGS,
    Prompt,
    assign_pairings,
    generate_candidates,
    judge_prelabels,
    pair_conversations,
    pairs_from_labels,
    passage_as_answer,
)
from fine_tune_dag.core.models.loading import load_causal_lm, load_tokenizer, with_adapters
from fine_tune_dag.core.store.labels import HUMAN, JUDGE, label_row, record_choice
from fine_tune_dag.core.store.registry import current_champion
from fine_tune_dag.core.store.warehouse import Warehouse
from fine_tune_dag.core.training.dpo import dpo_loss, reference_logps, tokenize_pairs, train_dpo
from fine_tune_dag.core.training.dpo_config import DpoSettings
from fine_tune_dag.core.training.loop import save_adapter
from fine_tune_dag.core.training.sft import TrainingSettings, train_lora
from fine_tune_dag.resources.policy import AutomationPolicy
from fine_tune_dag.runner import materialize_graph

QUESTIONS = [f"What do you do with the {topic}?" for topic in ("bees", "chains", "brakes", "saddles", "honey", "wind")]
PROMPTS = [
    Prompt(f"p{i}", DEFAULT_SYSTEM_PROMPT, q, f"I look after the {q.split()[-1][:-1]} myself.", f"Passage {i}.")
    for i, q in enumerate(QUESTIONS)
]


@pytest.fixture(scope="module")
def champion_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A supervised adapter on the tiny model, as lora_adapter leaves one."""
    conversations = [chat_messages(p.system, p.question, p.reference) for p in PROMPTS]
    run = train_lora(tiny_model_dir, conversations, TrainingSettings(max_steps=2, batch_size=3, dtype="float32"))
    return save_adapter(run, tmp_path_factory.mktemp("adapters"), "champion", {"base_model_path": str(tiny_model_dir)})


def test_pairings_are_dealt_in_turn_and_the_author_needs_a_passage() -> None:
    without_passage = [Prompt(p.prompt_id, p.system, p.question, p.reference, None) for p in PROMPTS]
    dealt = assign_pairings(PROMPTS, 6, seed=0)
    assert [pairing for _, pairing in dealt] == list(PAIRINGS) * 2
    assert assign_pairings(PROMPTS, 3, seed=0) == dealt[:3]  # a seeded order: the same prompts again
    assert {p.prompt_id for p, _ in assign_pairings(PROMPTS, 3, seed=1)} != {p.prompt_id for p, _ in dealt[:3]}
    assert AUTHOR_VS_CHAMPION not in {pairing for _, pairing in assign_pairings(without_passage, 6, seed=0)}


def test_candidates_come_from_two_sources_with_their_origin(tiny_model_dir: Path, champion_dir: Path) -> None:
    tokenizer = load_tokenizer(champion_dir)
    model = with_adapters(load_causal_lm(tiny_model_dir), {"champion": champion_dir})
    dealt = assign_pairings(PROMPTS, 6, seed=0)
    settings = PreferenceSettings(max_new_tokens=6, batch_size=4)
    rows = generate_candidates(model, tokenizer, dealt, "champion", [(QUESTIONS[0], "Bees first.")], settings)
    origins = {row["pairing"]: (row["origin_a"], row["origin_b"]) for row in rows}
    assert origins == {
        CHAMPION_VS_PROMPTED_BASE: ("champion", "prompted_base"),
        CHAMPION_TEMPERATURES: ("champion@t=0.7", "champion@t=1.2"),
        AUTHOR_VS_CHAMPION: ("author", "champion"),
    }
    for (prompt, pairing), row in zip(dealt, rows):
        assert row["prompt_id"] == prompt.prompt_id and row["question"] == prompt.question
        if pairing == AUTHOR_VS_CHAMPION:
            assert row["answer_a"] == passage_as_answer(prompt.passage)  # the author's own words, verbatim
    assert len({row["candidate_id"] for row in rows}) == len(rows)
    again = generate_candidates(model, tokenizer, dealt, "champion", [(QUESTIONS[0], "Bees first.")], settings)
    assert [row["candidate_id"] for row in again] == [row["candidate_id"] for row in rows]  # seeded sampling


def _candidates(count: int) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "candidate_id": f"c{i}",
                "system": DEFAULT_SYSTEM_PROMPT,
                "question": QUESTIONS[i],
                "reference": PROMPTS[i].reference,
                "answer_a": f"answer a{i}",
                "origin_a": "champion",
                "answer_b": f"answer b{i}",
                "origin_b": "prompted_base",
            }
            for i in range(count)
        ]
    )


def test_the_authors_passage_answers_without_its_headings() -> None:
    passage = "## Watching the river\n\nIn February the river rises.\n#hashtag stays\n### Later\nIt stops at the steps."
    assert passage_as_answer(passage) == "In February the river rises.\n#hashtag stays\nIt stops at the steps."


def test_human_choices_win_over_the_judge_and_ties_teach_nothing() -> None:
    start = datetime(2026, 1, 1)
    labels = [label_row(f"c{i}", "llm-judge", JUDGE, "a", "a") for i in range(5)]
    labels += [
        label_row("c0", "ana", HUMAN, "b", "b"),  # overrules the judge
        label_row("c1", "ana", HUMAN, "b", "a"),
        label_row("c1", "ana", HUMAN, "a", "b"),  # changed her mind: the latest choice counts
        label_row("c2", "ana", HUMAN, "tie", "a"),
        label_row("c3", "ana", HUMAN, "skip", "a"),
    ]
    for n, label in enumerate(labels):
        label["labeled_at"] = start + timedelta(seconds=n)
    pairs, counts = pairs_from_labels(_candidates(6), pd.DataFrame(labels))
    assert counts == {"human": 2, "judge": 1, "overruled_judge": 3, "tie_or_skip": 2, "unlabeled": 1}
    by_id = pairs.set_index("candidate_id")
    assert (by_id.loc["c0", "chosen"], by_id.loc["c0", "rejected"], by_id.loc["c0", "chosen_origin"]) == (
        "answer b0",
        "answer a0",
        "prompted_base",
    )
    assert by_id.loc["c1", "chosen"] == "answer a1" and by_id.loc["c1", "label_source"] == HUMAN
    assert by_id.loc["c4", "label_source"] == JUDGE and by_id.loc["c4", "labeler"] == "llm-judge"
    chosen, rejected = pair_conversations(pairs)[0]
    assert chosen[:-1] == rejected[:-1] and chosen[-1]["content"] != rejected[-1]["content"]


def test_judge_prelabels_map_the_verdict_back_through_the_shuffled_order() -> None:
    candidates = _candidates(6)
    seen: list[str] = []

    def judge(requests) -> list[str]:
        seen.extend(r.messages[-1][1] for r in requests)
        # always prefers whichever answer is "a<i>", wherever it was placed; cannot read the last one
        verdicts = ["A" if "Answer A: answer a" in r.messages[-1][1] else "B" for r in requests]
        return verdicts[:-1] + ["no idea"]

    rows = judge_prelabels(candidates, judge, seed=3)
    assert [r["candidate_id"] for r in rows] == [f"c{i}" for i in range(5)]
    assert {r["choice"] for r in rows} == {"a"} and {r["source"] for r in rows} == {JUDGE}
    assert {r["shown_left"] for r in rows} == {"a", "b"}  # both placements occurred
    assert all(PROMPTS[i].reference in prompt for i, prompt in enumerate(seen))


def test_dpo_loss_matches_its_definition() -> None:
    chosen, rejected = torch.tensor([-3.0, -5.0]), torch.tensor([-4.0, -2.0])
    ref_chosen, ref_rejected = torch.tensor([-3.5, -5.0]), torch.tensor([-3.5, -2.5])
    loss, chosen_rewards, rejected_rewards = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=0.5)
    logits = 0.5 * ((chosen - ref_chosen) - (rejected - ref_rejected))
    assert torch.allclose(loss, -torch.log(torch.sigmoid(logits)).mean())
    assert torch.allclose(chosen_rewards - rejected_rewards, logits)


def test_dpo_raises_the_chosen_answers_margin_over_the_rejected(tiny_model_dir: Path, champion_dir: Path) -> None:
    rng = random.Random(0)
    pairs = [
        (
            chat_messages(DEFAULT_SYSTEM_PROMPT, q, f"I keep the {q.split()[-1][:-1]} calm and slow."),
            chat_messages(DEFAULT_SYSTEM_PROMPT, q, " ".join(rng.sample(["river", "tools", "winter", "wind"], 3))),
        )
        for q in QUESTIONS
    ]
    tokenizer = load_tokenizer(champion_dir)
    tokenized, _ = tokenize_pairs(tokenizer, pairs, 512)

    def margin(model) -> float:
        chosen, rejected = reference_logps(model, tokenized, 8, tokenizer.pad_token_id)
        return float((chosen - rejected).mean())

    before = margin(with_adapters(load_causal_lm(tiny_model_dir), {"default": champion_dir}))
    logged: list[tuple[dict, int]] = []
    settings = DpoSettings(epochs=4, batch_size=3, learning_rate=2e-3, dtype="float32", logging_steps=2)
    run = train_dpo(tiny_model_dir, champion_dir, pairs, settings, on_log=lambda m, n: logged.append((m, n)))
    after = margin(run.model)
    assert after > before + 0.5, (before, after)
    assert run.examples == 6 and len(run.steps) == 8 and logged[-1][1] == 8
    assert run.steps[-1]["rewards/margins"] > run.steps[0]["rewards/margins"]
    assert run.steps[-1]["loss"] < run.steps[0]["loss"]
    assert run.steps[0]["rewards/chosen"] == pytest.approx(0.0, abs=0.02)  # reference = the champion at step 1


def test_comparisons_labels_and_a_dpo_adapter_through_the_graph(tmp_path: Path, tiny_model_dir: Path) -> None:
    """Champion → comparisons (judge pre-labelled) → people's choices → pairs → DPO adapter → eval_report
    with the DPO contender → promoted through the same gate."""
    notes, data = tmp_path / "notes", tmp_path / "data"
    write_sample_notes(notes, 6)
    permissive = AutomationPolicy(promote_always=True)  # the gate has its own tests
    defs = scripted_definitions(notes, data, tiny_model_dir, permissive)
    instance = dg.DagsterInstance.ephemeral()
    evaluation = {"config": {"max_new_tokens": 4, "max_examples": 4, "dtype": "float32"}}
    sft = materialize_graph(
        defs,
        instance,
        notes,
        run_config={
            "ops": {
                "passages": {"config": {"min_chars": 60, "max_chars": 200}},
                "dataset_splits": {"config": {"test_fraction": 0.5}},
                "lora_adapter": {"config": {"max_steps": 2, "batch_size": 4, "dtype": "float32"}},
                "eval_report": evaluation,
            }
        },
    )
    assert sft.promoted
    db = Warehouse(data / "warehouse.duckdb")
    supervised = current_champion(db).version

    candidates_config = {"max_prompts": 6, "max_new_tokens": 6, "judge": "llm", "dtype": "float32"}
    comparisons = defs.resolve_job_def("comparisons_job").execute_in_process(
        instance=instance, run_config={"ops": {"preference_candidates": {"config": candidates_config}}}
    )
    assert comparisons.success
    candidates = db.query("SELECT * FROM preference_candidates ORDER BY created_at, candidate_id")
    assert len(candidates) == 6 and set(candidates["champion_version"]) == {supervised}
    assert set(candidates["pairing"]) == set(PAIRINGS)
    assert set(db.query("SELECT source FROM preference_labels")["source"]) == {JUDGE}  # the scripted judge says A
    again = defs.resolve_job_def("comparisons_job").execute_in_process(
        instance=instance, run_config={"ops": {"preference_candidates": {"config": candidates_config}}}
    )
    assert again.success and len(db.query("SELECT * FROM preference_candidates")) == 12  # new prompts, none replaced

    first = candidates.iloc[0]
    assert record_choice(db, first.candidate_id, "ana", "left", "b") == "b"  # the judge said a: ana wins
    assert record_choice(db, candidates.iloc[1].candidate_id, "ana", "tie", "a") == "tie"
    learned = defs.resolve_job_def("preference_job").execute_in_process(
        instance=instance,
        run_config={
            "ops": {
                "dpo_adapter": {"config": {"epochs": 1, "batch_size": 4, "dtype": "float32"}},
                "eval_report": evaluation,
            }
        },
    )
    assert learned.success
    pairs = db.query("SELECT * FROM preference_pairs")
    assert len(pairs) == 11  # 12 comparisons, one tie
    assert pairs.set_index("candidate_id").loc[first.candidate_id, "chosen"] == first.answer_b
    dpo = db.query("SELECT * FROM adapters WHERE method = 'dpo'").iloc[0]
    assert dpo.parent_version == supervised and dpo.version.endswith("-dpo") and dpo.train_examples == 11
    report = Path(db.query("SELECT report_path FROM evaluations WHERE adapter_version = ?", [dpo.version]).iloc[0, 0])
    text = report.read_text()
    assert (
        f"Evaluation of DPO adapter {dpo.version}" in text
        and f"DPO (preference optimization) of champion {supervised}" in text
    )
    contenders = db.query(
        "SELECT DISTINCT contender, contender_version FROM evaluation_metrics WHERE adapter_version = ?", [dpo.version]
    )
    assert dict(zip(contenders.contender, contenders.contender_version)) == {
        "base": "",
        "prompted": "",
        "base+rag": "",
        "champion": supervised,
        "tuned": dpo.version,
        "tuned+rag": "",
    }
    assert current_champion(db).version == dpo.version  # promoted through the same gate
