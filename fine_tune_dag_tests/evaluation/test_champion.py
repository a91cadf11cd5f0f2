"""The promotion gate on hand-made numbers, and the champion in the real graph: it moves on a better
adapter and stays on a worse one, and `fine-tune-dag lineage` traces every version."""

import dagster as dg
from fine_tune_dag_testkit.notes import write_sample_notes
from fine_tune_dag_testkit.scripted import scripted_definitions
from transformers import AutoModelForCausalLM

from fine_tune_dag.cli import main
from fine_tune_dag.core.common.statistics import Interval
from fine_tune_dag.core.evaluation.gate import PromotionPolicy, interval_metrics, judge_challenger
from fine_tune_dag.core.store.registry import current_champion, evaluation_summary
from fine_tune_dag.core.store.warehouse import Warehouse
from fine_tune_dag.runner import GATE_HELD, materialize_graph

POLICY = PromotionPolicy()
NAN = float("nan")


def gap(value: float, low: float, high: float, notes: int = 4, items: int = 18) -> Interval:
    return Interval(value, low, high, notes, items)


BETTER, WORSE, TIE = gap(-0.3, -0.45, -0.15), gap(0.3, 0.15, 0.45), gap(-0.02, -0.1, 0.04)


def contenders(**gaps: Interval) -> dict[str, dict[str, float]]:
    """Summaries where the new adapter's paired gaps (mine − theirs, per token) are `gaps`, keyed
    `<measure>_vs_<other>`; every contender named in a key is present."""
    others = {key.split("_vs_")[1] for key in gaps}
    summary: dict[str, dict[str, float]] = {name: {"nll": 1.0} for name in sorted(others)}
    summary["tuned"] = {"nll": 0.9, "memorized": 0.0}
    for key, interval in gaps.items():
        summary["tuned"] |= interval_metrics(key, interval)
    return summary


UNTUNED_BEATEN = {
    "voice_vs_base": BETTER,
    "voice_vs_prompted": BETTER,
    "voice_vs_base+rag": BETTER,
    "nll_vs_base": BETTER,
    "nll_vs_prompted": BETTER,
}


def test_the_gate_passes_an_adapter_better_than_every_untuned_contender_beyond_noise():
    verdict = judge_challenger(contenders(**UNTUNED_BEATEN), POLICY)
    assert verdict.passed and verdict.promotes and not verdict.uncertain
    assert "better than prompted beyond noise: voice (per-token NLL of your held-out passages) vs prompted: " in (
        verdict.text
    )
    assert "gap -0.300 [-0.450, -0.150] over 4 notes, 18 items" in verdict.text


def test_the_gate_refuses_an_adapter_that_loses_to_prompting_or_only_ties_with_it():
    verdict = judge_challenger(contenders(**(UNTUNED_BEATEN | {"voice_vs_prompted": WORSE})), POLICY)
    assert not verdict.passed and not verdict.uncertain
    assert verdict.reasons == (
        "worse than prompted, which needs no fine-tuning, beyond noise: voice (per-token NLL of your held-out "
        "passages) vs prompted: gap 0.300 [0.150, 0.450] over 4 notes, 18 items",
    )
    verdict = judge_challenger(contenders(**(UNTUNED_BEATEN | {"nll_vs_prompted": TIE})), POLICY)
    assert not verdict.passed and verdict.uncertain and "not better than prompted beyond noise" in verdict.text


