"""The authorship classifier on two hand-made voices: a beekeeper's terse notes and encyclopedic prose."""

from __future__ import annotations

import pytest

from fine_tune_dag.core.modeling.statistics import Interval
from fine_tune_dag.core.text.authorship import AuthorshipClassifier, reference_writing
from fine_tune_dag.core.text.metrics import words

BEEKEEPER = [
    "checked hive 2 this morning. queen seen, eggs in 4 frames. I added a super, bees calm. smoke barely needed.",
    "rain again so I stayed out of the hives. fed hive 3 a litre of 1:1 syrup through the top feeder.",
    "hive 1 bearding on the front at 6pm, hot day. I propped the lid for air. no swarm cells yet, will look sat.",
    "found 3 queen cells on frame 7 of hive 2. I split it: old queen + 4 frames into the nuc box. fingers crossed.",
    "mites: did a sugar roll on hive 3, 4 mites per 300 bees. not great. I'll treat after the honey comes off.",
    "took 2 frames of honey off hive 1, capped, maybe 5 kg. spun it in the kitchen, everything sticky, worth it.",
    "nuc from the split is bringing in orange pollen. I saw the new queen on frame 3, marked her blue.",
    "wasps at the entrance of hive 3 all afternoon. I narrowed the entrance to one bee space. they're fighting back.",
    "winter check: hefted all three hives, 1 and 2 heavy, 3 light. I put a fondant block on 3 and closed up fast.",
    "cold snap, bees clustered tight. I didn't open anything, just listened at the side of each box. hum in all three.",
    "first cleansing flight today, 11 degrees. dead bees on the landing board of hive 2 but lots flying. phew.",
    "ordered new frames and foundation, 30 of each. I need to fix the broken stand under hive 1 before spring.",
    # held out
    "hive 2 is angry today, stung twice through the gloves. I think a skunk has been scratching at the entrance.",
    "swapped the brood boxes on hive 1 so the queen has room to move up. I'll check for eggs on thursday.",
    "lime trees in flower, the smell is everywhere. I added a second super on hive 1, they're filling fast.",
    "hive 3 queenless I think, no eggs, no young larvae. I gave them a frame of eggs from hive 1 to raise a queen.",
    "harvest done. I got 14 jars from hive 1 and 9 from hive 2. labels printed, gave two to the neighbours.",
    "cleaned the extractor and stored the supers with wax moth protection. I'm tired but the shed smells of honey.",
]
ENCYCLOPEDIA = [
    "The Danube is the second-longest river in Europe, flowing some 2,850 kilometres from the Black Forest to the "
    "Black Sea through ten countries.",
    "Basalt is a fine-grained volcanic rock formed from the rapid cooling of lava rich in magnesium and iron. It "
    "constitutes most of the oceanic crust.",
    "The Treaty of Westphalia, concluded in 1648, ended the Thirty Years' War and is frequently cited as the origin of "
    "the modern system of sovereign states.",
    "Photosynthesis is the process by which green plants and certain other organisms convert light energy into "
    "chemical energy stored in glucose.",
    "The violin is a bowed string instrument with four strings tuned in perfect fifths. It is the smallest and "
    "highest-pitched member of its family.",
    "Mount Kilimanjaro, located in north-eastern Tanzania, is the highest mountain in Africa, with its summit at "
    "approximately 5,895 metres above sea level.",
    "The printing press, developed by Johannes Gutenberg around 1440, enabled the mass production of books and "
    "contributed to the spread of literacy across Europe.",
    "Copper is a chemical element with the symbol Cu and atomic number 29. It is a soft, malleable and ductile metal "
    "with very high thermal and electrical conductivity.",
    "The Byzantine Empire, also referred to as the Eastern Roman Empire, persisted for nearly a millennium after the "
    "fall of the western provinces in the fifth century.",
    "Glaciers are persistent bodies of dense ice that move under their own weight. They form where the accumulation "
    "of snow exceeds its ablation over many years.",
    "The Pacific Ocean is the largest and deepest of the world's oceanic divisions, extending from the Arctic in the "
    "north to the Southern Ocean in the south.",
    "Impressionism was an art movement that originated in France in the latter half of the nineteenth century, "
    "characterised by visible brushstrokes and an emphasis on light.",
    # held out
    "The human heart is a muscular organ that pumps blood through the circulatory system. In adults it weighs "
    "approximately 250 to 350 grams.",
    "Latin is a classical language belonging to the Italic branch of the Indo-European languages. It was originally "
    "spoken in the region around Rome known as Latium.",
    "The Sahara is the largest hot desert in the world, covering much of North Africa. Its climate has alternated "
    "between wet and dry periods over the past several hundred thousand years.",
    "Penicillin, discovered by Alexander Fleming in 1928, was the first widely used antibiotic and remains an "
    "important treatment for bacterial infections.",
    "The city of Kyoto served as the imperial capital of Japan for more than one thousand years and is renowned for "
    "its temples, shrines and gardens.",
    "Granite is a coarse-grained intrusive igneous rock composed mainly of quartz, alkali feldspar and plagioclase. "
    "It is widely used as a building material.",
]
TRAIN = 12


