"""Span metrics for BIO tags: chunks as conlleval finds them, micro and per-type span F1, and
sentence accuracy (label and every tag right).

A span is ``(type, start, end_inclusive)`` in word positions. Scores count exact matches only
(type, start and end all equal), as the CoNLL-2000 ``conlleval`` script does and as ``seqeval``'s
default (non-strict) mode does; tests/trainables/test_spans.py checks the two agree.

Pure functions of tag strings; no tokenizer, no model.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Optional, Sequence

OUTSIDE = "O"
PREFIXES = ("B", "I")


@dataclass
class TypeScores:
    precision: float
    recall: float
    f1: float
    support: int  # gold spans of the type


@dataclass
class SpanScores:
    precision: float
    recall: float
    f1: float
    per_type: dict[str, TypeScores] = field(default_factory=dict)  # entity type -> its scores


def _split_tag(tag: str, position: int) -> tuple[str, Optional[str]]:
    """("O", None) for an outside tag, else (prefix, type); refuses anything not O / B-t / I-t."""
    if tag == OUTSIDE:
        return OUTSIDE, None
    prefix, dash, kind = tag.partition("-")
    if prefix not in PREFIXES or not dash or not kind:
        raise ValueError(f"tag {tag!r} at word {position} is not a BIO tag: use 'O', 'B-<type>' "
                         f"or 'I-<type>'")
    return prefix, kind


def bio_spans(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """The chunks of one sentence's tags, in order, as ``(type, start, end_inclusive)``.

    conlleval's rules: a chunk starts at ``B-x``, and at ``I-x`` when the previous tag is ``O``
    or of another type (IOB1 data, or an ``I-`` without its ``B-``); it ends before ``O``,
    before a ``B-``, and before a tag of another type.
    """
    spans: list[tuple[str, int, int]] = []
    current: Optional[tuple[str, int]] = None  # (type, start) of the open chunk
    for position, tag in enumerate(tags):
        prefix, kind = _split_tag(tag, position)
        continues = current is not None and prefix == "I" and kind == current[0]
        if current is not None and not continues:
            spans.append((current[0], current[1], position - 1))
            current = None
        if prefix != OUTSIDE and not continues:
            current = (kind, position)
    if current is not None:
        spans.append((current[0], current[1], len(tags) - 1))
    return spans


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0


def _f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def _check_lengths(gold: Sequence[Sequence], predicted: Sequence[Sequence]) -> None:
    if len(gold) != len(predicted):
        raise ValueError(f"gold has {len(gold)} sentences but predicted has {len(predicted)}; "
                         f"pass one predicted tag sequence per gold sentence")
    for index, (g, p) in enumerate(zip(gold, predicted)):
        if len(g) != len(p):
            raise ValueError(f"sentence {index} has {len(g)} gold tags but {len(p)} predicted "
                             f"tags; predict one tag per word")


def span_scores(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> SpanScores:
    """Micro precision / recall / F1 over exact spans of all sentences, and the same per type.

    ``per_type`` holds every type seen in gold or predicted; its ``support`` is the number of
    gold spans of the type. An undefined ratio (no spans to divide by) is 0.0.
    """
    _check_lengths(gold, predicted)
    true_counts: Counter = Counter()
    pred_counts: Counter = Counter()
    hit_counts: Counter = Counter()
    for gold_tags, pred_tags in zip(gold, predicted):
        gold_spans, pred_spans = set(bio_spans(gold_tags)), set(bio_spans(pred_tags))
        true_counts.update(kind for kind, _, _ in gold_spans)
        pred_counts.update(kind for kind, _, _ in pred_spans)
        hit_counts.update(kind for kind, _, _ in gold_spans & pred_spans)
    per_type = {}
    for kind in sorted(set(true_counts) | set(pred_counts)):
        p = _ratio(hit_counts[kind], pred_counts[kind])
        r = _ratio(hit_counts[kind], true_counts[kind])
        per_type[kind] = TypeScores(precision=p, recall=r, f1=_f1(p, r), support=true_counts[kind])
    precision = _ratio(sum(hit_counts.values()), sum(pred_counts.values()))
    recall = _ratio(sum(hit_counts.values()), sum(true_counts.values()))
    return SpanScores(precision=precision, recall=recall, f1=_f1(precision, recall),
                      per_type=per_type)


def sentence_accuracy(label_gold: Sequence, label_pred: Sequence, tags_gold: Sequence[Sequence[str]],
                      tags_pred: Sequence[Sequence[str]]) -> float:
    """Share of examples whose sentence label is right AND every word tag is right (0.0 for none).

    This is JointBERT's "sentence accuracy" (Chen et al. 2019), also called exact match.
    """
    counts = {len(label_gold), len(label_pred), len(tags_gold), len(tags_pred)}
    if len(counts) != 1:
        raise ValueError(f"sentence_accuracy needs one entry per example in each argument, but got "
                         f"{len(label_gold)} gold labels, {len(label_pred)} predicted labels, "
                         f"{len(tags_gold)} gold tag sequences and {len(tags_pred)} predicted ones")
    _check_lengths(tags_gold, tags_pred)
    if len(label_gold) == 0:
        return 0.0
    right = sum(1 for lg, lp, tg, tp in zip(label_gold, label_pred, tags_gold, tags_pred)
                if lg == lp and list(tg) == list(tp))
    return right / len(label_gold)
