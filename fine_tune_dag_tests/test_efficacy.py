"""Voice, grounding, loops and memorization per contender, on hand-made numbers."""

import math

import pandas as pd
import pytest

from fine_tune_dag.core.modeling.efficacy import measure_efficacy, perplexity, perplexity_ratio, voice_gap
from fine_tune_dag.core.text.metrics import SharedRuns

TRAIN = "the hives are heavy in october and I heft each one from the back before the first frost comes"


def voice(*nll_per_token: float, tokens: int = 10) -> pd.DataFrame:
    return pd.DataFrame(
        {"nll_sum": [n * tokens for n in nll_per_token], "answer_tokens": [tokens] * len(nll_per_token)}
    )


def answers(generations: list[str], cited: list[list[str]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "generation": generations,
            "unsupported": [0.5] * len(generations),
            "rouge_l": [0.2] * len(generations),
            "cited": cited,
        }
    )


def test_voice_perplexity_is_token_weighted_and_the_ratio_is_paired():
    frame = pd.DataFrame({"nll_sum": [10.0, 30.0], "answer_tokens": [10, 10]})
    assert perplexity(frame) == pytest.approx(math.exp(2.0))
    ratio = perplexity_ratio(voice(1.0, 2.0, 3.0), voice(2.0, 3.0, 4.0))
    assert ratio.value == pytest.approx(math.exp(-1.0)) and ratio.low == ratio.high == pytest.approx(math.exp(-1.0))
    gap = voice_gap(voice(1.0, 2.0), voice(2.0, 2.0), ["a.md", "b.md"])
    assert gap.value == pytest.approx(-0.5) and gap.low == pytest.approx(-1.0) and gap.high == pytest.approx(0.0)


def test_efficacy_counts_loops_regurgitation_and_right_citations():
    loop = "the bees are cold. the bees are cold. the bees are cold. the bees are cold."
    copied = TRAIN  # 19 words shared with the train split
    qa = {
        "base": answers(["I do not know.", loop], [[], []]),
        "tuned": answers([copied, "Heavy hives in autumn."], [[], []]),
        "tuned+rag": answers(["From the notes.", "Also."], [["a.md", "b.md"], ["c.md"]]),
    }
    voices = {"base": voice(3.0, 3.0), "tuned": voice(2.0, 2.5), "tuned+rag": voice(2.0, 2.5)}
    result = measure_efficacy(
        qa, voices, {"tuned": ["A note."]}, ["a.md", "b.md"], ["a.md", "b.md"], None, SharedRuns([TRAIN]), max_shared_words=10
    )
    assert result.metrics["base"]["loops"] == 0.5 and result.metrics["tuned"]["loops"] == 0.0
    assert result.metrics["tuned"]["memorized"] == pytest.approx(1 / 3)  # one of three generations copies 19 > 10 words
    assert result.metrics["tuned"]["longest_shared_run"] == 19.0
    assert result.metrics["tuned+rag"]["cited_right"] == 0.5  # a.md cited for the first item, not b.md for the second
    assert math.isnan(result.metrics["base"]["cited_right"]) and math.isnan(result.metrics["tuned"]["authorship"])
    assert result.metrics["tuned"]["voice_perplexity"] == pytest.approx(math.exp(2.25))
    assert result.metrics["tuned"]["voice_gap"] == pytest.approx(-0.75)  # against base, the only untuned contender
    assert result.metrics["tuned"]["voice_ratio_vs_base_high"] == pytest.approx(
        result.intervals["tuned"]["voice_ratio_vs_base"].high
    )
