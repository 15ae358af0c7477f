"""Train one config on its own (a preset, an exported best config) and evaluate it on test.

This is the only place the test split is used: after training, for the final evaluation. Final
selection (``tuning.selection``) trains with ``evaluate_test=False``, so its candidates never see
test; it evaluates only the chosen candidate's models on test, after the choice.
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from trainables import registry
from trainables.data import DataConfig, load_raw_splits, tokenize_splits
from trainables.models import load_tokenizer
from tuning import tracking


@dataclass
class TrainOutcome:
    run_id: str
    config: dict[str, Any]
    val: dict[str, float]
    test: dict[str, float]
    checkpoint_dir: Optional[str]


EPOCH_KEYS = ("contrastive_loss", "train_loss", "val_loss", "val_knn_accuracy", "val_accuracy",
              "val_macro_f1")


class _Progress:
    """A one-line progress display per epoch (on a terminal) plus a summary line per epoch."""

    def __init__(self, total_epochs: int, samples_per_epoch: int):
        self.total_epochs = total_epochs
        self.samples_per_epoch = samples_per_epoch
        self.done = 0
        self.epoch_start = time.time()
        self.tty = sys.stderr.isatty()

    def batch(self, n: int) -> None:
        self.done += n
        if self.tty:
            frac = self.done / self.samples_per_epoch
            rate = self.done / max(time.time() - self.epoch_start, 1e-9)
            eta = (self.samples_per_epoch - self.done) / max(rate, 1e-9)
            bar = "#" * int(30 * frac)
            print(f"\r  [{bar:<30}] {self.done}/{self.samples_per_epoch} {rate:.0f} samples/s "
                  f"eta {eta:.0f}s", end="", file=sys.stderr, flush=True)

    def epoch(self, metrics: dict) -> None:
        if self.tty:
            print("\r" + " " * 80 + "\r", end="", file=sys.stderr)
        shown = "  ".join(f"{key} {metrics[key]:.4f}" for key in EPOCH_KEYS if key in metrics)
        print(f"[tunebert] epoch {metrics['epoch']}/{self.total_epochs}  {shown}  "
              f"({metrics['samples_per_s']:.0f} samples/s, {time.time() - self.epoch_start:.0f}s)",
              flush=True)
        self.done = 0
        self.epoch_start = time.time()


def train_config(config: dict[str, Any], data_config: DataConfig, *, tracking_uri: str,
                 experiment: str = "tunebert-train", run_name: Optional[str] = None,
                 output_dir: Optional[str] = None, tags: Optional[dict] = None,
                 max_train_examples: Optional[int] = None, evaluate_test: bool = True,
                 parent_run_id: Optional[str] = None, log_model: bool = True) -> TrainOutcome:
    """Train ``config`` on ``data_config``'s train split, pick nothing, report validation and test.

    ``evaluate_test=False``: the test split is neither tokenized nor evaluated, and ``test`` is
    empty (for model selection). ``parent_run_id`` nests the MLflow run under that run.
    ``log_model=False`` keeps the trained model out of MLflow (it is still written to
    ``output_dir`` when one is given).
    """
    import torch

    from trainables.loops import evaluate

    resolved = registry.resolve_config(config)
    cfg = registry.config_class(resolved["trainable"]).from_dict(resolved)
    fit = registry.fit_function(cfg.trainable)
    raw = load_raw_splits(data_config)
    tokenizer = load_tokenizer(cfg.model)
    data = tokenize_splits(raw, tokenizer, model=cfg.model, max_length=cfg.max_length,
                           include_test=evaluate_test)
    if max_train_examples:
        # a seeded random sample: data files are often sorted by label (MASSIVE is), so the
        # first rows would all be one class
        train = data.splits["train"]
        keep = np.random.default_rng(cfg.seed).permutation(len(train))[:max_train_examples]
        data.splits["train"] = type(train)([train.input_ids[i] for i in keep], train.labels[keep])
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    run = tracking.TrainRun(tracking_uri, experiment, resolved,
                            run_name or f"train-{resolved.get('preset') or 'config'}",
                            tags={"tunebert.data": data_config.source,
                                  **({tracking.PARENT: parent_run_id} if parent_run_id else {}),
                                  **(tags or {})})
    print(f"[tunebert] training {cfg.trainable} ({cfg.model}) for {getattr(cfg, 'total_epochs', cfg.epochs)} epochs on "
          f"{len(data.splits['train'])} examples, device {device}; MLflow run {run.run_id}", flush=True)
    progress = _Progress(getattr(cfg, "total_epochs", cfg.epochs), len(data.splits["train"]))
    last: dict[str, float] = {}

    def report(metrics: dict, write) -> None:
        run.log_metrics(metrics, step=metrics["epoch"])
        progress.epoch(metrics)
        last.clear()
        last.update(metrics)

    try:
        model = fit(cfg, data, device=device, report=report, progress=progress.batch)
        test = evaluate(model, data.splits["test"], batch_size=64, pad_token_id=data.pad_token_id,
                        num_labels=data.num_labels, device=device, precision=cfg.precision) \
            if evaluate_test else None
    except BaseException as exc:
        run.end("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED",
                error=f"{type(exc).__name__}: {exc}")
        raise
    test_metrics = test.as_metrics("test") if test is not None else {}
    if test_metrics:
        run.log_metrics(test_metrics, step=getattr(cfg, "total_epochs", cfg.epochs))
    checkpoint_dir = None
    with tempfile.TemporaryDirectory() as tmp:
        from trainables.checkpointing import save_checkpoint

        target = Path(output_dir) if output_dir else Path(tmp)
        if output_dir or log_model:
            save_checkpoint(target, model=model, optimizer=None, scheduler=None, scaler=None,
                            epoch=cfg.epochs, config=resolved, label_map=data.label_map.to_dict())
        if log_model:
            run.log_artifacts(str(target), "model")
        checkpoint_dir = str(target) if output_dir else None
    run.end("FINISHED")
    if last.get("best_epoch"):
        print(f"[tunebert] kept the model of epoch {int(last['best_epoch'])} (best val_accuracy "
              f"{last['best_val_accuracy']:.4f})", flush=True)
    if test_metrics:
        print(f"[tunebert] test_accuracy {test_metrics['test_accuracy']:.4f}  "
              f"test_macro_f1 {test_metrics['test_macro_f1']:.4f}", flush=True)
    # the model kept is the best validation epoch's: its scores are the run's validation result
    val = {k: v for k, v in last.items() if k.startswith("val_")}
    val.update({k[len("best_"):]: v for k, v in last.items() if k.startswith("best_val_")})
    return TrainOutcome(run.run_id, resolved, val, test_metrics, checkpoint_dir)
