"""The best multitask trial's checkpoint re-evaluated on the VALIDATION split (never test): its
intent confusion matrix, a slot confusion matrix over the most frequent slot types, and the
span F1 of every slot type.

The validation split is rebuilt from the sweep's saved data settings and encoded the way the
multitask trials encode it (``trainables.task_data``); the model is rebuilt from the checkpoint
as ``trainables.joint_model.build_multitask_model`` builds it, and scored by
``trainables.joint.evaluate_multitask``, the function the trials report with.

The slot matrix counts words, not spans: each word that carries a gold tag once, at the type of
its gold tag (row) and of the tag predicted at its first word piece (column), ``B-``/``I-`` merged
into the type and ``O`` its own row and column. A boundary error (right type, wrong ``B-``/``I-``)
thus sits on the diagonal; the per-type F1 table, over exact spans, is what counts those.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from trainables import task_data
from trainables.checkpointing import load_checkpoint, model_weights
from trainables.data import DataConfig
from trainables.errors import ConfigError
from trainables.hparams import MultitaskConfig
from trainables.joint import evaluate_multitask, label_maps
from trainables.joint_model import build_multitask_model
from trainables.models import load_tokenizer
from trainables.spans import OUTSIDE, TypeScores
from trainables.tagging import TAG_IGNORE, JointData
from tuning.report.checkpoint import EVAL_BATCH_SIZE, Confusion, confusion_counts

log = logging.getLogger(__name__)

SLOT_TYPES_SHOWN = 12  # rows/columns of the slot matrix besides "O" (SNIPS has 39 slot types)
OTHER_TYPES = "(other types)"  # the row/column that pools the less frequent types


@dataclass
class SlotConfusion:
    """The best trial's word-level slot confusion on the validation split, and its span scores."""

    trial_id: str
    counts: np.ndarray  # (n, n) words: rows gold slot type, columns predicted slot type
    names: list[str]    # the most frequent types, "O", then OTHER_TYPES when other types occur
    per_type: dict[str, TypeScores] = field(default_factory=dict)  # every type: exact-span scores
    f1: float = 0.0     # micro exact-span F1 (val_slot_f1)
    examples: int = 0   # validation examples that carry tags

    @property
    def total(self) -> int:
        """Tagged validation words counted (every one, whatever its type)."""
        return int(self.counts.sum())

    @property
    def types_shown(self) -> int:
        return sum(name not in (OUTSIDE, OTHER_TYPES) for name in self.names)


@dataclass
class MultitaskValidation:
    """What the report shows of a multitask checkpoint: either part is None when the data has no
    such task (tagging-only data has no intents; a text-only dataset no slots)."""

    intent: Optional[Confusion]
    slots: Optional[SlotConfusion]
    metrics: dict[str, float]  # evaluate_multitask's val_* scores


def slot_type(tag: str) -> str:
    """The slot type a BIO tag marks: "B-time" and "I-time" -> "time"; "O" stays "O"."""
    return tag if tag == OUTSIDE else tag.partition("-")[2] or tag


def frequent_types(per_type: dict[str, TypeScores], k: int = SLOT_TYPES_SHOWN) -> list[str]:
    """The ``k`` types with the most gold spans (ties by name); types never in gold are left out."""
    ranked = sorted((kind for kind, scores in per_type.items() if scores.support > 0),
                    key=lambda kind: (-per_type[kind].support, kind))
    return ranked[:k]


