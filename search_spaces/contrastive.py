"""Search spaces for the contrastive trainable, and the mixed space that searches the family too.

Ranges: temperature log 0.02..1.0 (SupCon and SimCLR both report strong dependence on it, with
good values 0.05..0.5); contrastive batch 32..256 (contrastive losses gain from more negatives);
1..5 contrastive epochs; lambda for the joint loss log 0.05..1 (Gunel et al. 2021 use 0.1..0.9).
The classification stage reuses the fine-tuning parameters.
"""

from __future__ import annotations

from search_spaces.finetune import FINETUNE_PARAMS
from search_spaces.space import Categorical, FloatRange, IntRange, Param, SearchSpace

TWO_STAGE = {"mode": ("two-stage", "two-stage-finetune")}

CONTRASTIVE_PARAMS: tuple[Param, ...] = (
    Param("mode", Categorical(("two-stage", "two-stage-finetune", "joint"))),
    Param("loss", Categorical(("supcon", "simclr")), when=TWO_STAGE),
    Param("temperature", FloatRange(0.02, 1.0, log=True)),
    Param("joint_lambda", FloatRange(0.05, 1.0, log=True), when={"mode": ("joint",)}),
    Param("projection_dim", Categorical((64, 128, 256))),
    Param("contrastive_epochs", IntRange(1, 5), when=TWO_STAGE),
    Param("contrastive_lr", FloatRange(1e-5, 3e-4, log=True), when=TWO_STAGE),
    Param("contrastive_batch_size", Categorical((32, 64, 128, 256)), when=TWO_STAGE),
    Param("augmentation", Categorical(("none", "word_deletion", "span_cutoff", "shuffle"))),
    Param("augmentation_strength", FloatRange(0.05, 0.3),
          when={"augmentation": ("word_deletion", "span_cutoff", "shuffle")}),
)


def contrastive_space(**constants) -> SearchSpace:
    return SearchSpace(FINETUNE_PARAMS + CONTRASTIVE_PARAMS, {"trainable": "contrastive", **constants})


def mixed_space(**constants) -> SearchSpace:
    """Fine-tuning vs contrastive as one more (first) parameter; contrastive parameters exist only
    when the family is contrastive. Both report ``val_accuracy``, so they rank in one table."""
    only_contrastive = {"trainable": ("contrastive",)}
    params = (Param("trainable", Categorical(("finetune", "contrastive"))),) + FINETUNE_PARAMS + tuple(
        Param(p.name, p.dist, {**only_contrastive, **p.when}) for p in CONTRASTIVE_PARAMS)
    return SearchSpace(params, {k: v for k, v in constants.items() if k != "trainable"})
