"""The pure math of multi-task training: how batches of two datasets are mixed, which encoder
depths are frozen in an epoch (gradual unfreezing), the weighted joint loss, and normalised
sentence embeddings.

Depths follow ``trainables.optim.parameter_depth``: 0 = embeddings, 1..num_layers = layers.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch

from trainables.encoding import bucketed_batches
from trainables.hparams import choices_of

# declared in the registry (trainables/hparam_table.py), read here
MIXINGS = choices_of("task_mixing")
FREEZES = choices_of("freeze")
HEAD_FREEZES = tuple(f for f in FREEZES if f.endswith("_head"))
SENTENCE_NORMS = choices_of("sentence_norm")
NORM_EPS = 1e-12  # as torch.nn.functional.normalize


def _check_mode(mode: str) -> None:
    if mode not in MIXINGS:
        raise ValueError(f"task mixing {mode!r} is unknown; use one of {', '.join(MIXINGS)}")


def _source_batches(lengths: np.ndarray, sources: np.ndarray, source: int, batch_size: int,
                    rng: np.random.Generator) -> list[np.ndarray]:
    """One source's bucketed batches, as indices into the whole split."""
    idx = np.flatnonzero(sources == source)
    return [idx[batch] for batch in bucketed_batches(lengths[idx], batch_size, rng=rng)]


def _alternate(per_source: list[list[np.ndarray]], rounds: int) -> list[np.ndarray]:
    """Batch ``r`` of every source in turn, for ``r`` in ``range(rounds)``: 0, 1, 0, 1, ..."""
    return [batches[r] for r in range(rounds) for batches in per_source]


def _round_robin(lengths: np.ndarray, sources: np.ndarray, labels: np.ndarray, batch_size: int,
                 rng: np.random.Generator) -> list[np.ndarray]:
    """Every source in turn; a smaller source starts over with freshly drawn batches until the
    largest has given each of its batches once (so every task gets the same number of steps)."""
    per_source = [_source_batches(lengths, sources, s, batch_size, rng) for s in labels]
    rounds = max(len(batches) for batches in per_source)
    for s, batches in zip(labels, per_source):
        while len(batches) < rounds:
            batches.extend(_source_batches(lengths, sources, s, batch_size, rng))
    return _alternate(per_source, rounds)


def _capped(lengths: np.ndarray, sources: np.ndarray, labels: np.ndarray, batch_size: int,
            rng: np.random.Generator) -> list[np.ndarray]:
    """Every source gives as many batches as the smallest has, the larger ones drawn at random."""
    per_source = [_source_batches(lengths, sources, s, batch_size, rng) for s in labels]
    rounds = min(len(batches) for batches in per_source)
    drawn = [[batches[i] for i in rng.permutation(len(batches))[:rounds]] for batches in per_source]
    return _alternate(drawn, rounds)


