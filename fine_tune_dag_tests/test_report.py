import pandas as pd

from fine_tune_dag.core.modeling.evaluation import summarize, win_rates
from fine_tune_dag.core.modeling.report import verdict, write_report


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
        tmp_path / "r", "Evaluation", summary, results, steps, {"adapter": "v1"}, "passes — NLL lower", head_to_head
    )
    text = files.markdown.read_text()
    verdict_line = "**The adapter beats the base model on held-out notes: answer NLL 3.000 → 2.000 (-33.3%).**"
    assert verdict_line in text.splitlines()
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


def test_verdict_says_whether_the_adapter_helps_with_the_numbers():
    assert verdict({"nll": 2.0}, {"nll": 2.5}) == (
        "The adapter does not beat the base model on held-out notes: answer NLL 2.000 → 2.500 (+25.0%)."
    )
    assert verdict({"nll": 2.0}, {"nll": 2.0}) == (  # a tie is no win
        "The adapter does not beat the base model on held-out notes: answer NLL 2.000 → 2.000 (+0.0%)."
    )
    assert verdict({"nll": 2.0}, {"nll": 1.5}) == (
        "The adapter beats the base model on held-out notes: answer NLL 2.000 → 1.500 (-25.0%)."
    )
