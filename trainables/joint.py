"""The multi-task trainable: one encoder with a sentence head and/or a token head, trained on a
joint intent + slot dataset or on two datasets at once; evaluated, reported, checkpointed, resumed.

``fit`` is the loop, free of Ray, with the fine-tuning trainable's contract: ``report(metrics,
write)`` after every epoch, the best epoch's model handed back. Each epoch:
- freezing for the epoch (``trainables.joint_model.apply_freezing``: ``freeze``, the bottom
  layers, gradual unfreezing);
- batches of one dataset each, mixed as ``task_mixing`` says (``trainables.multitask``);
- the validation metrics (``evaluate_multitask``): ``val_loss`` (the weighted joint loss),
  ``val_intent_accuracy`` (= ``val_accuracy``) and ``val_macro_f1`` of the sentence head,
  ``val_slot_f1`` / ``_precision`` / ``_recall`` over exact spans (conlleval), and
  ``val_sentence_accuracy`` (label and every tag right) for examples that have both; with
  ``perturb_eval``, ``val_accuracy_perturbed`` (intent accuracy on perturbed texts).

The epoch handed over is the best by ``selection_metric(data)``: sentence accuracy for joint data,
the mean of intent accuracy and slot F1 (``val_task_mean``) for two datasets, slot F1 for
tagging alone.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import torch

from trainables import registry
from trainables.checkpointing import load_checkpoint, restore_rng_states, save_checkpoint
from trainables.deploy import PeakMemory
from trainables.encoding import bucketed_batches
from trainables.errors import ConfigError
from trainables.encoding import EncodedSplit, encode_texts
from trainables.finetune import (PERTURB_EVAL_SEED, BestEpoch, Reporter, deployment_costs,
                                 maybe_inject_failure, reapply_hyperparameters, top_lr)
from trainables.hparams import MultitaskConfig
from trainables.joint_model import (MultitaskModel, apply_freezing, build_multitask_model,
                                    build_multitask_optimization, multitask_loss, task_losses)
from trainables.loops import autocast_context, evaluate, macro_f1, train_epoch
from trainables.models import load_tokenizer
from trainables.perturb import parse_spec, perturb_texts
from trainables.multitask import mixed_batches, mixed_steps_per_epoch
from trainables.runtime import resolve_precision, seed_everything, supports_precision
from trainables.spans import sentence_accuracy, span_scores
from trainables.tagging import (TAG_IGNORE, EncodedJointSplit, JointData, collate_joint,
                                predicted_word_tags)

BATCH_KEYS = ("input_ids", "attention_mask", "labels", "tag_ids")
# every metric a multi-task trial reports for its best epoch as best_<name> (those its data has)
MULTITASK_BEST_METRICS = registry.BEST_EPOCH_METRICS + registry.MULTITASK_BEST_EPOCH_METRICS


def selection_metric(data: JointData) -> str:
    """The metric that picks a multi-task trial's best epoch (and a sweep's default ranking):
    sentence accuracy when examples carry a label and tags (joint data), the mean of intent
    accuracy and slot F1 when two datasets bring one task each, else the one task's metric."""
    train = data.splits["train"]
    both = bool(np.any((train.labels != TAG_IGNORE)
                       & np.array([t is not None for t in train.gold_tags], dtype=bool)))
    if both:
        return "val_sentence_accuracy"
    if data.has_intent and data.has_slots:
        return "val_task_mean"
    return "val_slot_f1" if data.has_slots else "val_intent_accuracy"


@dataclass
class MultitaskEval:
    """Validation (or test) scores of a multi-task model, and its predictions per example."""

    metrics: dict[str, float]
    intent_predictions: Optional[np.ndarray] = None       # class index per example (-100: none)
    intent_probabilities: Optional[np.ndarray] = None     # (examples, labels)
    word_tags: list[Optional[list[str]]] = field(default_factory=list)  # predicted, per example
    per_type: dict = field(default_factory=dict)  # slot type -> trainables.spans.TypeScores


