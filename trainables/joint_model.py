"""The multi-task model: one encoder, a sentence head (intents) and a token head (slots, NER).

``MultitaskModel.forward(input_ids, attention_mask)`` returns ``(sentence_logits, token_logits)``
(either ``None`` when the data has no such task). Parameter names: ``encoder.*``, ``head.*`` (the
sentence head, trained at ``lr * head_lr_multiplier``) and ``slot_head.*`` (the token head, at
``lr * slot_lr_multiplier``); LLRD applies to the encoder as in fine-tuning (``trainables.optim``).

Freezing is one rule applied at the start of every epoch (``apply_freezing``): the encoder depths
``trainables.multitask.frozen_depths`` names, and the heads ``frozen_heads`` names, stop training.
The optimizer holds every parameter from the start, so a layer that gradual unfreezing turns on
later trains from then on (a parameter without a gradient is skipped by the optimizer).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from trainables.errors import ConfigError
from trainables.hparams import MultitaskConfig
from trainables.finetune import configured_encoder
from trainables.models import build_head, num_encoder_layers, pool, reinit_top
from trainables.multitask import frozen_depths, frozen_heads, joint_loss, normalise_embedding
from trainables.optim import build_optimizer, llrd_param_groups, parameter_depth
from trainables.schedules import make_schedule
from trainables.tagging import TAG_IGNORE

SLOT_HEAD = "slot_head"
HEAD_NAMES = {"intent_head": "head", "slot_head": SLOT_HEAD}  # `freeze` value -> attribute


class MultitaskModel(nn.Module):
    """Encoder → pooled, optionally normalised sentence embedding → sentence head; encoder token
    states → token head."""

    def __init__(self, encoder: nn.Module, *, num_labels: int, num_tags: int, pooling: str,
                 head: str, slot_head: str, head_hidden: int, dropout: float, sentence_norm: str):
        super().__init__()
        if not num_labels and not num_tags:
            raise ConfigError("a multi-task model needs sentence labels, token tags or both; the "
                              "data has neither")
        self.encoder = encoder
        self.pooling = pooling
        self.sentence_norm = sentence_norm
        dim = encoder.config.hidden_size
        self.head = (build_head(dim, num_labels, kind=head, hidden=head_hidden, dropout=dropout)
                     if num_labels else None)
        self.slot_head = (build_head(dim, num_tags, kind=slot_head, hidden=head_hidden,
                                     dropout=dropout) if num_tags else None)

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(batch, seq) → (batch, hidden) pooled sentence embeddings, normalised as configured."""
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return normalise_embedding(pool(hidden, attention_mask, self.pooling), self.sentence_norm)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor
                ) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """(batch, seq) → ((batch, labels) sentence logits, (batch, seq, tags) token logits)."""
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        sentence = None
        if self.head is not None:
            embedding = normalise_embedding(pool(hidden, attention_mask, self.pooling),
                                            self.sentence_norm)
            sentence = self.head(embedding)
        tokens = self.slot_head(hidden) if self.slot_head is not None else None
        return sentence, tokens


def build_multitask_model(cfg: MultitaskConfig, *, num_labels: int, num_tags: int) -> MultitaskModel:
    """The encoder (its bottom ``num_layers`` layers, or all) and the heads the data needs, with
    top-layer re-initialisation applied; the layer counts the freezing knobs name checked."""
    encoder = configured_encoder(cfg)
    if cfg.freeze == "intent_head" and not num_labels or cfg.freeze == "slot_head" and not num_tags:
        raise ConfigError(f"`freeze` is {cfg.freeze!r}, but the data has no "
                          f"{'sentence labels' if cfg.freeze == 'intent_head' else 'token tags'}, "
                          f"so there is no such head; use freeze 'none' or 'backbone'")
    model = MultitaskModel(encoder, num_labels=num_labels, num_tags=num_tags, pooling=cfg.pooling,
                           head=cfg.head, slot_head=cfg.slot_head, head_hidden=cfg.head_hidden,
                           dropout=cfg.classifier_dropout, sentence_norm=cfg.sentence_norm)
    reinit_top(model, cfg.reinit_layers, seed=cfg.seed)
    return model


