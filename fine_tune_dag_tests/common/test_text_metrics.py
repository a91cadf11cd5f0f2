import pytest

from fine_tune_dag.core.common.text_metrics import lcs_length, rouge_l_f1, support, token_f1, words


def test_words_lowercase_and_drop_punctuation():
    assert words("Here's the THING: chains, bees!") == ["here's", "the", "thing", "chains", "bees"]


def test_rouge_l_hand_computed():
    # prediction: the cat sat on mat (5) ; reference: the cat is on the mat (6); LCS = the cat on mat = 4
    assert lcs_length("the cat sat on mat".split(), "the cat is on the mat".split()) == 4
    p, r = 4 / 5, 4 / 6
    assert rouge_l_f1("The cat sat on mat.", "the cat is on the mat") == pytest.approx(2 * p * r / (p + r))
    assert rouge_l_f1("", "anything") == 0.0


def test_token_f1_hand_computed():
    # common bag: {the:1, chain:1} = 2 ; p = 2/3, r = 2/4
    assert token_f1("the chain stretches", "oil the chain weekly") == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert token_f1("bees", "chains") == 0.0


def test_support_is_share_of_answer_words_in_source():
    assert support("oil the chain", "I oil the chain on Sundays") == 1.0
    assert support("oil the bell", "I oil the chain") == pytest.approx(2 / 3)
    assert support("", "x") == 0.0


def test_repetition_and_content_words():
    from fine_tune_dag.core.common.text_metrics import content_words, repeated_trigram_share

    assert repeated_trigram_share("a b c a b c a b c") == 1.0
    assert repeated_trigram_share("one two three four five") == 0.0
    assert content_words("How do you oil the chain?") == ["oil", "chain"]


NOTE = (
    "In late August the colony shrinks on purpose. The queen lays less, the drones are thrown out at the entrance, "
    "and the workers start packing the brood nest with ivy honey that sets like concrete in the comb. I used to "
    "fight this with syrup and extra frames, until an old keeper told me to leave them to it and watch the weight "
    "instead of the frames."
)


def test_a_run_copied_from_a_train_text_is_measured_in_words():
    from fine_tune_dag.core.common.text_metrics import SharedRuns

    copied = words(NOTE)[5:50]  # "shrinks on purpose … until an"
    generation = "Honestly, my view is that the " + " ".join(copied) + " nothing more to say today."
    runs = SharedRuns(["Swarms leave in May.", NOTE, "Mites ride on the drones."])
    assert runs.longest(generation) == 45
    assert runs.longest(generation) == 45  # the second time from the cached train hashes
    assert runs.longest(NOTE.upper()) == len(words(NOTE)) == 67  # case and punctuation do not matter


def test_shared_runs_never_cross_train_texts_and_stop_at_unknown_words():
    from fine_tune_dag.core.common.text_metrics import SharedRuns

    runs = SharedRuns(["the bees cluster", "in winter they shiver"])
    assert runs.longest("the bees cluster in winter") == 3  # "cluster in" spans two train texts
    assert runs.longest("in winter, the bees quietly cluster") == 2  # "quietly" is in no train text
    assert runs.longest("Bees!") == 1
    assert runs.longest("nothing here matches") == 0
    assert runs.longest("") == 0
    assert SharedRuns([]).longest("the bees cluster") == 0
    assert SharedRuns(iter(["the bees cluster"])).longest("the bees cluster") == 3  # any iterable, read once


def test_a_sentence_repeated_three_times_is_a_loop_and_varied_prose_is_not():
    from fine_tune_dag.core.common.text_metrics import has_repetition_loop

    assert has_repetition_loop("the bees cluster in winter. the bees cluster in winter. the bees cluster in winter.")
    assert not has_repetition_loop("the bees cluster in winter. the bees cluster in winter.")
    assert not has_repetition_loop(NOTE + " " + NOTE.replace("colony", "hive")[:120])
    # Anaphora repeats three words, never the same four three times: prose, not a loop (n=3 would call it one).
    dickens = (
        "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of "
        "foolishness, it was the epoch of belief, it was the epoch of incredulity, it was the season of Light"
    )
    assert not has_repetition_loop(dickens)
    assert has_repetition_loop(dickens, n=3)
    assert has_repetition_loop("ok ok ok ok ok ok") and not has_repetition_loop("ok ok ok ok ok")
    assert not has_repetition_loop("bees bees", n=4) and not has_repetition_loop("")
    assert has_repetition_loop("a b c d a b c d", min_repeats=2) and not has_repetition_loop("a b c d a b c d")
