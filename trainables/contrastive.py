"""The contrastive trainable: SupCon or SimCLR/SimCSE pretraining of the encoder, then a classifier.

Three modes (see ``ContrastiveConfig``): ``two-stage`` (contrastive, then a classifier on the
frozen encoder — the study's protocol), ``two-stage-finetune`` (contrastive, then fine-tune
everything) and ``joint`` (cross-entropy + lambda * SupCon in one loop, Gunel et al. 2021).

Views are two forward passes with dropout active (SimCSE, Gao et al. 2021), optionally on
differently augmented token ids. During the contrastive stage the reported ``val_accuracy`` is the
k-NN accuracy of validation embeddings against training embeddings (also reported as
``val_knn_accuracy``), so ASHA can stop weak trials early; after it, ``val_accuracy`` is the
classifier's, the same metric the fine-tuning trainable reports. Epochs are numbered across both
stages, so ``epoch`` (and Ray's iteration) runs from 1 to ``total_epochs``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainables.augment import augment
from trainables.checkpointing import load_checkpoint, restore_rng_states, save_checkpoint
from trainables.data import EncodedSplit, TokenizedData, collate, steps_per_epoch
from trainables.errors import ConfigError
from trainables.deploy import PeakMemory
from trainables.finetune import (BestEpoch, Reporter, build_classifier, classification_loss,
                                 deployment_costs, maybe_inject_failure, perturbed_validation, top_lr)
from trainables.hparams import ContrastiveConfig
from trainables.loops import EvalResult, evaluate, macro_f1, train_epoch
from trainables.losses import ntxent_loss, supcon_loss
from trainables.models import TextClassifier, num_encoder_layers
from trainables.optim import build_optimizer, llrd_param_groups
from trainables.runtime import seed_everything, supports_precision
from trainables.schedules import make_schedule

KNN_MAX_TRAIN = 4096  # training embeddings the k-NN signal compares against (kept cheap)


class ContrastiveModel(nn.Module):
    """A ``TextClassifier`` plus a projection head (hidden → hidden → projection_dim, as SimCLR)."""

    def __init__(self, classifier: TextClassifier, projection_dim: int):
        super().__init__()
        self.classifier = classifier
        hidden = classifier.encoder.config.hidden_size
        self.projection = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(),
                                        nn.Linear(hidden, projection_dim))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(batch, seq) → (batch, num_labels) class logits."""
        return self.classifier(input_ids, attention_mask)

    def project(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(batch, seq) → (batch, projection_dim) embeddings for the contrastive loss."""
        return self.projection(self.classifier.embed(input_ids, attention_mask))


# --------------------------------------------------------------------------- batches and losses


def views_batch(split: EncodedSplit, indices: np.ndarray, *, pad_token_id: int, augmentation: str,
                strength: float, rng: np.random.Generator):
    """Two views per text, rows ordered text-major (row 2b is view 0 of text b, 2b+1 view 1).

    Returns (input_ids (2B, seq), attention_mask (2B, seq), labels (B,)).
    """
    seqs = []
    for i in indices:
        ids = split.input_ids[i]
        for _ in range(2):
            seqs.append(ids if augmentation == "none" else augment(ids, augmentation, strength, rng))
    paired = EncodedSplit(seqs, np.repeat(split.labels[indices], 2))
    ids, mask, _ = collate(paired, np.arange(len(seqs)), pad_token_id)
    return ids, mask, torch.from_numpy(split.labels[indices])


def contrastive_loss(cfg: ContrastiveConfig) -> Callable:
    def loss_fn(model: ContrastiveModel, batch) -> torch.Tensor:
        ids, mask, labels = batch
        z = model.project(ids, mask)
        features = z.view(-1, 2, z.shape[-1])  # (batch, views, dim)
        if cfg.loss == "supcon":
            return supcon_loss(features, labels, cfg.temperature)
        return ntxent_loss(features, cfg.temperature)
    return loss_fn


def joint_loss(cfg: ContrastiveConfig) -> Callable:
    """Cross-entropy on both views + lambda * SupCon on their projections (Gunel et al. 2021)."""
    def loss_fn(model: ContrastiveModel, batch) -> torch.Tensor:
        ids, mask, labels = batch
        pooled = model.classifier.embed(ids, mask)  # (2B, hidden)
        logits = model.classifier.head(pooled)
        ce = F.cross_entropy(logits.float(), labels.repeat_interleave(2),
                             label_smoothing=cfg.label_smoothing)
        z = model.projection(pooled)
        return ce + cfg.joint_lambda * supcon_loss(z.view(-1, 2, z.shape[-1]), labels, cfg.temperature)
    return loss_fn


# --------------------------------------------------------------------------- embeddings and k-NN


@torch.no_grad()
def embed_split(classifier: TextClassifier, split: EncodedSplit, indices: np.ndarray, *,
                pad_token_id: int, device: torch.device, batch_size: int = 128) -> torch.Tensor:
    """Pooled encoder embeddings (dropout off) of ``split[indices]``, in that order: (n, hidden)."""
    classifier.eval()
    out = []
    for start in range(0, len(indices), batch_size):
        ids, mask, _ = collate(split, indices[start:start + batch_size], pad_token_id)
        out.append(classifier.embed(ids.to(device), mask.to(device)).float().cpu())
    return torch.cat(out)


def knn_accuracy(train_emb: torch.Tensor, train_labels: np.ndarray, val_emb: torch.Tensor,
                 val_labels: np.ndarray, k: int) -> float:
    """Accuracy of a cosine k-NN vote (each neighbour weighted by its similarity)."""
    train_n = F.normalize(train_emb, dim=-1)
    val_n = F.normalize(val_emb, dim=-1)
    sims, idx = (val_n @ train_n.T).topk(min(k, len(train_n)), dim=1)
    labels = torch.from_numpy(train_labels)[idx]  # (n_val, k)
    num_classes = int(max(train_labels.max(), val_labels.max())) + 1
    votes = torch.zeros(len(val_n), num_classes).scatter_add_(1, labels, sims.clamp(min=0) + 1e-6)
    return float((votes.argmax(1).numpy() == val_labels).mean())


def knn_signal(model: ContrastiveModel, data: TokenizedData, *, k: int, seed: int,
               device: torch.device) -> float:
    train, val = data.splits["train"], data.splits["validation"]
    rng = np.random.default_rng(seed)
    subset = np.sort(rng.permutation(len(train))[:KNN_MAX_TRAIN])
    train_emb = embed_split(model.classifier, train, subset, pad_token_id=data.pad_token_id, device=device)
    val_emb = embed_split(model.classifier, val, np.arange(len(val)), pad_token_id=data.pad_token_id,
                          device=device)
    return knn_accuracy(train_emb, train.labels[subset], val_emb, val.labels, k)


# --------------------------------------------------------------------------- optimizers per stage


def _named_parameters(model: ContrastiveModel, *, encoder: bool, projection: bool, head: bool):
    """Names the LLRD grouping understands: ``encoder.*`` by layer, everything else as head."""
    for name, param in model.classifier.named_parameters():
        if name.startswith("encoder.") and encoder:
            yield name, param
        elif name.startswith("head.") and head:
            yield name, param
    if projection:
        for name, param in model.projection.named_parameters():
            yield f"head.projection.{name}", param


def stage_optimization(model: ContrastiveModel, cfg: ContrastiveConfig, *, stage: str, total_steps: int):
    """Optimizer and LambdaLR for one stage: ``contrastive``, ``frozen`` (head only), ``finetune``
    or ``joint``; LLRD, warm-up and schedule shared, learning rate and optimizer per stage."""
    contrastive = stage == "contrastive"
    lr = cfg.contrastive_lr if contrastive else cfg.lr
    kind = cfg.contrastive_optimizer if contrastive else cfg.optimizer
    named = _named_parameters(model, encoder=stage != "frozen", projection=stage in ("contrastive", "joint"),
                              head=not contrastive)
    groups = llrd_param_groups(named, num_layers=num_encoder_layers(model.classifier.encoder), lr=lr,
                               llrd_decay=cfg.llrd_decay, head_lr_multiplier=cfg.head_lr_multiplier,
                               weight_decay=cfg.weight_decay)
    optimizer = build_optimizer(groups, kind=kind, lr=lr, momentum=cfg.momentum,
                                nesterov=cfg.nesterov and kind == "sgd")
    min_ratio = min(1.0, cfg.min_lr / lr)
    schedule = make_schedule(cfg.scheduler, total_steps=total_steps, warmup_ratio=cfg.warmup_ratio,
                             min_ratio=min_ratio)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


# --------------------------------------------------------------------------- the loop


def _feature_result(head: nn.Module, features: torch.Tensor, labels: np.ndarray, num_labels: int,
                    device: torch.device) -> EvalResult:
    head.eval()
    with torch.no_grad():
        logits = head(features.to(device)).float()
        target = torch.from_numpy(labels).to(device)
        loss = float(F.cross_entropy(logits, target))
    predictions = logits.argmax(-1).cpu().numpy()
    return EvalResult(loss=loss, accuracy=float(np.mean(predictions == labels)),
                      macro_f1=macro_f1(labels, predictions, num_labels), predictions=predictions,
                      labels=labels)


@dataclass
class _Trial:
    """What the steps of one contrastive trial share: its settings, model, resume state and the
    best classifier epoch so far. ``done``: the last epoch trained (a resumed trial's checkpoint
    epoch, then the end of each stage as it completes)."""

    cfg: ContrastiveConfig
    data: TokenizedData
    device: torch.device
    report: Reporter
    progress: Optional[Callable[[int], None]]
    model: ContrastiveModel
    memory: PeakMemory
    state: Optional[dict]
    done: int
    first_stage_epochs: int
    last: int
    best: BestEpoch
    costs: dict

    def write_for(self, optimizer, scheduler, epoch: int) -> Callable[[str], None]:
        """The checkpoint writer of ``epoch``: resumable state until the last epoch, then the
        best classifier's weights alone."""
        resumable = epoch < self.last  # nothing resumes after the last epoch
        cfg, best, model = self.cfg, self.best, self.model
        stage = "contrastive" if epoch <= self.first_stage_epochs else "classifier"

        def write(directory: str) -> None:
            final = not resumable and best.weights is not None
            save_checkpoint(directory, model=best.weights if final else model,
                            optimizer=optimizer if resumable else None,
                            scheduler=scheduler if resumable else None,
                            scaler=None, epoch=epoch, config=cfg.to_dict(),
                            label_map=self.data.label_map.to_dict(),
                            extra={"stage": stage, "best": best.state()},
                            best_model=best.weights if resumable else None)
        return write

    def resume_optimizer(self, optimizer, scheduler, stage_start: int) -> None:
        # the checkpoint's optimizer belongs to the stage it was written in
        if self.state and self.state["optimizer"] is not None and self.done > stage_start:
            optimizer.load_state_dict(self.state["optimizer"])
            scheduler.load_state_dict(self.state["scheduler"])

    def views(self, rng) -> Callable:
        cfg = self.cfg
        return functools.partial(views_batch, self.data.splits["train"], pad_token_id=self.data.pad_token_id,
                                 augmentation=cfg.augmentation, strength=cfg.augmentation_strength, rng=rng)

    def epoch_metrics(self, epoch: int, stats, optimizer) -> dict:
        """What every epoch's report carries besides its scores."""
        return {"epoch": epoch, "lr": top_lr(optimizer), "samples_per_s": stats.samples_per_s,
                "epoch_seconds": stats.seconds, "peak_memory_mb": self.memory.mb(), **self.costs}


def _start(cfg: ContrastiveConfig, data: TokenizedData, *, device: torch.device, report: Reporter,
           resume_dir: Optional[str], progress: Optional[Callable[[int], None]]) -> _Trial:
    """Build the model, restore a checkpoint's weights, best epoch and random state, and measure
    what the classifier handed over costs to serve."""
    if not supports_precision(device, cfg.precision):
        raise ConfigError(f"`precision` {cfg.precision!r} is not supported on {device}; use fp32")
    seed_everything(cfg.seed)
    memory = PeakMemory(device)
    model = ContrastiveModel(build_classifier(cfg, data.num_labels), cfg.projection_dim).to(device)
    first_stage_epochs = 0 if cfg.mode == "joint" else cfg.contrastive_epochs
    state = load_checkpoint(resume_dir) if resume_dir is not None else None
    done = state["epoch"] if state else 0
    last = first_stage_epochs + cfg.last_epoch
    best = BestEpoch()  # over the classifier stage: stage 1 has no classifier to hand over
    if state:
        model.load_state_dict(state["model"])
        best.restore(state["extra"].get("best"), state.get("best_model") or state["model"])
        restore_rng_states(state["rng"])
    # the architecture of the classifier handed over is fixed from the start (stage 1 included)
    costs = deployment_costs(cfg, model.classifier, data) if done < last else {}
    return _Trial(cfg, data, device, report, progress, model, memory, state, done,
                  first_stage_epochs, last, best, costs)


def _contrastive_stage(run: _Trial) -> None:
    """Stage 1 of the two-stage modes: encoder + projection head on the contrastive loss, scored
    by the k-NN accuracy of validation embeddings (the proxy ASHA ranks by until a classifier
    exists)."""
    cfg, data, train = run.cfg, run.data, run.data.splits["train"]
    total = run.first_stage_epochs * steps_per_epoch(len(train), cfg.contrastive_batch_size)
    optimizer, scheduler = stage_optimization(run.model, cfg, stage="contrastive", total_steps=total)
    run.resume_optimizer(optimizer, scheduler, 0)
    for epoch in range(run.done + 1, run.first_stage_epochs + 1):
        maybe_inject_failure(epoch)
        rng = np.random.default_rng([cfg.seed, epoch])
        stats = train_epoch(run.model, train, batch_size=cfg.contrastive_batch_size, rng=rng,
                            pad_token_id=data.pad_token_id, optimizer=optimizer, scheduler=scheduler,
                            loss_fn=contrastive_loss(cfg), device=run.device, precision=cfg.precision,
                            grad_clip=cfg.grad_clip, progress=run.progress, make_batch=run.views(rng))
        knn = knn_signal(run.model, data, k=cfg.knn_k, seed=cfg.seed, device=run.device)
        metrics = run.epoch_metrics(epoch, stats, optimizer)
        run.report({"epoch": epoch, "stage": 1, "contrastive_loss": stats.loss, "val_knn_accuracy": knn,
                    "val_accuracy": knn,
                    "best_val_accuracy": knn,  # the proxy stands in until a classifier exists
                    **metrics}, run.write_for(optimizer, scheduler, epoch))
    run.done = run.first_stage_epochs


def _frozen_features(run: _Trial, noisy_val: Optional[EncodedSplit]) -> dict[str, Optional[torch.Tensor]]:
    """Freeze the encoder and embed train, validation and perturbed validation once: the frozen
    stage trains the head on these cached features."""
    classifier, data = run.model.classifier, run.data
    for p in classifier.encoder.parameters():
        p.requires_grad_(False)
    splits = {"train": data.splits["train"], "validation": data.splits["validation"], "noisy": noisy_val}
    return {name: None if split is None else embed_split(classifier, split, np.arange(len(split)),
                                                         pad_token_id=data.pad_token_id, device=run.device)
            for name, split in splits.items()}


def _classifier_epoch(run: _Trial, stage: str, epoch: int, optimizer, scheduler,
                      features: Optional[dict], noisy_val: Optional[EncodedSplit]):
    """Train one classifier-stage (or joint) epoch and score it: (stats, validation result,
    perturbed validation result or None)."""
    cfg, data, model = run.cfg, run.data, run.model
    train, val = data.splits["train"], data.splits["validation"]
    rng = np.random.default_rng([cfg.seed, epoch])
    common = dict(batch_size=cfg.batch_size, rng=rng, pad_token_id=data.pad_token_id,
                  optimizer=optimizer, scheduler=scheduler, device=run.device, precision=cfg.precision,
                  grad_clip=cfg.grad_clip, progress=run.progress)
    if stage == "frozen":
        head_loss = lambda m, batch: F.cross_entropy(  # noqa: E731
            m.classifier.head(batch[0]).float(), batch[1], label_smoothing=cfg.label_smoothing)
        stats = train_epoch(model, train, loss_fn=head_loss, **common,
                            make_batch=lambda idx: (features["train"][idx], torch.from_numpy(train.labels[idx])))
        result = _feature_result(model.classifier.head, features["validation"], val.labels,
                                 data.num_labels, run.device)
        noisy = None if noisy_val is None else _feature_result(
            model.classifier.head, features["noisy"], noisy_val.labels, data.num_labels, run.device)
        return stats, result, noisy
    loss_fn = joint_loss(cfg) if stage == "joint" else classification_loss(cfg.label_smoothing)
    target = model if stage == "joint" else model.classifier
    stats = train_epoch(target, train, loss_fn=loss_fn, **common,
                        make_batch=run.views(rng) if stage == "joint" else None)
    eval_kwargs = dict(batch_size=max(64, cfg.batch_size), pad_token_id=data.pad_token_id,
                       num_labels=data.num_labels, device=run.device, precision=cfg.precision)
    result = evaluate(model.classifier, val, **eval_kwargs)
    noisy = None if noisy_val is None else evaluate(model.classifier, noisy_val, **eval_kwargs)
    return stats, result, noisy


def _classifier_stage(run: _Trial) -> None:
    """Stage 2: the classifier on the frozen encoder, the whole model fine-tuned, or the joint
    loop; every epoch scored on validation (and perturbed validation) and the best one kept."""
    cfg, data = run.cfg, run.data
    stage = {"two-stage": "frozen", "two-stage-finetune": "finetune", "joint": "joint"}[cfg.mode]
    total = cfg.epochs * steps_per_epoch(len(data.splits["train"]), cfg.batch_size)
    optimizer, scheduler = stage_optimization(run.model, cfg, stage=stage, total_steps=total)
    run.resume_optimizer(optimizer, scheduler, run.first_stage_epochs)
    # the classifier stage is scored on perturbed validation texts too, as a fine-tuning trial is
    noisy_val = perturbed_validation(cfg.perturb_eval, data) if cfg.perturb_eval else None
    features = _frozen_features(run, noisy_val) if stage == "frozen" else None
    for epoch in range(run.done + 1, run.last + 1):
        maybe_inject_failure(epoch)
        stats, result, noisy = _classifier_epoch(run, stage, epoch, optimizer, scheduler, features, noisy_val)
        metrics = {"epoch": epoch, "stage": 2, "train_loss": stats.loss, **result.as_metrics("val"),
                   **run.epoch_metrics(epoch, stats, optimizer)}
        if noisy is not None:
            metrics["val_accuracy_perturbed"] = noisy.accuracy
        run.best.update(epoch, metrics, run.model.state_dict())
        run.report({**metrics, **run.best.as_metrics()}, run.write_for(optimizer, scheduler, epoch))


def fit(cfg: ContrastiveConfig, data: TokenizedData, *, device: torch.device, report: Reporter,
        resume_dir: Optional[str] = None, progress: Optional[Callable[[int], None]] = None) -> ContrastiveModel:
    """Train as ``cfg.mode`` says, calling ``report`` after every epoch of every stage. Every
    report carries the epoch's training time (``epoch_seconds``), the peak training memory so far
    (``peak_memory_mb``) and what the classifier the trial hands over costs to serve
    (``trainables.finetune.deployment_costs``: size and CPU timings, measured once)."""
    run = _start(cfg, data, device=device, report=report, resume_dir=resume_dir, progress=progress)
    if run.first_stage_epochs and run.done < run.first_stage_epochs:
        _contrastive_stage(run)
    _classifier_stage(run)
    maybe_inject_failure(run.last + 1)
    if run.best.weights is not None:
        run.model.load_state_dict(run.best.weights)
    return run.model
