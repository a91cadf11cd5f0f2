"""Evaluation statistics and style/grounding metrics on inputs computed by hand."""

import numpy as np
import pytest

from fine_tune_dag.core.common.statistics import clustered_mean, paired_difference, paired_outcomes, win_rate
from fine_tune_dag.core.common.text_metrics import style_distance, unsupported_share


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
    rate = win_rate(a, b, ["n1", "n1", "n2", "n3"], samples=2000, seed=3)
    assert rate.value == pytest.approx(0.625)
    assert 0.0 <= rate.low <= 0.625 <= rate.high <= 1.0
    assert (rate.notes, rate.items) == (3, 4)


NOTES = [f"note-{n}" for n in range(4) for _ in range(5)]  # four held-out notes, five passages each


def test_identical_contenders_give_an_interval_around_zero():
    rng = np.random.default_rng(0)
    scores = rng.normal(3.0, 0.5, size=len(NOTES))
    gap = paired_difference(scores, scores, NOTES)
    assert gap.value == gap.low == gap.high == 0.0
    noisy = paired_difference(scores, scores + rng.normal(0, 0.3, size=len(NOTES)), NOTES)
    assert noisy.low < 0 < noisy.high and not noisy.below() and not noisy.above()


def test_a_shift_present_in_every_note_is_detected():
    rng = np.random.default_rng(1)
    theirs = rng.normal(3.0, 0.5, size=len(NOTES))
    mine = theirs - 0.4 + rng.normal(0, 0.1, size=len(NOTES))
    gap = paired_difference(mine, theirs, NOTES)
    assert gap.below(0.0) and gap.high < -0.2
    assert (gap.notes, gap.items) == (4, 20)


def test_a_shift_in_one_note_of_four_is_not_beyond_noise_though_items_alone_would_claim_it():
    theirs = np.full(len(NOTES), 3.0)
    mine = theirs - np.where(np.asarray(NOTES) == "note-2", 1.0, 0.0)  # one note much better, the others equal
    clustered = paired_difference(mine, theirs, NOTES)
    assert clustered.value == pytest.approx(-0.25)
    assert not clustered.below(0.0) and clustered.high == 0.0  # a draw without note-2 has no difference at all
    by_item = paired_difference(mine, theirs, list(range(len(NOTES))))  # each passage its own cluster
    assert by_item.below(0.0)  # what the item bootstrap claimed: the reason intervals resample notes


def test_the_token_weighted_gap_is_a_ratio_of_sums_and_needs_two_notes():
    gap = paired_difference([10.0, 30.0], [20.0, 20.0], ["a", "b"], weights=[10, 30])
    assert gap.value == pytest.approx(0.0)  # (−10 + 10) / 40
    alone = paired_difference([10.0, 30.0], [20.0, 40.0], ["a", "a"], weights=[10, 10])
    assert alone.value == pytest.approx(-1.0) and not alone.decided and not alone.below(0.0)
    assert str(alone) == "-1.000 [no interval: 1 note]"
    assert not clustered_mean([], []).decided and str(clustered_mean([], [])) == "—"


def test_the_bootstrap_is_reproducible_by_seed_and_narrows_with_more_notes():
    values = np.random.default_rng(5).normal(size=20)
    few = [i // 2 for i in range(20)]
    assert clustered_mean(values, few, seed=7) == clustered_mean(values, few, seed=7)
    assert clustered_mean(values, few, seed=7) != clustered_mean(values, few, seed=8)
    shares = [float(i % 3 == 0) for i in range(200)]
    wide, narrow = clustered_mean(shares[:20], few), clustered_mean(shares, [i // 4 for i in range(200)])
    assert narrow.high - narrow.low < wide.high - wide.low


def test_the_judge_sees_answers_in_seeded_random_order_and_verdicts_map_back():
    import pandas as pd

    from fine_tune_dag.core.evaluation.measures import judge_requests, judged_outcomes

    mine = pd.DataFrame({"question": ["q1", "q2", "q3", "q4"], "reference": ["r"] * 4, "generation": ["MINE"] * 4})
    other = mine.assign(generation=["THEIRS"] * 4)
    requests, flipped = judge_requests(mine, other, seed=1)
    assert (requests, flipped) == judge_requests(mine, other, seed=1)
    for request, flip in zip(requests, flipped):
        prompt = request.messages[-1][1]
        assert prompt.index("THEIRS" if flip else "MINE") < prompt.index("MINE" if flip else "THEIRS")
    notes = ["a.md", "a.md", "b.md", "c.md"]
    assert judged_outcomes(["A", "B", "Tie.", "no idea"], [False, False, True, True], notes) == (
        [1.0, 0.0, 0.5],
        ["a.md", "a.md", "b.md"],
    )
    assert judged_outcomes(["A", "B"], [True, True], notes[:2]) == ([0.0, 1.0], ["a.md", "a.md"])