def apply_freezing(model: MultitaskModel, cfg: MultitaskConfig, epoch: int) -> set[int]:
    """Set ``requires_grad`` for ``epoch``: the frozen encoder depths and heads stop training,
    everything else trains. Returns the frozen depths (0 = embeddings, 1.. = layers)."""
    n = num_encoder_layers(model.encoder)
    depths = frozen_depths(epoch, num_layers=n, freeze=cfg.freeze, freeze_layers=cfg.freeze_layers,
                           freeze_embeddings=cfg.freeze_embeddings,
                           unfreeze_every=cfg.unfreeze_every)
    for name, param in model.encoder.named_parameters():
        param.requires_grad_(parameter_depth(name, n) not in depths)
    heads = {HEAD_NAMES[h] for h in frozen_heads(cfg.freeze)}
    for attribute in ("head", SLOT_HEAD):
        module = getattr(model, attribute)
        if module is not None:
            for param in module.parameters():
                param.requires_grad_(attribute not in heads)
    return depths


def build_multitask_optimization(model: MultitaskModel, cfg: MultitaskConfig, *, total_steps: int):
    """Optimizer over every parameter in LLRD groups (the token head at its own multiplier) and a
    LambdaLR with the configured schedule."""
    groups = llrd_param_groups(
        model.named_parameters(), num_layers=num_encoder_layers(model.encoder), lr=cfg.lr,
        llrd_decay=cfg.llrd_decay, head_lr_multiplier=cfg.head_lr_multiplier,
        weight_decay=cfg.weight_decay, other_heads={SLOT_HEAD: cfg.slot_lr_multiplier},
        keep_frozen=True)
    optimizer = build_optimizer(groups, kind=cfg.optimizer, lr=cfg.lr, momentum=cfg.momentum,
                                nesterov=cfg.nesterov)
    schedule = make_schedule(cfg.scheduler, total_steps=total_steps, warmup_ratio=cfg.warmup_ratio,
                             min_ratio=cfg.min_lr / cfg.lr)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def task_losses(model: MultitaskModel, batch: tuple, *, label_smoothing: float = 0.0,
                reduction: str = "mean") -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """The sentence and token cross-entropies of one batch ``(ids, mask, labels, tag_ids)``; each
    ``None`` when the model has no such head or the batch no such targets. ``mean``: the sentence
    loss per labelled example, the token loss per tagged word (first pieces); ``sum``: totals."""
    ids, mask, labels, tags = batch
    sentence, tokens = model(ids, mask)
    intent = slot = None
    if sentence is not None and bool((labels != TAG_IGNORE).any()):
        intent = F.cross_entropy(sentence.float(), labels, ignore_index=TAG_IGNORE,
                                 label_smoothing=label_smoothing, reduction=reduction)
    if tokens is not None and bool((tags != TAG_IGNORE).any()):
        slot = F.cross_entropy(tokens.float().flatten(0, 1), tags.flatten(),
                               ignore_index=TAG_IGNORE, reduction=reduction)
    return intent, slot


def multitask_loss(cfg: MultitaskConfig):
    """``loss_fn(model, batch)`` for ``trainables.loops.train_epoch``: the weighted joint loss."""
    def loss_fn(model, batch):
        intent, slot = task_losses(model, batch, label_smoothing=cfg.label_smoothing)
        if intent is None and slot is None:  # cannot happen: every example has a label or tags
            raise ValueError("a training batch with neither sentence labels nor token tags")
        return joint_loss(intent, slot, intent_weight=cfg.intent_loss_weight,
                          slot_weight=cfg.slot_loss_weight)
    return loss_fn