def test_the_gate_refuses_against_a_champion_that_is_better_on_voice_and_passes_a_tie():
    better_champion = UNTUNED_BEATEN | {"voice_vs_champion": gap(0.2, 0.1, 0.3), "nll_vs_champion": TIE}
    verdict = judge_challenger(contenders(**better_champion), POLICY)
    assert not verdict.passed and not verdict.uncertain
    assert verdict.text.startswith("worse than the champion beyond the margin: voice")
    # a retrained adapter no worse than the champion replaces it: newer notes must not be blocked by a tie
    tie = UNTUNED_BEATEN | {"voice_vs_champion": TIE, "nll_vs_champion": TIE}
    verdict = judge_challenger(contenders(**tie), POLICY)
    assert verdict.passed and "not worse than the champion beyond the margin" in verdict.text
    straddling = UNTUNED_BEATEN | {"voice_vs_champion": gap(0.02, -0.05, 0.09), "nll_vs_champion": TIE}
    verdict = judge_challenger(contenders(**straddling), POLICY)
    assert not verdict.passed and verdict.uncertain and "may be worse than the champion by more than" in verdict.text


def test_nothing_passes_because_it_had_no_items():
    no_answers = {key: value for key, value in UNTUNED_BEATEN.items() if not key.startswith("nll")}
    summary = contenders(**no_answers) | {"prompted": {"nll": NAN}, "base": {"nll": NAN}}
    verdict = judge_challenger(summary, POLICY)
    assert not verdict.passed and not verdict.uncertain
    assert verdict.reasons == ("answer NLL (per token) not judged: no held-out items to compare on",)
    lenient = PromotionPolicy(promote_when_uncertain=True)
    assert not judge_challenger(summary, lenient).promotes  # a missing measure is not an uncertain one


def test_too_few_notes_or_a_straddling_interval_is_uncertain_and_holds_unless_configured():
    few = {key: gap(-0.3, -0.4, -0.2, notes=2) for key in UNTUNED_BEATEN}
    verdict = judge_challenger(contenders(**few), POLICY)
    assert not verdict.passed and verdict.uncertain and "too few held-out notes to judge (2 < 3)" in verdict.text
    one = {key: gap(-0.3, NAN, NAN, notes=1) for key in UNTUNED_BEATEN}
    assert not judge_challenger(contenders(**one), POLICY).passed
    lenient = judge_challenger(contenders(**few), PromotionPolicy(promote_when_uncertain=True))
    assert not lenient.passed and lenient.promotes and "promote_when_uncertain is set" in lenient.text
    losing = judge_challenger(contenders(**(few | {"voice_vs_base": WORSE})), PromotionPolicy(promote_when_uncertain=True))
    assert not losing.promotes  # a loss beyond noise is never promoted for being uncertain elsewhere
    assert judge_challenger(contenders(**(few | {"voice_vs_base": WORSE})), PromotionPolicy(promote_always=True)).promotes


def test_the_gate_refuses_a_regurgitating_adapter():
    summary = contenders(**UNTUNED_BEATEN)
    summary["tuned"]["memorized"] = 0.25
    verdict = judge_challenger(summary, POLICY)
    assert not verdict.passed
    assert "regurgitates: 25% of its generations share a run of more than 40 words with the train split" in verdict.text
    summary["tuned"]["memorized"] = 0.05  # at the allowed share
    assert judge_challenger(summary, POLICY).passed


def run_config(learning_rate: float, steps: int) -> dict:
    return {
        "ops": {
            "passages": {"config": {"min_chars": 60, "max_chars": 200}},
            "dataset_splits": {"config": {"test_fraction": 0.6}},  # 3 of the 6 notes held out
            "lora_adapter": {
                "config": {
                    "max_steps": steps,
                    "batch_size": 4,
                    "learning_rate": learning_rate,
                    "warmup_ratio": 0.0,
                    "dtype": "float32",
                }
            },
            "eval_report": {"config": {"max_new_tokens": 4, "dtype": "float32"}},
        }
    }