def test_the_classifier_tells_the_beekeeper_from_the_encyclopedia_on_held_out_texts():
    classifier = AuthorshipClassifier.fit(BEEKEEPER[:TRAIN], ENCYCLOPEDIA[:TRAIN])
    author, other = classifier.attributed_share(BEEKEEPER[TRAIN:], list(range(len(BEEKEEPER[TRAIN:])))), classifier.attributed_share(ENCYCLOPEDIA[TRAIN:], list(range(len(ENCYCLOPEDIA[TRAIN:]))))
    assert author.value >= 0.75 and other.value <= 0.25, (author, other)
    # The wistful last note ("I'm tired but the shed smells of honey") reads least like the terse ones.
    assert (author, other) == (Interval(5 / 6, 0.5, 1.0, 6, 6), Interval(0.0, 0.0, 0.0, 6, 6))
    probabilities = classifier.author_probability([BEEKEEPER[0], BEEKEEPER[-1], ENCYCLOPEDIA[-1]])
    assert probabilities[0] > 0.5 > probabilities[1] > probabilities[2]


def test_two_fits_on_the_same_texts_give_the_same_probabilities():
    texts = BEEKEEPER[TRAIN:] + ENCYCLOPEDIA[TRAIN:]
    first = AuthorshipClassifier.fit(BEEKEEPER[:TRAIN], ENCYCLOPEDIA[:TRAIN]).author_probability(texts)
    second = AuthorshipClassifier.fit(BEEKEEPER[:TRAIN], ENCYCLOPEDIA[:TRAIN]).author_probability(texts)
    assert first == second and len(first) == len(texts) and all(0.0 < p < 1.0 for p in first)
    assert AuthorshipClassifier.fit(BEEKEEPER[:TRAIN], ENCYCLOPEDIA[:TRAIN]).author_probability([]) == []


def test_the_beekeeper_is_told_from_the_shipped_reference_writing():
    classifier = AuthorshipClassifier.fit(BEEKEEPER[:TRAIN], reference_writing())
    assert classifier.attributed_share(BEEKEEPER[TRAIN:], list(range(len(BEEKEEPER[TRAIN:])))).value >= 0.75
    assert classifier.attributed_share(ENCYCLOPEDIA, list(range(len(ENCYCLOPEDIA)))).value <= 0.25


def test_the_reference_writing_is_many_passages_of_other_voices_without_the_header():
    passages = reference_writing()
    assert len(passages) >= 20
    assert all(60 <= len(words(p)) <= 150 for p in passages), [len(words(p)) for p in passages]
    assert passages[0].startswith("It is a truth universally acknowledged")
    assert not [p for p in passages if p.startswith("#") or "\n" in p]
    assert len(set(passages)) == len(passages)


@pytest.mark.parametrize(
    ("author", "other", "missing"),
    [([], ENCYCLOPEDIA, "no author texts"), (BEEKEEPER, [], "no other texts")],
)
def test_fitting_needs_both_sides(author: list[str], other: list[str], missing: str):
    with pytest.raises(ValueError, match=missing):
        AuthorshipClassifier.fit(author, other)
