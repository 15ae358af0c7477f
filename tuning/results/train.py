"""Train one config on its own (a preset, an exported best config) and evaluate it on test.

This is the only place the test split is used: after training, for the final evaluation. Final
selection (``tuning.results.selection``) trains with ``evaluate_test=False``, so its candidates never see
test; it evaluates only the chosen candidate's models on test, after the choice.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from trainables import export, loops, registry, task_data
from trainables.data import DataConfig
from trainables.joint import evaluate_multitask, label_maps
from trainables.joint_export import save_multitask_model
from trainables.models import load_tokenizer
from trainables.tagging import JointData
import tuning.console as console
import tuning.results.outputs as outputs
import tuning.tracking as tracking
from tuning.results.job_folder import JobFolder

log = logging.getLogger(__name__)


@dataclass
class TrainOutcome:
    run_id: str
    config: dict[str, Any]
    val: dict[str, float]
    test: dict[str, float]
    checkpoint_dir: Optional[str]     # the model folder written to ``output_dir`` (trainables.export)
    model_uri: Optional[str] = None   # the MLflow model: runs:/<run id>/model
    registered_uri: Optional[str] = None  # models:/<name>/<version> with ``register_model``


EPOCH_KEYS = ("contrastive_loss", "train_loss", "val_loss", "val_knn_accuracy", "val_accuracy",
              "val_macro_f1", "val_slot_f1", "val_sentence_accuracy")


class _Progress:
    """A one-line progress display per epoch (on a terminal) plus a summary line per epoch."""

    def __init__(self, total_epochs: int, samples_per_epoch: int):
        self.total_epochs = total_epochs
        self.samples_per_epoch = samples_per_epoch
        self.done = 0
        self.epoch_start = time.time()
        self.tty = sys.stderr.isatty() and console.verbosity() >= 0

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
        unit, total = ("round", metrics["rounds"]) if "rounds" in metrics else ("epoch", self.total_epochs)
        log.info(f"{unit} {metrics['epoch']}/{total}  {shown}  "
                 f"({metrics['samples_per_s']:.0f} samples/s, {time.time() - self.epoch_start:.0f}s)")
        self.done = 0
        self.epoch_start = time.time()


def check_output_dir(output_dir: Optional[str], option: str = "--output-dir") -> None:
    """Refuse, before anything is trained, an output folder tunebert may not replace: anything
    but a missing or empty folder or a model folder holding only what tunebert wrote
    (``tuning.results.outputs``). An earlier swap there that was killed is finished first."""
    if output_dir:
        outputs.check_output_target(Path(output_dir), option)


def _lineage(tags: dict, run_id: str, fingerprint: str, data: DataConfig) -> dict[str, str]:
    """The trained model's lineage: the sweep and trial its config came from (tags set by
    `tunebert train --from-sweep` and by selection), its run, and its data."""
    return tracking.lineage_tags(
        sweep=tags.get("tunebert.from_sweep") or tags.get(tracking.SWEEP),
        trial_id=tags.get("tunebert.from_trial_id") or tags.get("tunebert.selection.trial_id"),
        run_id=run_id, data_fingerprint=fingerprint, kind="single", data=data.source)


def train_config(config: dict[str, Any], data_config: DataConfig, *, tracking_uri: str,
                 experiment: str = "tunebert-train", run_name: Optional[str] = None,
                 output_dir: Optional[str] = None, tags: Optional[dict] = None,
                 max_train_examples: Optional[int] = None, evaluate_test: bool = True,
                 parent_run_id: Optional[str] = None, log_model: bool = True,
                 register_model: Optional[str] = None, job_dir: Optional[str] = None,
                 continue_run: Optional[str] = None) -> TrainOutcome:
    """Train ``config`` on ``data_config``'s train split, pick nothing, report validation and test.

    ``evaluate_test=False``: the test split is neither tokenized nor evaluated, and ``test`` is
    empty (for model selection). ``parent_run_id`` nests the MLflow run under that run.
    The trained model is a self-contained model folder (``trainables.export``), written to
    ``output_dir`` when one is given (an earlier model there is replaced) and logged to the run as
    the MLflow pyfunc model ``model`` (``runs:/<run id>/model``, ``tracking.log_model``) unless
    ``log_model=False``; ``register_model`` also registers it under that name, with lineage tags.

    ``job_dir`` (a benchmark job's folder, ``tuning.results.job_folder.JobFolder``) keeps a resumable checkpoint
    of every epoch, written before the epoch is logged, and is removed when the run finishes.
    With ``continue_run``, the id of the unfinished run that logged the earlier epochs, training
    continues from the folder's checkpoint (from the start without one) in that run, and no
    epoch it holds is logged again; without it the folder is emptied first.
    """
    if register_model and not log_model:
        raise ValueError("register_model needs log_model=True: only a logged model can be "
                         "registered")
    check_output_dir(output_dir)
    resolved = registry.resolve_config(config)
    cfg = registry.config_class(resolved["trainable"]).from_dict(resolved)
    tokenizer = load_tokenizer(cfg.model)
    data, fingerprint = _training_data(data_config, tokenizer, cfg, evaluate_test, max_train_examples)
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    folder = JobFolder(job_dir) if job_dir else None
    if folder is not None and not continue_run:
        folder.remove()  # a checkpoint without the run that logged its epochs: start over
    resume = folder.latest() if folder is not None else None
    if continue_run:
        run = tracking.TrainRun.reopen(tracking_uri, continue_run)
    else:
        run = tracking.TrainRun(tracking_uri, experiment, resolved,
                                run_name or f"train-{resolved.get('preset') or 'config'}",
                                tags={"tunebert.data": data_config.source,
                                      **({tracking.PARENT: parent_run_id} if parent_run_id else {}),
                                      **(tags or {})})
    # the epoch the checkpoint ended with reported these (the best epoch so far among them)
    last: dict[str, float] = folder.metrics() if resume else {}
    log.info(f"training {cfg.trainable} ({cfg.model}) for {getattr(cfg, 'total_epochs', cfg.epochs)} "
             f"epochs on {len(data.splits['train'])} examples, device {device}; MLflow run {run.run_id}"
             + (f" continued from the checkpoint of epoch {int(last['epoch'])}" if resume else
                " continued" if continue_run else ""))
    if resume and last["epoch"] > run.logged_through:  # stopped between its checkpoint and its log
        run.log_metrics(last, step=int(last["epoch"]))
    with _ending_on_error(run):
        model, test_metrics = _fit_and_test(cfg, data, device, run, folder, resume, last,
                                            evaluate_test)
    if test_metrics and "test_accuracy" not in run.logged:
        run.log_metrics(test_metrics, step=getattr(cfg, "total_epochs", cfg.epochs))
    # the model kept is the best validation epoch's: its scores are the run's validation result
    val = {k: v for k, v in last.items() if k.startswith("val_")}
    val.update({k[len("best_"):]: v for k, v in last.items() if k.startswith("best_val_")})
    with _ending_on_error(run):
        checkpoint_dir, logged = _save_model(
            model, resolved, data, tokenizer, {**val, **test_metrics}, run,
            tracking_uri=tracking_uri, output_dir=output_dir, log_model=log_model,
            register_model=register_model,
            lineage=_lineage(tags or {}, run.run_id, fingerprint, data_config)
            if log_model else {})
    run.end("FINISHED")
    if folder is not None:
        folder.remove()
    _say_result(last, test_metrics)
    return TrainOutcome(run.run_id, resolved, val, test_metrics, checkpoint_dir,
                        logged.uri if logged else None,
                        logged.registered_uri if logged else None)


def _training_data(data_config, tokenizer, cfg, evaluate_test: bool, max_train_examples: Optional[int]):
    """The tokenized splits (test only with ``evaluate_test``; through the token cache for large
    data) and the data's fingerprint; train cut to a seeded random sample of
    ``max_train_examples``: data files are often sorted by label (MASSIVE is), so the first rows
    would all be one class."""
    data, fingerprint = task_data.load_encoded(data_config, cfg.trainable, tokenizer, model=cfg.model,
                                               max_length=cfg.max_length, include_test=evaluate_test,
                                               say=log.info)
    if max_train_examples:
        train = data.splits["train"]
        keep = np.random.default_rng(cfg.seed).permutation(len(train))[:max_train_examples]
        data.splits["train"] = task_data.take(train, keep)
    return data, fingerprint


@contextmanager
def _ending_on_error(run):
    """End ``run`` as KILLED (Ctrl-C) or FAILED when the block raises, and re-raise."""
    try:
        yield
    except BaseException as exc:
        run.end("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED",
                error=f"{type(exc).__name__}: {exc}")
        raise


def _fit_and_test(cfg, data, device, run, folder: Optional[JobFolder], resume, last: dict,
                  evaluate_test: bool):
    """Train (from ``resume``, a checkpoint in ``folder``, if given), logging each epoch not yet
    logged and keeping its metrics in ``last``; then the test split once. (model, test metrics)."""
    progress = _Progress(getattr(cfg, "total_epochs", cfg.epochs), len(data.splits["train"]))

    def report(metrics: dict, write) -> None:
        if folder is not None:  # before the log: a logged epoch is never trained again
            folder.save(metrics, write)
        if metrics["epoch"] > run.logged_through:
            run.log_metrics(metrics, step=metrics["epoch"])
        progress.epoch(metrics)
        last.clear()
        last.update(metrics)

    fit = registry.fit_function(cfg.trainable)
    model = fit(cfg, data, device=device, report=report, progress=progress.batch,
                **({"resume_dir": str(resume)} if resume else {}))
    if not evaluate_test:
        return model, {}
    return model, test_metrics(model, data, cfg, device)


def test_metrics(model, data, cfg, device) -> dict[str, float]:
    """The final evaluation on the test split: loss, accuracy and macro-F1; a multitask model's
    intent, slot (micro and per slot type, ``test_slot_f1_<type>``) and sentence scores."""
    if isinstance(data, JointData):
        result = evaluate_multitask(model, data.splits["test"], data, batch_size=64, device=device,
                                    precision=cfg.precision, prefix="test",
                                    weights=(cfg.intent_loss_weight, cfg.slot_loss_weight))
        per_type = {f"test_slot_f1_{kind}": scores.f1 for kind, scores in result.per_type.items()}
        return {**result.metrics, **per_type}
    test = loops.evaluate(model, data.splits["test"], batch_size=64, pad_token_id=data.pad_token_id,
                          num_labels=data.num_labels, device=device, precision=cfg.precision)
    return test.as_metrics("test")


def _save_model(model, resolved: dict, data, tokenizer, metrics: dict, run, *, tracking_uri: str,
                output_dir: Optional[str], log_model: bool, register_model: Optional[str],
                lineage: dict[str, str]):
    """Write the model folder (to ``output_dir``, replacing an earlier model there, or to a
    temporary folder) and log it to ``run``; (its folder in ``output_dir`` or None, the logged
    model or None)."""
    logged = None
    with tempfile.TemporaryDirectory() as tmp:

        def write(folder: Path) -> None:
            if isinstance(data, JointData):
                save_multitask_model(folder, model, config=resolved, label_map=label_maps(data),
                                     tokenizer=tokenizer, metrics=metrics)
                return
            export.save_model(folder, model, config=resolved, label_map=data.label_map.to_dict(),
                              tokenizer=tokenizer, metrics=metrics)

        target = Path(output_dir).expanduser() if output_dir else Path(tmp) / "model"
        if output_dir:  # written beside it, then swapped in for an earlier model there
            with outputs.replacing(target) as new:
                write(new)
        elif log_model:
            write(target)
        if log_model:
            logged = tracking.log_model(tracking_uri, run.run_id, str(target), "model",
                                        register_as=register_model, lineage=lineage)
        return (str(target) if output_dir else None), logged


# what the closing lines show, in this order, where a run has them
RESULT_KEYS = ("accuracy", "macro_f1", "intent_accuracy", "slot_f1", "sentence_accuracy")


def _result_keys(metrics: dict, prefix: str) -> list[str]:
    """RESULT_KEYS that ``metrics`` has under ``prefix`` (a multitask run's accuracy is its intent
    accuracy, shown once)."""
    keys = [k for k in RESULT_KEYS if f"{prefix}{k}" in metrics]
    return [k for k in keys if not (k == "accuracy" and "intent_accuracy" in keys)]


def _say_result(last: dict, test_metrics: dict) -> None:
    if last.get("best_epoch"):
        shown = ", ".join(f"val_{k} {last[f'best_val_{k}']:.4f}"
                          for k in _result_keys(last, "best_val_") if k != "macro_f1")
        log.info(f"kept the model of epoch {int(last['best_epoch'])} (best {shown})")
    if test_metrics:
        shown = "  ".join(f"test_{k} {test_metrics[f'test_{k}']:.4f}"
                          for k in _result_keys(test_metrics, "test_"))
        print(f"[tunebert] {shown}", flush=True)