def test_champion_moves_on_a_better_adapter_and_stays_on_a_worse_one(tmp_path, tiny_model_dir, capsys, monkeypatch):
    notes, data = tmp_path / "notes", tmp_path / "data"
    write_sample_notes(notes, 6)
    defs = scripted_definitions(notes, data, tiny_model_dir)
    data.mkdir(parents=True, exist_ok=True)
    (data / "edge_cases.jsonl").write_text(
        '{"question": "What do you do when a hive goes quiet?"}\n{"reference": "no question"}\n'
    )
    db = Warehouse(data / "warehouse.duckdb")
    with dg.instance_for_test() as instance:
        capsys.readouterr()
        untrained = materialize_graph(defs, instance, notes, run_config(1e-9, 1))
        assert untrained.success and not untrained.promoted  # no better than the base model
        printed = "".join(capsys.readouterr())
        assert GATE_HELD in printed and "Traceback" not in printed and "DagsterAssetCheckFailedError" not in printed
        assert current_champion(db) is None
        check = instance.get_latest_asset_check_evaluation_record(
            dg.AssetCheckKey(dg.AssetKey("eval_report"), "beats_champion")
        )
        assert check is not None and not check.event.asset_check_evaluation.passed

        trained = materialize_graph(defs, instance, notes, run_config(5e-2, 8))
        assert trained.success and trained.promoted
        champion = current_champion(db)
        assert champion is not None

        worse = materialize_graph(defs, instance, notes, run_config(1e-9, 1))
        assert worse.success and not worse.promoted
        assert current_champion(db).version == champion.version  # the champion stays
        latest = db.query("SELECT * FROM evaluations ORDER BY created_at DESC LIMIT 1").iloc[0]
        assert latest.champion_version == champion.version  # judged against the champion on the same items
        contenders = evaluation_summary(db, latest.adapter_version)
        assert list(contenders) == ["base", "prompted", "base+rag", "champion", "tuned", "tuned+rag"]  # all six
        assert "## Head to head" in open(latest.report_path).read()

        versions = db.query("SELECT version FROM adapters ORDER BY created_at")["version"].tolist()
        answers = db.query("SELECT model, count(*) AS n FROM edge_case_answers GROUP BY model")
        cases = db.query("SELECT * FROM edge_cases")
        assert "user file" in set(cases["origin"]) and "hardest for the base model" in set(cases["origin"])
        assert dict(zip(answers["model"], answers["n"])) == {m: len(cases) for m in ["base", *versions]}
        assert "## Edge cases across adapter versions" in open(latest.report_path).read()
        edge = instance.get_latest_materialization_event(dg.AssetKey("edge_cases")).asset_materialization
        assert edge.metadata["user_file_problems"].value == ['edge_cases.jsonl line 2: no "question" text']
        assert len(versions) == 3 and len(db.query("SELECT * FROM champion_history")) == 1
        event = instance.get_latest_materialization_event(dg.AssetKey("champion_adapter")).asset_materialization
        assert event.metadata["version"].value == champion.version

    assert main(["--notes-dir", str(notes), "--data-dir", str(data), "lineage"]) == 0
    printed = capsys.readouterr().out
    assert all(v in printed for v in versions)
    assert f"adapter {champion.version}  ★ champion" in printed
    assert "note-00.md" in printed and "report " in printed and champion.dataset_version in printed

    # use the champion: stream an answer, export it merged, and fail clearly when the Hub is unreachable
    base = ["--notes-dir", str(notes), "--data-dir", str(data)]
    assert main([*base, "generate", "--adapter", "champion", "--max-new-tokens", "8", "Why oil the chain?"]) == 0
    capsys.readouterr()
    merged = tmp_path / "merged"
    assert main([*base, "export", "--merged", str(merged), "--adapter", "champion"]) == 0
    assert AutoModelForCausalLM.from_pretrained(merged) is not None
    assert main([*base, "export", "--merged", str(merged)]) == 1  # never overwrites
    assert "already exists and is not empty" in capsys.readouterr().err
    monkeypatch.setenv("HF_TOKEN", "hf_secret_token_123")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main([*base, "push", "--repo-id", "someone/notes-adapter"]) == 1
    error = capsys.readouterr().err
    assert "adapter not pushed" in error and "hf_secret_token_123" not in error
