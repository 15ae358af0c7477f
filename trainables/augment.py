"""Cheap, seeded text augmentations that make contrastive views from token ids.

They work on one tokenized text: a 1-D numpy integer array of WordPiece ids that starts with
``[CLS]`` and ends with ``[SEP]`` (what ``data.tokenize_splits`` stores), so no re-tokenization is
needed. The first and last id are never touched; only the *inner* tokens between them change.
Each function returns a new array of the input's dtype and draws its randomness from the
``numpy.random.Generator`` it is given, so the same seed gives the same view.

``augment(ids, kind, strength, rng)`` maps one strength in ``[0, 0.5]`` to each operation's
parameter (0 leaves the text unchanged for every kind):

==================  =========================================================================
kind                parameter
==================  =========================================================================
``none``            strength ignored; a copy of the ids
``word_deletion``   ``p = strength``: each inner token is deleted with probability p
``span_cutoff``     ``ratio = strength``: one span of ``ceil(ratio * inner_len)`` tokens goes
``shuffle``         ``window = 1 + round(20 * strength)`` (half up): 0 -> 1 (no change),
                    0.05 -> 2, 0.1 -> 3, 0.25 -> 6, 0.5 -> 11
==================  =========================================================================
"""

from __future__ import annotations

import math

import numpy as np

from trainables.errors import ConfigError
from trainables.hparams import choices_of

AUGMENTATIONS = frozenset(choices_of("augmentation"))  # declared in trainables.hparams
MAX_STRENGTH = 0.5
SHUFFLE_WINDOW_PER_STRENGTH = 20  # window = 1 + round(20 * strength): 11 tokens at strength 0.5


def _split_ends(ids) -> tuple[np.ndarray, np.ndarray]:
    """The validated array and a view of its inner tokens (without [CLS] and [SEP])."""
    ids = np.asarray(ids)
    if ids.ndim != 1 or ids.shape[0] < 2 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(
            "`ids` must be a 1-D integer array that starts with [CLS] and ends with [SEP] "
            f"(length >= 2), but got dtype {ids.dtype} and shape {ids.shape}"
        )
    return ids, ids[1:-1]


def _with_ends(ids: np.ndarray, inner: np.ndarray) -> np.ndarray:
    return np.concatenate([ids[:1], inner, ids[-1:]]).astype(ids.dtype, copy=False)


def _check_rng(rng) -> None:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"`rng` must be a numpy.random.Generator (e.g. numpy.random.default_rng(seed)), "
            f"but got {type(rng).__name__}"
        )


def _check_fraction(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"`{name}` must lie in [0, 1], but got {value!r}")
    return value


def word_deletion(ids, p: float, rng: np.random.Generator) -> np.ndarray:
    """Delete each inner token independently with probability ``p``.

    At least one inner token always survives (one picked uniformly at random when every draw
    said "delete"), so a view is never just ``[CLS] [SEP]`` unless the input was.
    ``ids``: (length,) -> (new_length,), ``2 <= new_length <= length``.
    """
    p = _check_fraction("p", p)
    _check_rng(rng)
    ids, inner = _split_ends(ids)
    if inner.size == 0:
        return ids.copy()
    keep = rng.random(inner.size) >= p
    if not keep.any():
        keep[rng.integers(inner.size)] = True
    return _with_ends(ids, inner[keep])


def span_cutoff(ids, ratio: float, rng: np.random.Generator) -> np.ndarray:
    """Remove one contiguous span of ``ceil(ratio * inner_len)`` inner tokens at a uniformly random
    start (token cutoff, Shen et al. 2020, "A Simple but Tough-to-Beat Data Augmentation Approach
    for Natural Language Understanding and Generation"; here on ids rather than embeddings).

    The span is capped at ``inner_len - 1`` so one inner token always survives (as in
    ``word_deletion``). ``ratio * inner_len`` is rounded to 9 decimals before ``ceil`` so that
    float noise (``0.1 * 30 = 3.0000000000000004``) does not add a token.
    ``ids``: (length,) -> (length - span,).
    """
    ratio = _check_fraction("ratio", ratio)
    _check_rng(rng)
    ids, inner = _split_ends(ids)
    n = inner.size
    span = min(math.ceil(round(ratio * n, 9)), max(n - 1, 0))
    if span == 0:
        return ids.copy()
    start = int(rng.integers(0, n - span + 1))
    return _with_ends(ids, np.concatenate([inner[:start], inner[start + span:]]))


def local_shuffle(ids, window: int, rng: np.random.Generator) -> np.ndarray:
    """Shuffle the inner tokens within consecutive, non-overlapping windows of ``window`` tokens
    (the last window may be shorter); no token leaves its window, so word order changes only
    locally. ``window = 1`` leaves the text unchanged. ``ids``: (length,) -> (length,).
    """
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
        raise ConfigError(f"`window` must be an integer >= 1, but got {window!r}")
    _check_rng(rng)
    ids, inner = _split_ends(ids)
    if window == 1 or inner.size < 2:
        return ids.copy()
    # Sorting by (window index + a uniform draw in [0, 1)) permutes uniformly inside each window
    # and keeps the windows in order, in one vectorised argsort.
    keys = np.arange(inner.size) // window + rng.random(inner.size)
    return _with_ends(ids, inner[np.argsort(keys, kind="stable")])


def shuffle_window(strength: float) -> int:
    """Shuffle window for a strength in [0, 0.5]: ``1 + round(20 * strength)``, rounding half up."""
    return 1 + int(math.floor(SHUFFLE_WINDOW_PER_STRENGTH * strength + 0.5))


def augment(ids, kind: str, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Apply augmentation ``kind`` at ``strength`` in [0, 0.5] (mapping in the module docstring)."""
    if kind not in AUGMENTATIONS:
        raise ConfigError(
            f"`augmentation` must be one of {sorted(AUGMENTATIONS)}, but got {kind!r}"
        )
    strength = float(strength)
    if not 0.0 <= strength <= MAX_STRENGTH:
        raise ConfigError(
            f"`strength` must lie in [0, {MAX_STRENGTH}] for augmentation {kind!r}, "
            f"but got {strength!r}"
        )
    if kind == "word_deletion":
        return word_deletion(ids, strength, rng)
    if kind == "span_cutoff":
        return span_cutoff(ids, strength, rng)
    if kind == "shuffle":
        return local_shuffle(ids, shuffle_window(strength), rng)
    _check_rng(rng)
    return _split_ends(ids)[0].copy()
