"""Training and evaluation loops shared by every trainable.

They know nothing about Ray or MLflow: they take a model, batches and a loss, and return numbers.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from trainables.data import EncodedSplit, collate
from trainables.encoding import epoch_batches
from trainables.errors import NonFiniteLossError
from trainables.runtime import resolve_precision


def autocast_context(device: torch.device, precision: str):
    """bf16/fp16 autocast where the device supports it; fp32 otherwise (a no-op context).
    ``auto`` resolves per device (``trainables.runtime.resolve_precision``)."""
    precision = resolve_precision(device, precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    if device.type == "cpu" and precision == "fp16":
        return contextlib.nullcontext()  # CPU autocast has no useful fp16 path
    return torch.autocast(device_type=device.type, dtype=dtype)


@dataclass
class EpochStats:
    loss: float
    samples: int
    seconds: float

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else float("nan")


def train_epoch(
    model: torch.nn.Module,
    split: EncodedSplit,
    *,
    batch_size: int,
    rng: np.random.Generator,
    pad_token_id: int,
    optimizer: torch.optim.Optimizer,
    scheduler,
    loss_fn: Callable[[torch.nn.Module, tuple], torch.Tensor],
    device: torch.device,
    precision: str = "fp32",
    grad_clip: float = 0.0,
    scaler: Optional[torch.amp.GradScaler] = None,
    progress: Optional[Callable[[int], None]] = None,
    make_batch: Optional[Callable[[np.ndarray], tuple]] = None,
    after_step: Optional[Callable[[], None]] = None,
    batches: Optional[list[np.ndarray]] = None,
    loss_weights: Optional[list[float]] = None,
) -> EpochStats:
    """One pass over ``split`` in length-bucketed random batches (or the given ``batches`` of
    indices, e.g. a multi-task trial's mixed batches).

    ``loss_fn(model, (input_ids, attention_mask, labels))`` returns the scalar loss of a batch.
    Raises ``NonFiniteLossError`` on the first NaN/inf loss: continuing would only spread it.
    ``progress(n)`` is called after each batch with the number of samples it held.
    ``make_batch(indices)`` builds a batch's tensors (default: padded ids, mask and labels).
    ``after_step()`` runs after every optimizer step (weight averaging).
    ``loss_weights[k]`` scales batch k's loss before the backward pass (a data-parallel worker's
    share, ``trainables.data_parallel``); the loss reported stays the unscaled mean.
    """
    if make_batch is None:
        make_batch = functools.partial(collate, split, pad_token_id=pad_token_id)
    model.train()
    total, seen = 0.0, 0
    start = time.perf_counter()
    if batches is None:
        batches = epoch_batches(split, batch_size, rng=rng)
    for step, indices in enumerate(batches):
        batch = tuple(t.to(device, non_blocking=True) for t in make_batch(indices))
        with autocast_context(device, precision):
            loss = loss_fn(model, batch)
        value = float(loss.detach())
        if loss_weights is not None:
            loss = loss * loss_weights[step]
        if not math.isfinite(value):
            raise NonFiniteLossError(
                f"non-finite training loss ({value}) after {seen} samples; lower the learning "
                f"rate, enable gradient clipping, or use fp32"
            )
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        if after_step is not None:
            after_step()
        total += value * len(indices)
        seen += len(indices)
        if progress is not None:
            progress(len(indices))
    return EpochStats(loss=total / max(seen, 1), samples=seen, seconds=time.perf_counter() - start)


def macro_f1(labels: np.ndarray, predictions: np.ndarray, num_labels: int) -> float:
    """Unweighted mean of per-class F1 over the classes present in labels or predictions."""
    scores = []
    for c in range(num_labels):
        tp = int(np.sum((predictions == c) & (labels == c)))
        fp = int(np.sum((predictions == c) & (labels != c)))
        fn = int(np.sum((predictions != c) & (labels == c)))
        if tp + fp + fn == 0:
            continue  # class absent from both: it does not count (as in scikit-learn's labels=present)
        scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else 0.0


@dataclass
class EvalResult:
    loss: float
    accuracy: float
    macro_f1: float
    predictions: np.ndarray
    labels: np.ndarray

    def as_metrics(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}_loss": self.loss, f"{prefix}_accuracy": self.accuracy,
                f"{prefix}_macro_f1": self.macro_f1}


@torch.no_grad()
def evaluate(model: torch.nn.Module, split: EncodedSplit, *, batch_size: int, pad_token_id: int,
             num_labels: int, device: torch.device, precision: str = "fp32") -> EvalResult:
    """Cross-entropy, accuracy and macro-F1 of ``model`` on ``split`` (dropout off)."""
    model.eval()
    batches = epoch_batches(split, batch_size, rng=np.random.default_rng(0), shuffle=False)
    total, order, preds = 0.0, [], []
    for indices in batches:
        ids, mask, labels = (t.to(device) for t in collate(split, indices, pad_token_id))
        with autocast_context(device, precision):
            logits = model(ids, mask)
        total += float(F.cross_entropy(logits.float(), labels, reduction="sum"))
        order.append(indices)
        preds.append(logits.argmax(-1).cpu().numpy())
    order_arr = np.concatenate(order)
    predictions = np.empty(len(split), dtype=np.int64)
    predictions[order_arr] = np.concatenate(preds)
    labels_all = split.labels
    return EvalResult(
        loss=total / len(split),
        accuracy=float(np.mean(predictions == labels_all)),
        macro_f1=macro_f1(labels_all, predictions, num_labels),
        predictions=predictions,
        labels=labels_all,
    )