def slot_confusion_counts(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]],
                          shown: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Word counts (rows gold type, columns predicted type) over ``shown`` types, "O", and
    ``OTHER_TYPES`` pooling every other type (left out when no word falls there). Every word of
    ``gold`` is counted once, so the counts sum to the number of gold tags."""
    names = [*shown, OUTSIDE, OTHER_TYPES]
    index = {name: i for i, name in enumerate(names)}
    counts = np.zeros((len(names), len(names)), dtype=np.int64)
    for gold_tags, predicted_tags in zip(gold, predicted, strict=True):
        if len(gold_tags) != len(predicted_tags):
            raise ValueError(f"{len(gold_tags)} gold tags but {len(predicted_tags)} predicted "
                             f"ones for one sentence; predict one tag per word")
        for g, p in zip(gold_tags, predicted_tags):
            counts[index.get(slot_type(g), index[OTHER_TYPES]),
                   index.get(slot_type(p), index[OTHER_TYPES])] += 1
    if not counts[-1].any() and not counts[:, -1].any():
        return counts[:-1, :-1], names[:-1]
    return counts, names


def _intent_confusion(data: JointData, result, trial_id: str) -> Optional[Confusion]:
    val = data.splits["validation"]
    labelled = np.flatnonzero(val.labels != TAG_IGNORE)
    if not data.has_intent or not len(labelled):
        return None
    counts = confusion_counts(val.labels[labelled], result.intent_predictions[labelled], data.num_labels)
    return Confusion(trial_id, counts, list(data.label_map.names),
                     result.metrics["val_intent_accuracy"])


def _slot_confusion(data: JointData, result, trial_id: str) -> Optional[SlotConfusion]:
    val = data.splits["validation"]
    tagged = [i for i, tags in enumerate(val.gold_tags) if tags is not None]
    if not data.has_slots or not tagged:
        return None
    gold = [val.gold_tags[i] for i in tagged]
    counts, names = slot_confusion_counts(gold, [result.word_tags[i] for i in tagged],
                                          frequent_types(result.per_type))
    return SlotConfusion(trial_id, counts, names, dict(result.per_type),
                         result.metrics["val_slot_f1"], len(tagged))


def _checked_labels(data: JointData, state: dict, source: str) -> None:
    """Refuse a checkpoint whose intents or tags are not the data's (the data changed since)."""
    expected = json.loads(json.dumps(label_maps(data)))
    saved = json.loads(json.dumps(state["label_map"]))
    for key, what in (("names", "intents"), ("tag_names", "slot tags")):
        if saved.get(key) != expected.get(key):
            raise ConfigError(
                f"the {what} of {source!r} no longer match the checkpoint's ({len(expected.get(key) or [])} "
                f"in the data vs {len(saved.get(key) or [])} in the checkpoint, or renamed); the "
                f"data changed since the sweep")


def multitask_validation(checkpoint_dir: Path, data_config: DataConfig,
                         trial_id: str) -> MultitaskValidation:
    """Encode the validation split the way the multitask trial saw it and run the checkpoint's
    best-epoch weights over it."""
    import torch

    state = load_checkpoint(checkpoint_dir)
    cfg = MultitaskConfig.from_dict(state["config"])
    raw = task_data.load_raw(data_config, task_data.MULTITASK)
    data = task_data.encode(raw, load_tokenizer(cfg.model), trainable=task_data.MULTITASK,
                            model=cfg.model, max_length=cfg.max_length, include_test=False)
    _checked_labels(data, state, data_config.source)
    val = data.splits["validation"]
    log.info(f"re-evaluating multitask trial {trial_id} on the validation split ({len(val)} examples)")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build_multitask_model(cfg, num_labels=data.num_labels, num_tags=data.num_tags)
    model.load_state_dict(model_weights(state))  # the best epoch's weights
    # the trial's precision (``auto`` is bf16 on some CPUs) and eval batches (trainables.joint.fit):
    # fp32 would flip the near-ties of a barely trained tagger and disagree with what it logged
    result = evaluate_multitask(model.to(device), val, data, batch_size=max(EVAL_BATCH_SIZE, cfg.batch_size),
                                device=device, precision=cfg.precision,
                                weights=(cfg.intent_loss_weight, cfg.slot_loss_weight))
    return MultitaskValidation(_intent_confusion(data, result, trial_id),
                               _slot_confusion(data, result, trial_id), dict(result.metrics))