def _batch(split: EncodedJointSplit, pad_token_id: int, indices: np.ndarray) -> tuple:
    tensors = collate_joint(split, indices, pad_token_id)
    return tuple(tensors[k] for k in BATCH_KEYS)


@torch.no_grad()
def predict_split(model: MultitaskModel, split: EncodedJointSplit, data: JointData, *,
                  batch_size: int, device: torch.device, precision: str = "fp32"
                  ) -> tuple[MultitaskEval, dict]:
    """Run ``model`` over ``split`` (dropout off): per-example intent probabilities, word tags
    predicted at each word's first piece, and the summed losses (``sums``) for ``val_loss``."""
    model.eval()
    n = len(split)
    probabilities = np.zeros((n, data.num_labels), dtype=np.float32) if data.has_intent else None
    word_tags: list[Optional[list[str]]] = [None] * n
    sums = {"intent": 0.0, "slot": 0.0}
    for indices in bucketed_batches(split.lengths(), batch_size, rng=np.random.default_rng(0),
                                    shuffle=False):
        batch = tuple(t.to(device) for t in _batch(split, data.pad_token_id, indices))
        with autocast_context(device, precision):
            sentence, tokens = model(batch[0], batch[1])
            intent, slot = task_losses(model, batch, reduction="sum")
        sums["intent"] += float(intent) if intent is not None else 0.0
        sums["slot"] += float(slot) if slot is not None else 0.0
        if sentence is not None:
            probabilities[indices] = torch.softmax(sentence.float(), -1).cpu().numpy()
        if tokens is not None:
            pieces = tokens.argmax(-1).cpu().numpy()
            for row, i in enumerate(indices):
                word_tags[i] = predicted_word_tags(split.word_starts[i], pieces[row], data.tag_map,
                                                   len(split.words[i]))
    predictions = probabilities.argmax(-1) if probabilities is not None else None
    return MultitaskEval({}, predictions, probabilities, word_tags), sums


def evaluate_multitask(model: MultitaskModel, split: EncodedJointSplit, data: JointData, *,
                       batch_size: int, device: torch.device, precision: str = "fp32",
                       weights: tuple[float, float] = (1.0, 1.0), prefix: str = "val"
                       ) -> MultitaskEval:
    """Every score of ``model`` on ``split`` (see the module docstring), keyed ``{prefix}_*``."""
    result, sums = predict_split(model, split, data, batch_size=batch_size, device=device,
                                 precision=precision)
    labelled = split.labels != TAG_IGNORE
    tagged = np.array([t is not None for t in split.gold_tags], dtype=bool)
    tagged_words = sum(len(t) for t in split.gold_tags if t is not None)
    loss = 0.0
    metrics: dict[str, float] = {}
    if data.has_intent and labelled.any():
        gold, pred = split.labels[labelled], result.intent_predictions[labelled]
        metrics["intent_accuracy"] = float(np.mean(gold == pred))
        metrics["macro_f1"] = macro_f1(gold, pred, data.num_labels)
        loss += weights[0] * sums["intent"] / int(labelled.sum())
    if data.has_slots and tagged.any():
        scores = span_scores([split.gold_tags[i] for i in np.flatnonzero(tagged)],
                             [result.word_tags[i] for i in np.flatnonzero(tagged)])
        metrics.update(slot_f1=scores.f1, slot_precision=scores.precision, slot_recall=scores.recall)
        loss += weights[1] * sums["slot"] / max(tagged_words, 1)
        result.per_type = scores.per_type
    both = labelled & tagged
    if both.any():
        idx = np.flatnonzero(both)
        metrics["sentence_accuracy"] = sentence_accuracy(
            split.labels[idx], result.intent_predictions[idx],
            [split.gold_tags[i] for i in idx], [result.word_tags[i] for i in idx])
    elif data.has_slots and not data.has_intent:
        idx = np.flatnonzero(tagged)
        metrics["sentence_accuracy"] = float(np.mean(
            [split.gold_tags[i] == result.word_tags[i] for i in idx]))
    if "intent_accuracy" in metrics and "slot_f1" in metrics:
        metrics["task_mean"] = (metrics["intent_accuracy"] + metrics["slot_f1"]) / 2
    metrics["accuracy"] = metrics.get("intent_accuracy", metrics.get("sentence_accuracy", 0.0))
    metrics["loss"] = loss
    result.metrics = {f"{prefix}_{k}": v for k, v in metrics.items()}
    return result


