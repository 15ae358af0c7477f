"""Seeded text perturbations, checked on hand-worked examples (no torch needed)."""

import numpy as np
import pytest

from trainables.errors import ConfigError
from trainables.perturb import (CONTRACTIONS, KINDS, QWERTY_NEIGHBOURS, Perturbation, delete_letters,
                                describe, insert_letters, keyboard_typos, parse_spec, perturb_text,
                                perturb_texts, substitute_letters, swap_letters, swap_words,
                                toggle_contractions)


def rng(seed=0):
    return np.random.default_rng(seed)


# --------------------------------------------------------------------------- character level


def test_swap_at_rate_one_swaps_disjoint_pairs_inside_words():
    assert swap_letters("abcd", 1.0, rng()) == "badc"
    assert swap_letters("abc", 1.0, rng()) == "bac"  # the odd letter out stays
    # words only: spaces, punctuation and digits neither move nor join a pair
    assert swap_letters("abc, de 12 fgh!", 1.0, rng()) == "bac, ed 12 gfh!"


def test_delete_at_rate_one_removes_every_letter_and_nothing_else():
    assert delete_letters("Hello, world 42!", 1.0, rng()) == ",  42!"


def test_insert_at_rate_one_adds_a_letter_of_the_same_case_after_each_letter():
    out = insert_letters("Ab c1", 1.0, rng())
    assert len(out) == 8
    assert out[0] == "A" and out[1].isupper() and out[1].isalpha()
    assert out[2] == "b" and out[3].islower() and out[3].isalpha()
    assert out[4] == " " and out[5] == "c" and out[6].islower() and out[7] == "1"


def test_substitute_at_rate_one_changes_every_letter_keeping_case_and_the_rest():
    text = "Hello, World 42!"
    for seed in range(20):
        out = substitute_letters(text, 1.0, rng(seed))
        assert len(out) == len(text)
        for a, b in zip(text, out):
            if a.isalpha():
                assert b != a and b.isalpha() and b.isupper() == a.isupper()
            else:
                assert b == a


def test_typo_at_rate_one_picks_a_keyboard_neighbour():
    for seed in range(20):
        out = keyboard_typos("Qa z1!", 1.0, rng(seed))
        assert out[0] in "WA" and out[1] in "qwsz" and out[3] in "asx" and out[2] + out[4:] == " 1!"
    # the table is symmetric: if b is next to a, a is next to b
    for key, near in QWERTY_NEIGHBOURS.items():
        for other in near:
            assert key in QWERTY_NEIGHBOURS[other], (key, other)
    assert sorted(QWERTY_NEIGHBOURS) == list("abcdefghijklmnopqrstuvwxyz")


# --------------------------------------------------------------------------- word level


@pytest.mark.parametrize("expanded, contracted", [
    ("do not", "don't"), ("i am", "i'm"), ("it is", "it's"), ("what is", "what's"),
    ("will not", "won't"), ("cannot", "can't")])
def test_contraction_table_works_both_ways(expanded, contracted):
    assert toggle_contractions(expanded, 1.0, rng()) == contracted
    assert toggle_contractions(contracted, 1.0, rng()) == expanded


def test_contraction_keeps_case_and_leaves_other_words_alone():
    text = "I am sure It is fine. DON'T panic, What’s that? we   are here"
    assert toggle_contractions(text, 1.0, rng()) == \
        "I'm sure It's fine. DO NOT panic, What is that? we're here"
    # a table form only counts as whole words
    assert toggle_contractions("hi am visit island bit's", 1.0, rng()) == "hi am visit island bit's"


def test_every_contraction_pair_round_trips():
    for expanded, contracted in CONTRACTIONS:
        assert toggle_contractions(toggle_contractions(expanded, 1.0, rng()), 1.0, rng()) == expanded


def test_word_swap_at_rate_one_swaps_disjoint_pairs_and_keeps_spacing():
    assert swap_words("a b c d", 1.0, rng()) == "b a d c"
    assert swap_words("a b  c d e", 1.0, rng()) == "b a  d c e"
    assert swap_words(" one two, ", 1.0, rng()) == " two, one "


# --------------------------------------------------------------------------- rates and seeds


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_rate_zero_changes_nothing(kind):
    text = "What is the weather like in Berlin, don't you know? 42 items!"
    assert KINDS[kind](text, 0.0, rng()) == text


@pytest.mark.parametrize("kind", ["swap", "delete", "insert", "substitute", "typo"])
def test_character_kinds_never_touch_spaces_digits_or_punctuation(kind):
    text = "wake me up at 7:30, please!"
    out = KINDS[kind](text, 1.0, rng())
    assert [c for c in out if not c.isalpha()] == [c for c in text if not c.isalpha()]


def test_same_seed_same_result_and_independent_of_the_other_texts():
    texts = ["set an alarm for seven", "what is the weather", "play some jazz music"]
    spec = parse_spec("typo:0.3,delete:0.1,word_swap:0.5")
    first = perturb_texts(texts, spec, seed=3)
    assert perturb_texts(texts, spec, seed=3) == first
    assert perturb_texts(texts, spec, seed=4) != first
    # a text's result depends on its own index and the seed, not on the rest of the batch
    assert perturb_texts(texts[:1], spec, seed=3) == first[:1]
    assert perturb_text(texts[2], spec, np.random.default_rng([3, 2])) == first[2]


def test_rate_is_roughly_the_share_of_letters_changed():
    text = "abcdefghij" * 100
    out = delete_letters(text, 0.2, rng())
    assert 150 <= len(text) - len(out) <= 250


# --------------------------------------------------------------------------- spec


def test_parse_spec_reads_kinds_and_rates():
    assert parse_spec("typo:0.1,delete:0.05") == [("typo", 0.1), ("delete", 0.05)]
    assert parse_spec(" swap : 1 , word_swap:0.5 ") == [Perturbation("swap", 1.0),
                                                         Perturbation("word_swap", 0.5)]
    assert describe(parse_spec("typo:0.10,contraction:1.0")) == "typo:0.1,contraction:1"


@pytest.mark.parametrize("spec, message", [
    ("", "is empty"),
    ("  ", "is empty"),
    ("tpyo:0.1", "unknown kind 'tpyo'; known kinds: swap, delete, insert, substitute, typo, "
                 "contraction, word_swap"),
    ("typo", "'typo' has no rate"),
    ("typo:", "'typo:' has no rate"),
    ("typo:0", r"must be a number in \(0, 1\]"),
    ("typo:1.5", r"must be a number in \(0, 1\].*'1.5'"),
    ("typo:-0.1", r"must be a number in \(0, 1\]"),
    ("typo:nan", r"must be a number in \(0, 1\]"),
    ("typo:lots", r"must be a number in \(0, 1\].*'lots'"),
    ("typo:0.1,,delete:0.1", "empty item"),
    ("typo:0.1,", "empty item"),
    ("typo:0.1,typo:0.1", "names typo:0.1 twice"),
])
def test_parse_spec_errors_say_what_is_wrong(spec, message):
    with pytest.raises(ConfigError, match=message):
        parse_spec(spec)


def test_parse_spec_error_names_the_setting():
    with pytest.raises(ConfigError, match="^--perturb 'x:1': unknown kind"):
        parse_spec("x:1", what="--perturb")
