"""Evaluation statistics and style/grounding metrics on inputs computed by hand."""

import pytest

from fine_tune_dag.core.modeling.statistics import bootstrap_mean, paired_outcomes, win_rate
from fine_tune_dag.core.text.metrics import style_distance, unsupported_share


def test_unsupported_share_counts_content_words_missing_from_the_source():
    source = "I oil the chain every Sunday with a rag."
    assert unsupported_share("I oil the chain on Sunday.", source) == 0.0  # oil, chain, sunday all there
    assert unsupported_share("I grease the chain weekly.", source) == pytest.approx(2 / 3)  # grease, weekly
    assert unsupported_share("", source) == 0.0


def test_style_distance_is_zero_for_the_same_text_and_one_for_nothing_shared():
    text = ["The bees were quiet in the cold, and the river was loud."]
    assert style_distance(text, text) == pytest.approx(0.0)
    assert style_distance(["xyz qqq"], ["abc ddd"]) == pytest.approx(1.0)
    near = style_distance(["The bees were loud in the heat, and the river was quiet."], text)
    far = style_distance(["BUY NOW!!! 50% OFF $$$"], text)
    assert 0 < near < far <= 1


def test_paired_outcomes_and_win_rate_by_hand():
    a, b = [0.9, 0.5, 0.2, 0.7], [0.1, 0.5, 0.4, 0.3]
    assert paired_outcomes(a, b) == [1.0, 0.5, 0.0, 1.0]
    assert paired_outcomes(a, b, higher_is_better=False) == [0.0, 0.5, 1.0, 0.0]
    rate = win_rate(a, b, samples=2000, seed=3)
    assert rate.value == pytest.approx(0.625)
    assert 0.0 <= rate.low <= 0.625 <= rate.high <= 1.0


def test_bootstrap_is_reproducible_by_seed_and_narrows_with_more_items():
    values = [0.0, 1.0] * 10
    assert bootstrap_mean(values, seed=7) == bootstrap_mean(values, seed=7)
    assert bootstrap_mean(values, seed=7) != bootstrap_mean(values, seed=8)
    wide, narrow = bootstrap_mean(values, seed=1), bootstrap_mean(values * 25, seed=1)
    assert narrow.high - narrow.low < wide.high - wide.low
    assert bootstrap_mean([2.0, 2.0, 2.0]).low == bootstrap_mean([2.0, 2.0, 2.0]).high == 2.0


def test_the_judge_sees_answers_in_seeded_random_order_and_verdicts_map_back():
    import pandas as pd

    from fine_tune_dag.core.modeling.evaluation import judge_requests, judged_outcomes

    mine = pd.DataFrame({"question": ["q1", "q2", "q3", "q4"], "reference": ["r"] * 4, "generation": ["MINE"] * 4})
    other = mine.assign(generation=["THEIRS"] * 4)
    requests, flipped = judge_requests(mine, other, seed=1)
    assert (requests, flipped) == judge_requests(mine, other, seed=1)
    for request, flip in zip(requests, flipped):
        prompt = request.messages[-1][1]
        assert prompt.index("THEIRS" if flip else "MINE") < prompt.index("MINE" if flip else "THEIRS")
    assert judged_outcomes(["A", "B", "Tie.", "no idea"], [False, False, True, True]) == [1.0, 0.0, 0.5]
    assert judged_outcomes(["A", "B"], [True, True]) == [0.0, 1.0]
