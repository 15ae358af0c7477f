import numpy as np
import pytest

from trainables.augment import (
    AUGMENTATIONS,
    augment,
    local_shuffle,
    shuffle_window,
    span_cutoff,
    word_deletion,
)
from trainables.errors import ConfigError

CLS, SEP = 101, 102


def _ids(inner_len: int) -> np.ndarray:
    """[CLS] 1000 1001 ... [SEP] as int32, like ``data.tokenize_splits`` stores them."""
    return np.concatenate([[CLS], np.arange(1000, 1000 + inner_len), [SEP]]).astype(np.int32)


KINDS_AND_STRENGTHS = [(kind, s) for kind in sorted(AUGMENTATIONS) for s in (0.0, 0.1, 0.3, 0.5)]


@pytest.mark.parametrize("kind,strength", KINDS_AND_STRENGTHS)
def test_ends_are_kept_and_dtype_preserved(kind, strength):
    rng = np.random.default_rng(0)
    for inner_len in (0, 1, 2, 7, 30):
        ids = _ids(inner_len)
        for _ in range(20):
            out = augment(ids, kind, strength, rng)
            assert out[0] == CLS and out[-1] == SEP
            assert out.dtype == np.int32
            assert CLS not in out[1:-1] and SEP not in out[1:-1]
            if inner_len > 0:
                assert len(out) >= 3  # at least one inner token survives


@pytest.mark.parametrize("kind", sorted(AUGMENTATIONS))
def test_strength_zero_is_identity(kind):
    ids = _ids(25)
    out = augment(ids, kind, 0.0, np.random.default_rng(1))
    np.testing.assert_array_equal(out, ids)
    assert out is not ids  # always a new array


@pytest.mark.parametrize("kind", sorted(AUGMENTATIONS - {"none"}))
def test_same_seed_same_view_and_seeds_matter(kind):
    ids = _ids(40)
    first = augment(ids, kind, 0.3, np.random.default_rng(42))
    again = augment(ids, kind, 0.3, np.random.default_rng(42))
    np.testing.assert_array_equal(first, again)
    others = [augment(ids, kind, 0.3, np.random.default_rng(seed)) for seed in range(5)]
    assert any(not np.array_equal(first, o) for o in others)


def test_input_is_not_modified():
    ids = _ids(20)
    before = ids.copy()
    rng = np.random.default_rng(0)
    for kind in AUGMENTATIONS:
        augment(ids, kind, 0.5, rng)
    np.testing.assert_array_equal(ids, before)


def test_word_deletion_rate_is_about_p():
    rng = np.random.default_rng(7)
    ids = _ids(100)
    p = 0.2
    deleted = [100 - (len(word_deletion(ids, p, rng)) - 2) for _ in range(200)]
    # 20,000 Bernoulli(0.2) draws: the standard error of the rate is 0.003.
    assert np.mean(deleted) / 100 == pytest.approx(p, abs=0.015)


def test_word_deletion_keeps_order_and_one_inner_token():
    rng = np.random.default_rng(3)
    ids = _ids(30)
    out = word_deletion(ids, 0.4, rng)
    inner = out[1:-1]
    assert np.all(np.diff(inner) > 0)  # a subsequence: order kept
    assert set(inner) <= set(ids[1:-1])
    for _ in range(10):
        assert len(word_deletion(ids, 1.0, rng)) == 3


@pytest.mark.parametrize("inner_len,ratio,span", [(30, 0.1, 3), (30, 0.25, 8), (10, 0.5, 5),
                                                  (7, 0.3, 3), (4, 1.0, 3), (1, 0.5, 0)])
def test_span_cutoff_removes_one_contiguous_span_of_exact_length(inner_len, ratio, span):
    # span = ceil(ratio * inner_len), capped at inner_len - 1 (0.1 * 30 has float noise: still 3)
    ids = _ids(inner_len)
    rng = np.random.default_rng(11)
    for _ in range(20):
        out = span_cutoff(ids, ratio, rng)
        assert len(out) == len(ids) - span
        inner, original = list(out[1:-1]), list(ids[1:-1])
        assert any(inner == original[:s] + original[s + span:]
                   for s in range(inner_len - span + 1))


def test_span_cutoff_start_covers_every_position():
    ids = _ids(6)
    original = list(ids[1:-1])
    rng = np.random.default_rng(5)
    starts = set()
    for _ in range(300):
        inner = list(span_cutoff(ids, 0.5, rng)[1:-1])  # removes 3 of 6: starts 0..3
        starts.add(next((i for i, (a, b) in enumerate(zip(inner, original)) if a != b), len(inner)))
    assert starts == {0, 1, 2, 3}


@pytest.mark.parametrize("window", [2, 3, 4, 7])
def test_local_shuffle_permutes_only_within_windows(window):
    ids = _ids(30)
    rng = np.random.default_rng(9)
    changed = False
    for _ in range(10):
        out = local_shuffle(ids, window, rng)
        assert len(out) == len(ids)
        inner, original = out[1:-1], ids[1:-1]
        for start in range(0, 30, window):
            np.testing.assert_array_equal(np.sort(inner[start:start + window]),
                                          original[start:start + window])
        changed |= not np.array_equal(out, ids)
    assert changed


def test_local_shuffle_is_uniform_within_a_window():
    ids = _ids(3)
    rng = np.random.default_rng(13)
    first = [local_shuffle(ids, 3, rng)[1] for _ in range(3000)]
    counts = np.bincount(np.asarray(first) - 1000, minlength=3)
    assert np.all(np.abs(counts / 3000 - 1 / 3) < 0.04)


def test_local_shuffle_window_one_is_identity():
    ids = _ids(12)
    np.testing.assert_array_equal(local_shuffle(ids, 1, np.random.default_rng(0)), ids)


def test_shuffle_window_mapping():
    assert [shuffle_window(s) for s in (0.0, 0.05, 0.1, 0.125, 0.25, 0.5)] == [1, 2, 3, 4, 6, 11]


def test_augment_rejects_unknown_kind_listing_allowed():
    with pytest.raises(ConfigError, match=r"must be one of \['none', 'shuffle', 'span_cutoff', "
                                          r"'word_deletion'\], but got 'synonym'"):
        augment(_ids(5), "synonym", 0.1, np.random.default_rng(0))


@pytest.mark.parametrize("strength", [-0.1, 0.6, float("nan")])
def test_augment_rejects_strength_out_of_range(strength):
    with pytest.raises(ValueError, match=r"`strength` must lie in \[0, 0.5\]"):
        augment(_ids(5), "word_deletion", strength, np.random.default_rng(0))


def test_argument_errors_name_the_argument():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="`p` must lie in"):
        word_deletion(_ids(5), 1.5, rng)
    with pytest.raises(ValueError, match="`ratio` must lie in"):
        span_cutoff(_ids(5), -0.2, rng)
    with pytest.raises(ValueError, match="`window` must be an integer >= 1"):
        local_shuffle(_ids(5), 0, rng)
    with pytest.raises(ValueError, match="`window` must be an integer >= 1"):
        local_shuffle(_ids(5), 2.5, rng)
    with pytest.raises(ValueError, match="`ids` must be a 1-D integer array"):
        word_deletion(np.array([CLS]), 0.1, rng)
    with pytest.raises(ValueError, match="`ids` must be a 1-D integer array"):
        word_deletion(np.zeros((2, 3), dtype=np.int64), 0.1, rng)
    with pytest.raises(TypeError, match="numpy.random.Generator"):
        augment(_ids(5), "shuffle", 0.2, 42)
