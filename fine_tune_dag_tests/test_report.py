import pandas as pd

from fine_tune_dag.core.modeling.efficacy import Efficacy, recommendation
from fine_tune_dag.core.modeling.evaluation import summarize, win_rates
from fine_tune_dag.core.modeling.report import write_report
from fine_tune_dag.core.modeling.statistics import Interval


def per_item(nll: float, rouge: float) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "nll_sum": [nll * 10, nll * 5],
            "answer_tokens": [10, 5],
            "question": ["q1?", "q2?"],
            "reference": ["ref1", "ref2"],
            "generation": ["a | b", "c"],
            "rouge_l": [rouge] * 2,
            "token_f1": [rouge] * 2,
            "unsupported": [0.5, 0.0],
            "words": [3, 1],
            "source": ["I wrote ref1.", "I wrote ref2."],
            "note": ["a.md", "b.md"],
        }
    )


def test_summary_is_token_weighted():
    frame = per_item(1.0, 0.2).assign(nll_sum=[10.0, 2.0], answer_tokens=[10, 1], rouge_l=[0.2, 0.4])
    summary = summarize(frame)
    assert summary["nll"] == 12 / 11
    assert abs(summary["rouge_l"] - 0.3) < 1e-9
    assert (
        summary["unsupported"] == 0.25 and summary["words"] == 2.0 and summary["style_distance"] == 1.0
    )  # nothing in common with the sources


def test_report_has_verdict_tables_pictures_and_examples(tmp_path):
    results = {"base": per_item(3.0, 0.1), "tuned": per_item(2.0, 0.3)}
    summary = {k: summarize(v) for k, v in results.items()}
    steps = pd.DataFrame({"step": [1, 2, 3], "loss": [3.0, 2.5, 2.0], "mean_token_accuracy": [0.1, 0.2, 0.3]})
    head_to_head = win_rates(results, "tuned", seed=0)
    files = write_report(
        tmp_path / "r",
        "Evaluation",
        summary,
        results,
        steps,
        {"adapter": "v1"},
        "passes — NLL lower",
        head_to_head,
        advice="**Tune**: the tuned model alone",
    )
    text = files.markdown.read_text()
    assert text.splitlines()[2:5] == [
        "## Was fine-tuning worth it on your notes?",
        "",
        "**Tune**: the tuned model alone",
    ]
    assert "**Promotion gate:** passes — NLL lower" in text
    assert "| tuned vs base | answer likelihood | 1.000 [1.000, 1.000] |" in text
    for section in (
        "## Metrics on the test split",
        "## Head to head",
        "## Training",
        "## Side by side",
        "| adapter | v1 |",
    ):
        assert section in text
    assert "| q1? | ref1 |" in text
    assert "a \\| b" in text  # pipes inside generations do not break the table
    assert files.loss_curve.stat().st_size > 1000 and files.metrics_chart.stat().st_size > 1000
    page = files.html.read_text()
    assert page.startswith("<!doctype html>") and "<table>" in page and "<h2>Head to head" in page
    assert page.count("data:image/png;base64,") == 2 and 'src="loss_curve.png"' not in page
    inline = files.with_inline_images()
    assert inline.count("data:image/png;base64,") == 2 and "](loss_curve.png)" not in inline


def contenders(**voice: float) -> dict[str, dict[str, float]]:
    """Summaries with the given voice perplexities; every contender invents half its content words, ± 0.1."""
    return {
        name: {"voice_perplexity": value, "voice_nll": float(value), "unsupported": 0.5, "unsupported_high": 0.6}
        for name, value in voice.items()
    }


def test_the_recommendation_follows_voice_and_grounding():
    summary = contenders(base=30, prompted=20, **{"base+rag": 25}, tuned=12, **{"tuned+rag": 13})
    summary["tuned"]["voice_gap_high"] = -0.1
    summary["tuned+rag"] |= {"unsupported": 0.2, "unsupported_high": 0.3}  # wholly below the plain models' 0.5
    assert recommendation(summary).startswith("**Both**: use the tuned model with retrieval")
    summary["tuned"]["voice_gap_high"] = 0.05  # within noise of prompting
    advice = recommendation(summary)
    assert advice.startswith("**Retrieve**") and "does not write measurably more like you than prompted" in advice
    summary["tuned+rag"] |= {"unsupported": 0.4, "unsupported_high": 0.55}  # lower, but within noise
    assert recommendation(summary).startswith("**Prompt**: neither")
    summary["tuned"]["voice_gap_high"] = -0.1
    assert recommendation(summary).startswith("**Tune**: the tuned model alone")


def test_the_report_opens_with_all_six_contenders_and_their_intervals(tmp_path):
    names = ["base", "prompted", "base+rag", "champion", "tuned", "tuned+rag"]
    results = {name: per_item(2.0, 0.2) for name in names}
    summary = {
        name: summarize(frame)
        | {
            "voice_perplexity": 10.0 + i,
            "authorship": 0.1 * i,
            "loops": 0.0,
            "memorized": 0.0,
            "cited_right": float("nan"),
        }
        for i, (name, frame) in enumerate(results.items())
    }
    intervals = {
        name: {"unsupported": Interval(0.25, 0.0, 0.5), "authorship": Interval(0.1 * i, 0.0, 0.9)}
        for i, name in enumerate(names)
    }
    intervals["tuned"]["voice_ratio_vs_base"] = Interval(14 / 10, 1.2, 1.6)
    steps = pd.DataFrame({"step": [1], "loss": [3.0], "mean_token_accuracy": [0.1]})
    files = write_report(
        tmp_path / "r",
        "Evaluation",
        summary,
        results,
        steps,
        {},
        "does not pass — too few test items",
        advice="**Prompt**",
        uncertain=True,
        efficacy=Efficacy({}, intervals),
        costs={"tuned": "0.50 s/answer + 60 s training"},
        blind=(4, Interval(0.5, 0.0, 1.0)),
    )
    text = files.markdown.read_text()
    assert "**Too few test items to judge:**" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and line.split(" | ")[0][2:] in names]
    assert [row.split(" | ")[0][2:] for row in rows[:6]] == names
    tuned = next(row for row in rows if row.startswith("| tuned |"))
    assert "| 14.00 (×1.400 [1.200, 1.600] of base) | 0.400 [0.000, 0.900] | 0.250 [0.000, 0.500] |" in tuned
    assert tuned.endswith("| 0.50 s/answer + 60 s training |")
    assert "people took the champion's writing for yours in 0.500 [0.000, 1.000] of 4 picks" in text
    assert (files.markdown.parent / "worth_it.png").stat().st_size > 1000
