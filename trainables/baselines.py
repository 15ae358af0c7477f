"""What the two cheap baselines (``trainables.tfidf``, ``trainables.bilstm``) share: their epoch's
report, what their model costs to serve, and their checkpoints. They report what a fine-tuning
trial reports (``trainables.finetune.fit``), so all families rank in one sweep's record.

Selection is on the validation split only; no baseline reads the test split.
"""

from __future__ import annotations

import copy
from typing import Callable, Optional

import torch
from torch import nn

from trainables.checkpointing import save_checkpoint
from trainables.data import EncodedSplit, TokenizedData
from trainables.deploy import PeakMemory, deployment_metrics, parameter_count, probe_batch
from trainables.finetune import BestEpoch, perturbed_validation
from trainables.loops import EpochStats, evaluate
from trainables.models import load_tokenizer

# the baselines run in fp32 whatever `precision` says: a small model gains nothing from autocast,
# and a model folder then predicts exactly what its trial scored
PRECISION = "fp32"


def serving_costs(cfg, model: nn.Module, data: TokenizedData) -> dict[str, float]:
    """``params_m``, ``size_mb`` and, with ``cfg.deploy_metrics``, CPU latency at batch 1 and
    throughput at batch 32 (``trainables.deploy``) of a CPU copy of ``model``, as a fine-tuning
    trial measures its encoder's."""
    deployed = copy.deepcopy(model).to("cpu").eval()
    probe = probe_batch(load_tokenizer(data.model), cfg.max_length) if cfg.deploy_metrics else None
    return deployment_metrics(deployed, parameters=parameter_count(deployed), probe=probe)


def noisy_validation(cfg, data: TokenizedData) -> Optional[EncodedSplit]:
    """The perturbed validation split of ``cfg.perturb_eval`` (None when off): the same texts
    the encoder families are scored on (``trainables.finetune.perturbed_validation``)."""
    return perturbed_validation(cfg.perturb_eval, data) if cfg.perturb_eval else None


class EpochScorer:
    """Scores one epoch of a baseline on the validation split and keeps the best epoch (by
    ``val_accuracy``, ``trainables.finetune.BestEpoch``): the report's ``val_*``, ``best_*``,
    timings, peak memory and serving costs."""

    def __init__(self, cfg, data: TokenizedData, device: torch.device, memory: PeakMemory,
                 costs: dict[str, float], batch_size: int = 64):
        self.cfg, self.data, self.device, self.memory, self.costs = cfg, data, device, memory, costs
        self.noisy_val = noisy_validation(cfg, data)
        self.best = BestEpoch()
        self.kwargs = dict(batch_size=max(64, batch_size), pad_token_id=data.pad_token_id,
                           num_labels=data.num_labels, device=device, precision=PRECISION)

    def __call__(self, model: nn.Module, epoch: int, stats: EpochStats, **extra: float) -> dict:
        result = evaluate(model, self.data.splits["validation"], **self.kwargs)
        metrics = {"epoch": epoch, "train_loss": stats.loss, **result.as_metrics("val"),
                   "samples_per_s": stats.samples_per_s, "epoch_seconds": stats.seconds,
                   "peak_memory_mb": self.memory.mb(), **self.costs, **extra}
        if self.noisy_val is not None:
            metrics["val_accuracy_perturbed"] = evaluate(model, self.noisy_val, **self.kwargs).accuracy
        self.best.update(epoch, metrics, model.state_dict())
        metrics.update(self.best.as_metrics())
        return metrics


def checkpoint_writer(cfg, data: TokenizedData, model: nn.Module, best: BestEpoch, epoch: int,
                      last: int, optimizer=None, scheduler=None) -> Callable[[str], None]:
    """Writes ``epoch``'s checkpoint (``trainables.checkpointing``): resumable state before the
    ``last`` epoch, after it the best epoch's model alone (what the trial hands over)."""

    def write(directory: str) -> None:
        common = dict(epoch=epoch, config=cfg.to_dict(), label_map=data.label_map.to_dict(),
                      extra={"best": best.state()}, scaler=None)
        if epoch < last:
            save_checkpoint(directory, model=model, optimizer=optimizer, scheduler=scheduler,
                            best_model=best.weights, **common)
        else:
            save_checkpoint(directory, model=best.weights, optimizer=None, scheduler=None, **common)
    return write