class SentenceHeadOnly(torch.nn.Module):
    """A multi-task model's sentence logits alone, for the single-task evaluation loop."""

    def __init__(self, model: MultitaskModel):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, attention_mask)[0]


def perturbed_intents(spec: str, data: JointData) -> Optional[EncodedSplit]:
    """The labelled validation utterances with their texts perturbed as ``spec`` says
    (``trainables.perturb``, the seed fine-tuning uses), tokenized as plain texts: what
    ``val_accuracy_perturbed`` (the intent accuracy on them) is measured on. ``None`` without a
    sentence task. Word tags are not scored under perturbation: deleting words moves them."""
    val = data.splits["validation"]
    labelled = np.flatnonzero(val.labels != TAG_IGNORE)
    if not data.has_intent or not len(labelled):
        return None
    texts = [" ".join(val.words[i]) for i in labelled]
    noisy = perturb_texts(texts, parse_spec(spec, what="`perturb_eval`"), seed=PERTURB_EVAL_SEED)
    ids, _ = encode_texts(load_tokenizer(data.model), noisy, data.max_length)
    return EncodedSplit(ids, val.labels[labelled])


@dataclass
class _Trial:
    """What the steps of one multi-task trial share."""

    cfg: MultitaskConfig
    data: JointData
    device: torch.device
    precision: str
    memory: PeakMemory
    model: MultitaskModel
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Optional[torch.amp.GradScaler]
    best: BestEpoch
    first_epoch: int = 1


def _source_counts(split: EncodedJointSplit) -> list[int]:
    return [int(np.sum(split.sources == s)) for s in np.unique(split.sources)]


def _build(cfg: MultitaskConfig, data: JointData, device: torch.device) -> _Trial:
    if not supports_precision(device, cfg.precision):
        raise ConfigError(f"`precision` {cfg.precision!r} is not supported on {device}; use fp32")
    seed_everything(cfg.seed)
    memory = PeakMemory(device)
    model = build_multitask_model(cfg, num_labels=data.num_labels, num_tags=data.num_tags).to(device)
    counts = _source_counts(data.splits["train"])
    total_steps = cfg.epochs * mixed_steps_per_epoch(counts, cfg.batch_size, cfg.task_mixing)
    optimizer, scheduler = build_multitask_optimization(model, cfg, total_steps=total_steps)
    precision = resolve_precision(device, cfg.precision)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" and device.type == "cuda" else None
    return _Trial(cfg, data, device, precision, memory, model, optimizer, scheduler, scaler,
                  BestEpoch(by=selection_metric(data), metrics=MULTITASK_BEST_METRICS))


def _resume(run: _Trial, resume_dir: str) -> None:
    fresh = [(g["initial_lr"], g["weight_decay"]) for g in run.optimizer.param_groups]
    state = load_checkpoint(resume_dir)
    run.model.load_state_dict(state["model"])
    if state["optimizer"] is not None:
        run.optimizer.load_state_dict(state["optimizer"])
        run.scheduler.load_state_dict(state["scheduler"])
        reapply_hyperparameters(run.optimizer, run.scheduler, fresh)
    if run.scaler is not None and state["scaler"] is not None:
        run.scaler.load_state_dict(state["scaler"])
    run.best.restore(state["extra"].get("best"), state.get("best_model") or state["model"])
    restore_rng_states(state["rng"])
    run.first_epoch = state["epoch"] + 1


