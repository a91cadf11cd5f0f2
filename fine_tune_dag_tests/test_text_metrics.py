import pytest

from fine_tune_dag.core.text.metrics import lcs_length, rouge_l_f1, support, token_f1, words


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
    from fine_tune_dag.core.text.metrics import content_words, repeated_trigram_share

    assert repeated_trigram_share("a b c a b c a b c") == 1.0
    assert repeated_trigram_share("one two three four five") == 0.0
    assert content_words("How do you oil the chain?") == ["oil", "chain"]