def mixed_batches(lengths: np.ndarray, sources: np.ndarray, batch_size: int, *, mode: str,
                  rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch's batches of example indices, each batch from ONE source (dataset).

    Each source is batched by ``bucketed_batches`` (similar lengths together). ``mode``:
    ``proportional`` gives every batch of every source once in random order (steps in
    proportion to each dataset's size); ``round_robin`` alternates the sources, repeating the
    smaller ones with fresh batches until the largest is used up; ``capped`` alternates the
    sources for as many batches as the smallest has, drawing the larger's at random (the
    report's "capped at the smaller dataset"). With one source, the bucketed batches as they are.
    """
    _check_mode(mode)
    lengths, sources = np.asarray(lengths), np.asarray(sources)
    if len(lengths) != len(sources):
        raise ValueError(f"lengths has {len(lengths)} entries but sources has {len(sources)}; "
                         f"give one source per example")
    labels = np.unique(sources)
    if len(labels) <= 1:
        return _source_batches(lengths, sources, labels[0], batch_size, rng) if len(labels) else []
    if mode == "round_robin":
        return _round_robin(lengths, sources, labels, batch_size, rng)
    if mode == "capped":
        return _capped(lengths, sources, labels, batch_size, rng)
    batches = [b for s in labels for b in _source_batches(lengths, sources, s, batch_size, rng)]
    return [batches[i] for i in rng.permutation(len(batches))]


def mixed_steps_per_epoch(counts: Sequence[int], batch_size: int, mode: str) -> int:
    """How many batches ``mixed_batches`` gives for sources of ``counts`` examples each."""
    _check_mode(mode)
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be at least 1, but got {batch_size}")
    per_source = [math.ceil(n / batch_size) for n in counts if n > 0]
    if len(per_source) <= 1 or mode == "proportional":
        return sum(per_source)
    if mode == "round_robin":
        return len(per_source) * max(per_source)
    return len(per_source) * min(per_source)


def unfrozen_top_layers(epoch: int, num_layers: int, every: int) -> int:
    """How many top encoder layers train in ``epoch`` (1-based) under gradual top-down
    unfreezing (Howard & Ruder 2018, ULMFiT): epochs 1..every train the top layer, every+1..2*every
    the top two, ...; ``num_layers + 1`` means every layer and the embeddings. ``every`` 0: no
    gradual unfreezing (``num_layers + 1`` from the start)."""
    if epoch < 1:
        raise ValueError(f"`epoch` counts from 1, but got {epoch}")
    if num_layers < 0:
        raise ValueError(f"`num_layers` must be at least 0, but got {num_layers}")
    if every < 0:
        raise ValueError(f"`unfreeze_every` must be 0 (off) or a number of epochs, but got {every}")
    if every == 0:
        return num_layers + 1
    return min(math.ceil(epoch / every), num_layers + 1)


def frozen_heads(freeze: str) -> set[str]:
    """The task heads that ``freeze`` keeps still: {"intent_head"}, {"slot_head"} or none."""
    if freeze not in FREEZES:
        raise ValueError(f"`freeze` {freeze!r} is unknown; use one of {', '.join(FREEZES)}")
    return {freeze} if freeze in HEAD_FREEZES else set()


def frozen_depths(epoch: int, *, num_layers: int, freeze: str, freeze_layers: int,
                  freeze_embeddings: bool, unfreeze_every: int) -> set[int]:
    """The encoder depths that do not train in ``epoch`` (1-based): the union of ``freeze``
    "backbone" (all of them), ``freeze_embeddings`` ({0}), ``freeze_layers`` k ({1..k}) and
    gradual unfreezing (every layer below the top ``unfrozen_top_layers``, and 0 until the
    embeddings' turn). The head values of ``freeze`` freeze no depth (see ``frozen_heads``)."""
    frozen_heads(freeze)  # validates `freeze`
    if not 0 <= freeze_layers <= num_layers:
        raise ValueError(f"`freeze_layers` must lie in [0, {num_layers}] (the encoder's layers), "
                         f"but got {freeze_layers}")
    top = unfrozen_top_layers(epoch, num_layers, unfreeze_every)
    if freeze == "backbone":
        return set(range(num_layers + 1))
    depths = set(range(1, freeze_layers + 1))
    if freeze_embeddings:
        depths.add(0)
    if top <= num_layers:
        depths.update(range(0, num_layers - top + 1))
    return depths


def joint_loss(intent_loss: Optional[torch.Tensor], slot_loss: Optional[torch.Tensor], *,
               intent_weight: float, slot_weight: float) -> torch.Tensor:
    """``intent_weight * intent_loss + slot_weight * slot_loss``; a loss that is None (a batch
    of the other task only) adds nothing."""
    if intent_loss is None and slot_loss is None:
        raise ValueError("joint_loss needs at least one of intent_loss and slot_loss, but both are "
                         "None; a batch must carry sentence labels or token tags")
    for name, weight in (("intent_weight", intent_weight), ("slot_weight", slot_weight)):
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"`{name}` must be a finite number >= 0, but got {weight}")
    terms = [weight * loss for weight, loss in ((intent_weight, intent_loss),
                                                (slot_weight, slot_loss)) if loss is not None]
    return terms[0] if len(terms) == 1 else terms[0] + terms[1]


def normalise_embedding(x: torch.Tensor, kind: str) -> torch.Tensor:
    """Sentence embeddings ``(batch, dim)`` as they are ("none"), or divided by their L1 / L2
    norm along the last dim ("l1" / "l2"; the norm is floored at 1e-12)."""
    if kind not in SENTENCE_NORMS:
        raise ValueError(f"sentence normalisation {kind!r} is unknown; use one of "
                         f"{', '.join(SENTENCE_NORMS)}")
    if kind == "none":
        return x
    return torch.nn.functional.normalize(x, p=1.0 if kind == "l1" else 2.0, dim=-1, eps=NORM_EPS)