def _train_one_epoch(run: _Trial, epoch: int, progress: Optional[Callable[[int], None]]):
    cfg, train = run.cfg, run.data.splits["train"]
    apply_freezing(run.model, cfg, epoch)
    rng = np.random.default_rng([cfg.seed, epoch])
    batches = mixed_batches(train.lengths(), train.sources, cfg.batch_size, mode=cfg.task_mixing,
                            rng=rng)
    return train_epoch(
        run.model, train, batch_size=cfg.batch_size, rng=rng, pad_token_id=run.data.pad_token_id,
        optimizer=run.optimizer, scheduler=run.scheduler, loss_fn=multitask_loss(cfg),
        device=run.device, precision=run.precision, grad_clip=cfg.grad_clip, scaler=run.scaler,
        progress=progress, batches=batches,
        make_batch=functools.partial(_batch, train, run.data.pad_token_id))


def _checkpoint_writer(run: _Trial, epoch: int) -> Callable[[str], None]:
    cfg, best = run.cfg, run.best
    maps = label_maps(run.data)

    def write(directory: str) -> None:
        extra = {"best": best.state()}
        last = epoch >= cfg.last_epoch
        save_checkpoint(directory, model=best.weights if last else run.model,
                        optimizer=None if last else run.optimizer,
                        scheduler=None if last else run.scheduler,
                        scaler=None if last else run.scaler, epoch=epoch, config=cfg.to_dict(),
                        label_map=maps, extra=extra, best_model=None if last else best.weights)
    return write


def label_maps(data: JointData) -> dict:
    """What a multi-task checkpoint records in its label map: the intents (``names`` /
    ``raw_values``, empty without a sentence task) and the tags (``tag_names``)."""
    intents = data.label_map.to_dict() if data.label_map is not None else {"names": [], "raw_values": []}
    return {**intents, "tag_names": list(data.tag_map.names) if data.tag_map is not None else []}


def fit(cfg: MultitaskConfig, data: JointData, *, device: torch.device, report: Reporter,
        resume_dir: Optional[str] = None,
        progress: Optional[Callable[[int], None]] = None) -> MultitaskModel:
    """Train for ``cfg.last_epoch`` epochs of a ``cfg.epochs``-epoch schedule, calling ``report``
    after each one, and return the model of the best validation epoch (see the module docstring).
    With ``resume_dir`` everything continues from that checkpoint's epoch."""
    if not isinstance(data, JointData):
        raise ConfigError("the multitask trainable needs joint data (token tags and/or sentence "
                          "labels read by trainables.tagging), not plain text-classification data")
    run = _build(cfg, data, device)
    if resume_dir is not None:
        _resume(run, resume_dir)
    costs = (deployment_costs(cfg, run.model, data, (cfg.slot_head, data.num_tags))
             if run.first_epoch <= cfg.last_epoch else {})
    eval_kwargs = dict(batch_size=max(64, cfg.batch_size), device=device, precision=run.precision,
                       weights=(cfg.intent_loss_weight, cfg.slot_loss_weight))
    noisy = perturbed_intents(cfg.perturb_eval, data) if cfg.perturb_eval else None
    for epoch in range(run.first_epoch, cfg.last_epoch + 1):
        maybe_inject_failure(epoch)
        stats = _train_one_epoch(run, epoch, progress)
        result = evaluate_multitask(run.model, data.splits["validation"], data, **eval_kwargs)
        metrics = {"epoch": epoch, "train_loss": stats.loss, **result.metrics,
                   "lr": top_lr(run.optimizer), "samples_per_s": stats.samples_per_s,
                   "epoch_seconds": stats.seconds, "peak_memory_mb": run.memory.mb(), **costs}
        if noisy is not None:
            metrics["val_accuracy_perturbed"] = evaluate(
                SentenceHeadOnly(run.model), noisy, batch_size=eval_kwargs["batch_size"],
                pad_token_id=data.pad_token_id, num_labels=data.num_labels, device=device,
                precision=run.precision).accuracy
        run.best.update(epoch, metrics, run.model.state_dict())
        metrics.update(run.best.as_metrics())
        report(metrics, _checkpoint_writer(run, epoch))
    maybe_inject_failure(cfg.last_epoch + 1)
    if run.best.weights is not None:
        run.model.load_state_dict(run.best.weights)
    return run.model
