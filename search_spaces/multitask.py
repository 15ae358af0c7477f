"""The default multi-task (joint intent + slot) search space, read from the hyperparameter registry.

It samples what fine-tuning samples (learning rate, LLRD, warm-up, schedule, batch, dropout,
pooling, the sentence head) and the multi-task knobs, with the ranges of
``trainables.hparams.HPARAMS`` except where measurements on joint data say otherwise
(``JOINT_RANGES``).

Where ``JOINT_RANGES`` comes from: each knob alone on the hand joint baseline (issue 23's recipe),
SNIPS dev, 3 seeds, 4 epochs on a 4000-utterance subset
(``tuning/bench/results/joint-knobs/results.md``, sentence accuracy, base 79.05 ± 0.79 %):

- lr 2e-4 instead of 1e-4: +2.90. A joint model wants more learning than an intent-only one, so
  the range moves up: log 5e-5..5e-4 (fine-tuning: 1e-5..3e-4).
- LLRD 0.8: −7.81; the encoder's lower layers must learn the word-level features the token head
  reads, so the decay stays mild: 0.9..1.0 (fine-tuning: 0.7..1.0).
- the token head at lr ×1 instead of ×10: −7.57; both heads at ×30: +0.62. Both head multipliers
  are searched on log 3..100 (fine-tuning: 1..100).
- norm_gelu heads: −0.86, within two standard deviations of nothing, and slower: the token head
  is linear (fixed; a user can widen it with ``--space``).
- the bottom 2 layers frozen: −7.57; gradual unfreezing (1 layer per epoch): −36.95. Neither is
  searched (both stay available as settings).
- slot loss weight 2: +0.29, intent loss weight 0.5: +0.19, both within one standard deviation,
  and only their ratio matters to the direction of a step: the intent weight stays 1 and the slot
  weight is searched on log 1..4.
- L2-normalised sentence embeddings: −0.57, not searched.
"""

from __future__ import annotations

from dataclasses import replace

from search_spaces.finetune import searched_params
from search_spaces.space import Fixed, FloatRange, Param, SearchSpace

JOINT_RANGES = {
    "lr": FloatRange(5e-5, 5e-4, log=True),
    "llrd_decay": FloatRange(0.9, 1.0),
    "head_lr_multiplier": FloatRange(3.0, 100.0, log=True),
    "slot_lr_multiplier": FloatRange(3.0, 100.0, log=True),
    "slot_head": Fixed("linear"),
    "intent_loss_weight": Fixed(1.0),
    "slot_loss_weight": FloatRange(1.0, 4.0, log=True),
}

MULTITASK_PARAMS: tuple[Param, ...] = tuple(
    replace(p, dist=JOINT_RANGES[p.name]) if p.name in JOINT_RANGES else p
    for p in searched_params("multitask"))


def multitask_space(**constants) -> SearchSpace:
    """The default space; ``constants`` are the sweep-level settings (model, epochs, ...)."""
    return SearchSpace(MULTITASK_PARAMS, {"trainable": "multitask", **constants})
