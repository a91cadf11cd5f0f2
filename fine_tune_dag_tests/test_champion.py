"""The promotion gate on hand-made numbers, and the champion in the real graph: it moves on a better
adapter and stays on a worse one, and `fine-tune-dag lineage` traces every version."""

import dagster as dg
from fine_tune_dag_testkit.notes import write_sample_notes
from fine_tune_dag_testkit.scripted import scripted_definitions
from transformers import AutoModelForCausalLM

from fine_tune_dag.cli import main, materialize_graph
from fine_tune_dag.core.store.promotion import PromotionPolicy, judge_challenger, promotion_verdict
from fine_tune_dag.core.store.registry import current_champion, evaluation_summary
from fine_tune_dag.core.store.warehouse import Warehouse

POLICY = PromotionPolicy(min_nll_improvement=0.05, metric_tolerance=0.02)


def metrics(nll: float, rouge_l: float = 0.3, token_f1: float = 0.3) -> dict[str, float]:
    return {"nll": nll, "perplexity": 0.0, "rouge_l": rouge_l, "token_f1": token_f1}


def test_gate_needs_the_nll_margin():
    assert promotion_verdict(metrics(0.95), metrics(1.0), POLICY, "champion").passed  # exactly 5% better
    assert not promotion_verdict(metrics(0.96), metrics(1.0), POLICY, "champion").passed
    assert not promotion_verdict(metrics(1.2), metrics(1.0), POLICY, "champion").passed


def test_gate_refuses_a_regression_beyond_the_tolerance():
    verdict = promotion_verdict(metrics(0.5, rouge_l=0.27), metrics(1.0, rouge_l=0.3), POLICY, "champion")
    assert not verdict.passed and "rouge_l worsened 0.0300" in verdict.text
    assert promotion_verdict(metrics(0.5, token_f1=0.29), metrics(1.0), POLICY, "champion").passed


def test_without_a_champion_the_base_model_is_the_incumbent():
    summary = {"base": metrics(1.0), "tuned": metrics(0.9)}
    assert judge_challenger(summary, POLICY).passed
    summary["champion"] = metrics(0.89)
    verdict = judge_challenger(summary, POLICY)
    assert not verdict.passed and "vs champion" in verdict.text


def voiced(nll: float, voice_nll: float, **extra: float) -> dict[str, float]:
    return metrics(nll) | {
        "voice_nll": voice_nll,
        "voice_perplexity": 2.718281828**voice_nll,
        "memorized": 0.0,
        **extra,
    }


def gap(value: float, low: float, high: float, items: int = 20) -> dict[str, float]:
    return {"voice_gap": value, "voice_gap_low": low, "voice_gap_high": high, "voice_items": items}


def test_an_adapter_that_loses_to_prompting_is_not_promoted():
    summary = {
        "base": voiced(1.0, 3.0),
        "prompted": voiced(1.0, 2.5),
        "base+rag": voiced(1.0, 2.8),
        "tuned": voiced(0.5, 2.6, **gap(0.1, 0.05, 0.15)),  # far better NLL than base, worse voice than prompting
    }
    verdict = judge_challenger(summary, POLICY)
    assert not verdict.passed and not verdict.uncertain
    assert "loses to prompted, which needs no fine-tuning: voice perplexity 13.46 vs prompted 12.18" in verdict.text
    summary["tuned"] = voiced(0.5, 2.2, **gap(-0.3, -0.4, -0.2))
    verdict = judge_challenger(summary, POLICY)
    assert verdict.passed and "beats prompted beyond noise" in verdict.text


def test_too_few_items_or_an_interval_spanning_zero_is_uncertain_and_holds_unless_configured():
    summary = {
        "base": voiced(1.0, 3.0),
        "prompted": voiced(1.0, 2.5),
        "tuned": voiced(0.5, 2.2, **gap(-0.3, -0.4, -0.2, items=2)),
    }
    verdict = judge_challenger(summary, POLICY)
    assert not verdict.passed and verdict.uncertain
    assert "too few test items to judge: 2 held-out passages < 5" in verdict.text
    summary["tuned"] = voiced(0.5, 2.4, **gap(-0.1, -0.3, 0.1))
    verdict = judge_challenger(summary, POLICY)
    assert not verdict.passed and verdict.uncertain and "too close to call against prompted" in verdict.text
    lenient = PromotionPolicy(min_nll_improvement=0.05, promote_when_uncertain=True)
    verdict = judge_challenger(summary, lenient)
    assert verdict.passed and "promoted although uncertain" in verdict.text


def test_the_gate_refuses_a_regurgitating_adapter():
    summary = {"base": voiced(1.0, 3.0), "tuned": voiced(0.5, 1.0, **gap(-2.0, -2.2, -1.8), memorized=0.25)}
    verdict = judge_challenger(summary, POLICY)
    assert not verdict.passed
    assert "regurgitates: 25% of its generations share a run of more than 40 words with the train split" in verdict.text
    summary["tuned"]["memorized"] = 0.05  # at the allowed share
    assert judge_challenger(summary, POLICY).passed


def test_without_qa_items_the_gate_decides_on_voice():
    nan = float("nan")
    summary = {"base": voiced(nan, 3.0), "tuned": voiced(nan, 2.0, **gap(-1.0, -1.2, -0.8))}
    verdict = judge_challenger(summary, POLICY)
    assert verdict.passed and "no held-out Q&A items" in verdict.text


def run_config(learning_rate: float, steps: int) -> dict:
    return {
        "ops": {
            "passages": {"config": {"min_chars": 60, "max_chars": 200}},
            "dataset_splits": {"config": {"test_fraction": 0.5}},
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
        untrained = materialize_graph(defs, instance, notes, run_config(1e-9, 1))
        assert untrained.success and not untrained.promoted  # no better than the base model
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
