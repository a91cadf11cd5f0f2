import random

import pandas as pd

from fine_tune_dag.core.common.statistics import Interval
from fine_tune_dag.core.evaluation.authorship import Calibration
from fine_tune_dag.core.evaluation.efficacy import Efficacy, HeldOut, Verdict, beaten_by, recommendation
from fine_tune_dag.core.evaluation.gate import PromotionVerdict, interval_metrics
from fine_tune_dag.core.evaluation.measures import summarize, win_rates
from fine_tune_dag.core.evaluation.report import comparisons_table, write_report
from fine_tune_dag.core.store.blind import BlindReading

NAN = float("nan")


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
        gate=PASSED,
        verdict=Verdict("tuned", "**Tune**: the new adapter"),
        efficacy=Efficacy({}, {}, HeldOut(["a.md", "b.md"], ["a.md", "b.md"], [])),
        head_to_head=head_to_head,
    )
    text = files.markdown.read_text()
    assert text.splitlines()[2:5] == ["## Was fine-tuning worth it on your notes?", "", "**Tune**: the new adapter"]
    assert "**Promotion gate: passes.**\n\n- better than every untuned contender beyond noise" in text
    assert "**Held out:** 2 held-out notes: 2 passages (voice) from 2 notes, 2 Q&A items from 2 notes" in text
    assert "**Few held-out notes (2 < 5):**" in text and "`fine-tune-dag crossval`" in text
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
    assert page.count("data:image/png;base64,") == 3 and 'src="loss_curve.png"' not in page
    inline = files.with_inline_images()
    assert inline.count("data:image/png;base64,") == 3 and "](loss_curve.png)" not in inline


NAMES = ["base", "prompted", "base+rag", "champion", "tuned", "tuned+rag"]
PASSED = PromotionVerdict(True, ("better than every untuned contender beyond noise",))
REFUSED = PromotionVerdict(False, ("not better than prompted beyond noise: voice",), uncertain=True)


def flipped(interval: Interval) -> Interval:
    return Interval(-interval.value, -interval.high, -interval.low, interval.notes, interval.items)


def with_gaps(gaps: dict[tuple[str, str, str], Interval], names: list[str] = NAMES) -> dict[str, dict[str, float]]:
    """Summaries holding paired gaps (measure, mine, theirs) in both directions; every other pair ties."""
    summary: dict[str, dict[str, float]] = {name: {} for name in names}
    tie = Interval(0.0, -0.1, 0.1, 4, 18)
    for measure in ("voice", "authorship", "unsupported"):
        for mine in names:
            for theirs in names:
                if mine != theirs:
                    summary[mine] |= interval_metrics(f"{measure}_vs_{theirs}", tie)
    for (measure, mine, theirs), interval in gaps.items():
        summary[mine] |= interval_metrics(f"{measure}_vs_{theirs}", interval)
        summary[theirs] |= interval_metrics(f"{measure}_vs_{mine}", flipped(interval))
    return summary


LOWER = Interval(-0.3, -0.45, -0.15, 4, 18)  # mine lower than theirs beyond noise
HIGHER = flipped(LOWER)


def test_the_verdict_refuses_tune_when_prompting_wins_on_authorship():
    beats_all_on_voice = {("voice", "tuned", other): LOWER for other in NAMES if other != "tuned"}
    summary = with_gaps(beats_all_on_voice)
    assert recommendation(summary, PASSED, held_out_notes=6).text.startswith("**Tune**: the new adapter")
    summary = with_gaps(beats_all_on_voice | {("authorship", "prompted", "tuned"): HIGHER})
    verdict = recommendation(summary, PASSED, held_out_notes=6)
    assert verdict.choice != "tuned" and not verdict.text.startswith("**Tune**")
    assert "prompted is better beyond noise on written notes attributed to you over tuned" in verdict.text


def test_the_verdict_never_says_tune_for_an_adapter_the_gate_refused():
    summary = with_gaps({("voice", "tuned", other): LOWER for other in NAMES if other != "tuned"})
    verdict = recommendation(summary, REFUSED, held_out_notes=6)
    assert verdict.choice is None and verdict.text.startswith("**Undecided**")
    assert "the promotion gate refused the new adapter (not better than prompted beyond noise: voice)" in verdict.text


def test_the_verdict_recommends_both_only_when_nothing_grounds_better():
    voice = {("voice", mine, other): LOWER for mine in ("tuned", "tuned+rag") for other in ("base", "prompted", "base+rag", "champion")}
    grounding = {("unsupported", "tuned+rag", other): LOWER for other in ("base", "prompted", "champion", "tuned")}
    summary = with_gaps(voice | grounding)
    assert recommendation(summary, PASSED, held_out_notes=6).choice == "tuned+rag"
    summary = with_gaps(voice | grounding | {("unsupported", "base+rag", "tuned+rag"): LOWER})  # only base+rag grounds
    verdict = recommendation(summary, PASSED, held_out_notes=6)
    assert verdict.choice is None and "the measures disagree" in verdict.text


def test_when_nothing_is_decided_it_says_so_names_what_would_decide_and_takes_the_cheapest():
    verdict = recommendation(with_gaps({}), PASSED, held_out_notes=4, min_notes=5, blind_picks=0)
    assert verdict.choice == "base"
    assert verdict.text == (
        "**Base model**: nothing measured beat the base model as it is — nothing is decided: no contender is better "
        "than another beyond noise on any measure, so the cheapest contender stands. What would decide it: more "
        "notes (only 4 held out), or a cross-validated verdict (`fine-tune-dag crossval`), a larger base model, "
        "blind readings (`fine-tune-dag annotate --blind`)."
    )


