"""Voice, grounding, loops and memorization per contender, and paired comparisons, on hand-made numbers."""

import math

import pandas as pd
import pytest

from fine_tune_dag.core.common.text_metrics import SharedRuns
from fine_tune_dag.core.evaluation.efficacy import HeldOut, measure_efficacy, perplexity, voice_perplexity

TRAIN = "the hives are heavy in october and I heft each one from the back before the first frost comes"


def voice(*nll_per_token: float, tokens: int = 10) -> pd.DataFrame:
    return pd.DataFrame(
        {"nll_sum": [n * tokens for n in nll_per_token], "answer_tokens": [tokens] * len(nll_per_token)}
    )


def answers(generations: list[str], cited: list[list[str]], unsupported: float = 0.5) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "generation": generations,
            "unsupported": [unsupported] * len(generations),
            "rouge_l": [0.2] * len(generations),
            "nll_sum": [1.0] * len(generations),
            "answer_tokens": [1] * len(generations),
            "cited": cited,
        }
    )


def test_voice_perplexity_is_token_weighted_with_an_interval_over_notes():
    frame = pd.DataFrame({"nll_sum": [10.0, 30.0], "answer_tokens": [10, 10]})
    assert perplexity(frame) == pytest.approx(math.exp(2.0))
    spread = voice_perplexity(frame, ["a.md", "b.md"])
    assert spread.value == pytest.approx(math.exp(2.0))
    assert spread.low == pytest.approx(math.exp(1.0)) and spread.high == pytest.approx(math.exp(3.0))
    assert (spread.notes, spread.items) == (2, 2)


def test_efficacy_counts_loops_regurgitation_right_citations_and_compares_every_pair():
    loop = "the bees are cold. the bees are cold. the bees are cold. the bees are cold."
    copied = TRAIN  # 19 words shared with the train split
    qa = {
        "base": answers(["I do not know.", loop], [[], []]),
        "tuned": answers([copied, "Heavy hives in autumn."], [[], []], unsupported=0.25),
        "tuned+rag": answers(["From the notes.", "Also."], [["a.md", "b.md"], ["c.md"]]),
    }
    voices = {"base": voice(3.0, 3.0, 3.0), "tuned": voice(2.0, 2.5, 2.25), "tuned+rag": voice(2.0, 2.5, 2.0)}
    held_out = HeldOut(["a", "b", "c"], ["a", "b"], ["a"])
    result = measure_efficacy(
        qa, voices, {"tuned": ["A note."]}, {"tuned": [1.0]}, held_out, ["a.md", "b.md"], SharedRuns([TRAIN]), 10
    )
    metrics, intervals = result.metrics, result.intervals
    assert metrics["base"]["loops"] == 0.5 and metrics["tuned"]["loops"] == 0.0
    assert metrics["tuned"]["memorized"] == pytest.approx(1 / 3)  # one of three generations copies 19 > 10 words
    assert metrics["tuned"]["longest_shared_run"] == 19.0
    assert metrics["tuned+rag"]["cited_right"] == 0.5  # a.md cited for the first item, not b.md for the second
    assert math.isnan(metrics["base"]["cited_right"]) and math.isnan(metrics["base"]["authorship"])
    assert metrics["tuned"]["voice_perplexity"] == pytest.approx(math.exp(2.25))
    gap = intervals["tuned"]["voice_vs_base"]  # per-token, paired over the same three passages
    assert gap.value == pytest.approx(-0.75) and gap.high < 0 and (gap.notes, gap.items) == (3, 3)
    assert intervals["base"]["voice_vs_tuned"].value == pytest.approx(0.75)
    assert intervals["tuned"]["unsupported_vs_base"].value == pytest.approx(-0.25)
    assert "authorship_vs_base" not in intervals["tuned"]  # base wrote nothing: no comparison, not a zero
    for key in ("voice_vs_base", "voice_vs_base_low", "voice_vs_base_high", "voice_vs_base_notes"):
        assert key in metrics["tuned"]  # recorded, so the gate reads the same interval from the registry


def test_authorship_is_the_share_attributed_with_a_paired_interval_over_the_written_notes_notes():
    """Four written notes per contender from four held-out notes: the prompted base is attributed to the author
    once, the adapter three times; the paired gap over the same four notes is +0.5 and its interval is clustered
    by note (four notes, four items)."""
    qa = {name: answers(["An answer."], [[]]) for name in ("prompted", "tuned")}
    voices = {name: voice(2.0) for name in ("prompted", "tuned")}
    written = {name: ["A note.", "Another.", "A third.", "A fourth."] for name in ("prompted", "tuned")}
    attributed = {"prompted": [1.0, 0.0, 0.0, 0.0], "tuned": [1.0, 1.0, 1.0, 0.0]}
    held_out = HeldOut(["a"], ["a"], ["a", "b", "c", "d"])
    result = measure_efficacy(qa, voices, written, attributed, held_out, ["a.md"], SharedRuns([TRAIN]), 10)
    assert result.metrics["prompted"]["authorship"] == 0.25 and result.metrics["tuned"]["authorship"] == 0.75
    gap = result.intervals["tuned"]["authorship_vs_prompted"]
    assert gap.value == pytest.approx(0.5) and (gap.notes, gap.items) == (4, 4)
    assert -1.0 <= gap.low <= 0.5 <= gap.high <= 1.0
    assert result.intervals["prompted"]["authorship_vs_tuned"].value == pytest.approx(-0.5)
    spread = result.intervals["tuned"]["authorship"]
    assert spread.value == 0.75 and (spread.notes, spread.items) == (4, 4)
