"""The loss of a fine-tuning trial's training batch: cross-entropy, the two-dropout-pass loss
(R-Drop, joint SupCon), or knowledge distillation from a teacher's probabilities; and the batches
distillation trains on (``with_teacher``: the usual batch plus the teacher's probabilities of
its examples).

The teacher's probabilities themselves are computed (or read from their cache) by
``trainables.distill``, which sits above ``trainables.finetune``: loading a teacher folder needs
``trainables.export``, which needs the fine-tuning trainable. What reaches a trial from there is a
``TeacherTargets``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from trainables.encoding import collate
from trainables.losses import distillation_loss, two_view_classification_loss


@dataclass(frozen=True)
class TeacherTargets:
    """A teacher's probabilities for every example of the train split, in the split's order, with
    the student's label order in the columns: (examples, labels) float32; and the seconds it took
    to compute or load them."""

    probs: np.ndarray
    seconds: float

    def metrics(self) -> dict[str, float]:
        return {"distill_teacher_seconds": self.seconds}


def classification_loss(label_smoothing: float):
    def loss_fn(model, batch):
        ids, mask, labels = batch
        logits = model(ids, mask)
        return F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)
    return loss_fn


def distillation_batch_loss(cfg):
    """``trainables.losses.distillation_loss`` of a batch ``(ids, mask, labels, teacher_probs)``
    (``with_teacher``) at the config's ``distill_temperature``, ``distill_alpha`` and
    ``label_smoothing``."""
    def loss_fn(model, batch):
        ids, mask, labels, teacher_probs = batch
        return distillation_loss(model(ids, mask), teacher_probs, labels,
                                 temperature=cfg.distill_temperature, alpha=cfg.distill_alpha,
                                 label_smoothing=cfg.label_smoothing)
    return loss_fn


def finetune_loss(cfg):
    """Cross-entropy; with ``distill_teacher`` the distillation loss (``distillation_batch_loss``);
    or with R-Drop and/or joint SupCon the two-dropout-pass loss
    (``trainables.losses.two_view_classification_loss``): the batch goes through the model twice
    in one forward (concatenated), so each text gets two independent dropout masks. The config
    refuses a teacher together with the two-pass losses."""
    if getattr(cfg, "distill_teacher", None):
        return distillation_batch_loss(cfg)
    if not (cfg.rdrop_alpha or cfg.supcon_lambda):
        return classification_loss(cfg.label_smoothing)

    def loss_fn(model, batch):
        ids, mask, labels = batch
        pooled = model.embed(torch.cat([ids, ids]), torch.cat([mask, mask]))  # (2B, hidden)
        return two_view_classification_loss(
            model.head(pooled), pooled, labels, label_smoothing=cfg.label_smoothing,
            rdrop_alpha=cfg.rdrop_alpha, supcon_lambda=cfg.supcon_lambda,
            supcon_temperature=cfg.supcon_temperature)
    return loss_fn


def _append_teacher(make_batch: Callable[[np.ndarray], tuple], probs: torch.Tensor,
                    indices: np.ndarray) -> tuple:
    return (*make_batch(indices), probs[torch.as_tensor(np.asarray(indices, dtype=np.int64))])


def with_teacher(make_batch: Optional[Callable[[np.ndarray], tuple]], split, pad_token_id: int,
                 teacher: Optional[TeacherTargets]) -> Optional[Callable[[np.ndarray], tuple]]:
    """The ``make_batch`` of a distilling trial (``trainables.loops.train_epoch``): the batch
    ``make_batch`` builds (typo-robust training's, ``trainables.train_noise``), or the plain
    ``collate`` when it is None, plus the teacher's probabilities of its examples, (batch,
    labels). Indices are the split's own (a data-parallel worker's and a round's too), and so are
    the rows of ``teacher.probs``. Without a teacher, ``make_batch`` as it is."""
    if teacher is None:
        return make_batch
    if len(teacher.probs) != len(split):
        raise ValueError(f"the teacher's probabilities cover {len(teacher.probs)} examples, but the "
                         f"train split has {len(split)}")
    if make_batch is None:
        make_batch = functools.partial(collate, split, pad_token_id=pad_token_id)
    probs = torch.from_numpy(np.ascontiguousarray(teacher.probs, dtype=np.float32))
    return functools.partial(_append_teacher, make_batch, probs)
