import numpy as np
import pytest
from seqeval.metrics import classification_report, f1_score, precision_score, recall_score

from trainables.spans import bio_spans, sentence_accuracy, span_scores

# (gold, predicted) per sentence; the comment says what the sentence covers
FIXTURE = [
    (["B-time", "I-time", "O", "B-loc"], ["B-time", "I-time", "O", "B-loc"]),  # right, span at end
    (["O", "O", "O"], ["O", "O", "O"]),  # all O
    (["I-per", "I-per", "O"], ["B-per", "I-per", "O"]),  # gold I- without B-: same span
    (["B-per", "I-loc", "I-loc"], ["B-per", "I-per", "I-loc"]),  # type changes inside I- runs
    (["O", "B-loc", "I-loc"], ["O", "B-loc", "I-loc"]),  # span at sentence end
    (["B-time", "I-time", "O"], ["B-time", "I-time", "I-time"]),  # over-extended
    (["B-loc", "I-loc", "I-loc"], ["B-loc", "I-loc", "O"]),  # under-extended
    (["O", "O", "O"], ["O", "B-org", "O"]),  # a type only predicted
    (["B-loc", "B-loc", "O"], ["B-loc", "I-loc", "O"]),  # two adjacent spans merged
    (["O", "I-time", "B-time"], ["O", "I-time", "B-time"]),  # I- after O, then a B-
    (["B-per", "O", "I-per"], ["B-per", "O", "B-per"]),  # I- after O starts a span
    (["B-date-time", "I-date-time"], ["B-date-time", "I-date-time"]),  # a type with a dash
    (["B-loc"], ["I-loc"]),  # predicted I- without B-
    (["O", "B-per", "O"], ["O", "O", "O"]),  # missed
]
GOLD = [g for g, _ in FIXTURE]
PRED = [p for _, p in FIXTURE]


@pytest.mark.parametrize("tags, spans", [
    (["B-a", "I-a", "O", "B-b"], [("a", 0, 1), ("b", 3, 3)]),
    (["I-a", "I-a", "O"], [("a", 0, 1)]),
    (["B-a", "I-b", "I-b"], [("a", 0, 0), ("b", 1, 2)]),
    (["B-a", "B-a", "I-a"], [("a", 0, 0), ("a", 1, 2)]),
    (["O", "I-a", "B-a"], [("a", 1, 1), ("a", 2, 2)]),
    (["B-a", "O", "I-a"], [("a", 0, 0), ("a", 2, 2)]),
    (["B-date-time", "I-date-time"], [("date-time", 0, 1)]),
    (["O", "O"], []),
    ([], []),
])
def test_bio_spans_follow_conlleval_chunk_rules(tags, spans):
    assert bio_spans(tags) == spans


@pytest.mark.parametrize("bad", ["PER", "B-", "E-per", "b-per", "S-per", ""])
def test_bio_spans_refuse_a_tag_that_is_not_bio(bad):
    with pytest.raises(ValueError, match=f"tag {bad!r} at word 1 is not a BIO tag"):
        bio_spans(["O", bad])


def test_span_scores_by_hand():
    scores = span_scores(GOLD, PRED)
    # 17 gold spans, 16 predicted, 10 exact matches (counted sentence by sentence above)
    assert scores.precision == pytest.approx(10 / 16, abs=1e-12)
    assert scores.recall == pytest.approx(10 / 17, abs=1e-12)
    assert scores.f1 == pytest.approx(20 / 33, abs=1e-12)
    expected = {
        "date-time": (1.0, 1.0, 1.0, 1),
        "loc": (3 / 6, 3 / 7, 6 / 13, 7),
        "org": (0.0, 0.0, 0.0, 0),
        "per": (3 / 4, 3 / 5, 6 / 9, 5),
        "time": (3 / 4, 3 / 4, 3 / 4, 4),
    }
    assert set(scores.per_type) == set(expected)
    for kind, (precision, recall, f1, support) in expected.items():
        got = scores.per_type[kind]
        assert (got.precision, got.recall, got.f1) == pytest.approx((precision, recall, f1),
                                                                    abs=1e-12), kind
        assert got.support == support, kind


def test_span_scores_agree_with_seqeval_default_mode():
    scores = span_scores(GOLD, PRED)
    assert scores.precision == pytest.approx(precision_score(GOLD, PRED), abs=1e-9)
    assert scores.recall == pytest.approx(recall_score(GOLD, PRED), abs=1e-9)
    assert scores.f1 == pytest.approx(f1_score(GOLD, PRED), abs=1e-9)
    report = classification_report(GOLD, PRED, output_dict=True, zero_division=0)
    types = {k for k in report if not k.endswith(" avg")}
    assert set(scores.per_type) == types
    for kind in types:
        ours, theirs = scores.per_type[kind], report[kind]
        assert (ours.precision, ours.recall, ours.f1) == pytest.approx(
            (theirs["precision"], theirs["recall"], theirs["f1-score"]), abs=1e-9), kind
        assert ours.support == theirs["support"], kind


def test_span_scores_without_any_span_are_zero_not_an_error():
    scores = span_scores([["O", "O"], []], [["O", "O"], []])
    assert (scores.precision, scores.recall, scores.f1, scores.per_type) == (0.0, 0.0, 0.0, {})
    assert span_scores([], []).f1 == 0.0


def test_span_scores_refuse_sequences_of_different_lengths_naming_the_sentence():
    with pytest.raises(ValueError, match="sentence 1 has 2 gold tags but 3 predicted"):
        span_scores([["O"], ["O", "B-a"]], [["O"], ["O", "B-a", "O"]])
    with pytest.raises(ValueError, match="gold has 2 sentences but predicted has 1"):
        span_scores([["O"], ["O"]], [["O"]])


def test_sentence_accuracy_needs_the_label_and_every_tag_right():
    label_gold = np.array([1, 2, 3, 4])
    label_pred = np.array([1, 2, 0, 4])
    tags_gold = [["B-a", "O"], ["O"], ["O"], ["B-a", "I-a"]]
    tags_pred = [["B-a", "O"], ["B-a"], ["O"], ["B-a", "I-a"]]
    # 0: both right; 1: a tag wrong; 2: the label wrong; 3: both right
    assert sentence_accuracy(label_gold, label_pred, tags_gold, tags_pred) == 0.5
    assert sentence_accuracy([], [], [], []) == 0.0


def test_sentence_accuracy_refuses_arguments_of_different_sizes():
    with pytest.raises(ValueError, match="3 predicted labels"):
        sentence_accuracy([1, 2], [1, 2, 3], [["O"], ["O"]], [["O"], ["O"]])
    with pytest.raises(ValueError, match="sentence 0 has 1 gold tags but 2 predicted"):
        sentence_accuracy([1], [1], [["O"]], [["O", "O"]])