def test_the_headline_never_recommends_a_contender_its_own_table_shows_beaten():
    rng = random.Random(0)
    for _ in range(300):
        gaps = {
            (rng.choice(["voice", "authorship", "unsupported"]), *rng.sample(NAMES, 2)): rng.choice([LOWER, HIGHER])
            for _ in range(rng.randint(0, 6))
        }
        summary = with_gaps(gaps)
        gate = rng.choice([PASSED, REFUSED])
        verdict = recommendation(summary, gate, held_out_notes=6)
        if verdict.choice is None:
            assert verdict.text.startswith("**Undecided**")
            continue
        assert not beaten_by(summary, verdict.choice)
        assert gate.passed or verdict.choice not in ("tuned", "tuned+rag")
        table = comparisons_table(summary, verdict.choice)
        assert "**worse beyond noise**" not in "\n".join(
            row for row in table.splitlines() if "answer NLL" not in row
        )


def test_the_report_opens_with_all_six_contenders_their_intervals_counts_and_calibration(tmp_path):
    results = {name: per_item(2.0, 0.2) for name in NAMES}
    summary = {
        name: summarize(frame)
        | {"voice_perplexity": 10.0 + i, "authorship": 0.1 * i, "loops": 0.0, "memorized": 0.0, "cited_right": NAN}
        for i, (name, frame) in enumerate(results.items())
    }
    summary["tuned"] |= interval_metrics("voice_vs_prompted", Interval(-0.2, -0.3, -0.1, 3, 12))
    summary["tuned"] |= interval_metrics("authorship_vs_prompted", Interval(-0.1, -0.4, 0.2, 3, 8))
    intervals = {
        name: {
            "unsupported": Interval(0.25, 0.0, 0.5, 3, 2),
            "authorship": Interval(0.1 * i, 0.0, 0.9, 3, 8),
            "voice_perplexity": Interval(10.0 + i, 9.0 + i, 11.0 + i, 3, 12),
        }
        for i, name in enumerate(NAMES)
    }
    steps = pd.DataFrame({"step": [1], "loss": [3.0], "mean_token_accuracy": [0.1]})
    calibration = Calibration(Interval(0.9, 0.8, 1.0, 7, 40), Interval(0.05, 0.0, 0.1, 20, 150), 5, True, "")
    files = write_report(
        tmp_path / "r",
        "Evaluation",
        summary,
        results,
        steps,
        {},
        gate=REFUSED,
        verdict=Verdict("prompted", "**Prompt**: the base model with your own passages as examples"),
        efficacy=Efficacy({}, intervals, HeldOut(["a.md"] * 6 + ["b.md"] * 6, ["a.md", "b.md"], ["a.md"] * 4)),
        calibration=calibration,
        costs={"tuned": "0.50 s/answer + 60 s training"},
        blind=BlindReading(4, 4, Interval(0.5, 0.0, 1.0, 2, 4)),
    )
    text = files.markdown.read_text()
    assert "**Promotion gate: does not pass.**\n\n- not better than prompted beyond noise: voice" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and line.split(" | ")[0][2:] in NAMES]
    assert [row.split(" | ")[0][2:] for row in rows[:6]] == NAMES
    tuned = next(row for row in rows if row.startswith("| tuned |"))
    assert "| 14.000 [13.000, 15.000] | 0.400 [0.000, 0.900] | 0.250 [0.000, 0.500] |" in tuned
    assert tuned.endswith("| 0.50 s/answer + 60 s training |")
    assert (
        "| tuned vs prompted | voice (per-token NLL of your held-out passages) | -0.200 [-0.300, -0.100] | "
        "3 notes, 12 items | **better beyond noise** |" in text
    )
    assert (
        "| tuned vs prompted | written notes attributed to you | -0.100 [-0.400, 0.200] | 3 notes, 8 items | "
        "within noise |" in text
    )
    assert f"cross-validated by note): {calibration.text}" in text
    assert "readers took the model's text for yours in 0.500 [0.000, 1.000] of 4 picks over 4 trials from 2 notes" in text
    assert (files.markdown.parent / "worth_it.png").stat().st_size > 1000


def test_a_report_on_a_held_out_split_with_nothing_in_it_says_what_it_could_not_judge(tmp_path):
    empty = per_item(1.0, 0.0).iloc[:0]
    results = {"base": empty, "tuned": empty}
    files = write_report(
        tmp_path / "r",
        "Evaluation",
        {name: summarize(frame) for name, frame in results.items()},
        results,
        pd.DataFrame({"step": [1], "loss": [3.0], "mean_token_accuracy": [0.1]}),
        {},
        gate=PromotionVerdict(False, ("voice not judged: no held-out items to compare on",)),
        verdict=Verdict("base", "**Base model**: nothing measured beat the base model as it is"),
        efficacy=Efficacy({}, {}, HeldOut([], [], [])),
        blind=BlindReading(0, 0, Interval(NAN, NAN, NAN)),
    )
    text = files.markdown.read_text()
    assert (
        "**Not judged:** answer NLL and grounding: no held-out Q&A items (the held-out notes kept no pair); voice, "
        "authorship and the blind test: no held-out passages." in text
    )
    assert "**Blind test:** no readings yet" in text
