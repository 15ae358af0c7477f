"""Typo-robust training (issue 25): training batches whose texts are perturbed as the robustness
evaluation perturbs validation (``trainables.perturb``), drawn afresh each epoch and seeded.

``perturb_train`` is the mix (``KIND:RATE[,KIND:RATE...]``, as ``perturb_eval``; null = off) and
``perturb_train_prob`` the share of training examples perturbed. Example ``i`` of epoch ``e`` (a
round, with ``eval_every``) of a trial seeded ``s`` draws from ``numpy.random.default_rng([s, e,
i])``: whether it is perturbed and how. So the noise depends on (seed, epoch, example) alone, not
on the batch it falls in, the order of batches or the worker that trains it: an epoch sees other
typos than the one before, and a resumed or data-parallel trial the same ones as an unbroken one.

A trial holds token ids, not texts, so the text perturbed is the tokenizer's decoding of the ids
(for an uncased model the lower-cased text it reads anyway), tokenized again as training tokenizes
(``encode_texts``, cut to ``max_length``). The labels stay.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import numpy as np

from trainables.encoding import EncodedSplit, collate, encode_texts
from trainables.models import load_tokenizer
from trainables.perturb import Perturbation, parse_spec, perturb_text


def noisy_ids(split, index: int, *, tokenizer, perturbations: list[Perturbation], prob: float,
              seed: int, epoch: int, max_length: int) -> np.ndarray:
    """Example ``index``'s token ids in epoch ``epoch``: perturbed with probability ``prob``."""
    ids = split.input_ids[index]
    rng = np.random.default_rng([seed, epoch, int(index)])
    if prob <= 0 or rng.random() >= prob:
        return ids
    text = tokenizer.decode(np.asarray(ids).tolist(), skip_special_tokens=True,
                            clean_up_tokenization_spaces=True)
    return encode_texts(tokenizer, [perturb_text(text, perturbations, rng)], max_length)[0][0]


def noisy_collate(split, indices: np.ndarray, pad_token_id: int, **noise):
    """``collate`` of the batch with each example's ids from ``noisy_ids``."""
    batch = EncodedSplit([noisy_ids(split, i, **noise) for i in indices],
                         np.asarray(split.labels[indices], dtype=np.int64))
    return collate(batch, np.arange(len(indices)), pad_token_id)


@functools.lru_cache(maxsize=4)
def _tokenizer(model: str):
    return load_tokenizer(model)


def batch_maker(cfg, data, epoch: int) -> Optional[Callable[[np.ndarray], tuple]]:
    """The ``make_batch`` of epoch ``epoch``'s training batches (``trainables.loops.train_epoch``):
    perturbing as ``cfg.perturb_train`` says; ``None`` (plain batches) when it is off."""
    spec = getattr(cfg, "perturb_train", None)
    if not spec or cfg.perturb_train_prob <= 0:
        return None
    return functools.partial(
        noisy_collate, data.splits["train"], pad_token_id=data.pad_token_id,
        tokenizer=_tokenizer(data.model), perturbations=parse_spec(spec, what="`perturb_train`"),
        prob=cfg.perturb_train_prob, seed=cfg.seed, epoch=epoch, max_length=data.max_length)
