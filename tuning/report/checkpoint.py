"""The best trial's checkpoint re-evaluated on the VALIDATION split, for the report's confusion
matrix (nothing is ever evaluated on the test split here).

The checkpoint comes from the sweep's parent MLflow run (``best_checkpoint/``) when it is that
trial's, else from the sweep folder; the validation split is rebuilt from the sweep's saved
settings and tokenized the way the trial saw it.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, TypeVar

import numpy as np

import tuning.tracking as tracking
from trainables import registry, task_data
from trainables.baseline_export import rebuild_baseline
from trainables.checkpointing import load_checkpoint, model_weights
from trainables.contrastive import ContrastiveModel
from trainables.data import LabelMap
from trainables.errors import ConfigError, UserError
from trainables.finetune import build_classifier
from trainables.hparams import BASELINES
from trainables.loops import evaluate
from trainables.models import load_tokenizer
from tuning.config import load_saved_sweep
from tuning.report.data import TrialRecord

log = logging.getLogger(__name__)

CONFUSED_PAIRS = 10
EVAL_BATCH_SIZE = 64
Evaluation = TypeVar("Evaluation")


def _tracking():
    """``tuning.tracking``, through one function the tests can stub."""
    return tracking


@dataclass
class Confusion:
    """The best trial's confusion matrix on the validation split."""

    trial_id: str
    counts: np.ndarray  # (num_labels, num_labels): rows true class, columns predicted class
    names: list[str]
    accuracy: float

    @property
    def total(self) -> int:
        return int(self.counts.sum())


def confusion_counts(labels: np.ndarray, predictions: np.ndarray, num_labels: int) -> np.ndarray:
    """(num_labels, num_labels) counts: row = true class, column = predicted class."""
    flat = np.bincount(labels * num_labels + predictions, minlength=num_labels * num_labels)
    return flat.reshape(num_labels, num_labels)


def most_confused(confusion: Confusion, k: int = CONFUSED_PAIRS) -> list[tuple[str, str, int, float]]:
    """The ``k`` largest off-diagonal cells: (true, predicted, count, share of the true class)."""
    counts = confusion.counts.copy()
    np.fill_diagonal(counts, 0)
    rows = counts.sum(axis=1) + np.diag(confusion.counts)
    order = np.argsort(-counts, axis=None, kind="stable")[:k]  # ties: first true class first
    pairs = []
    for flat in order:
        true, pred = divmod(int(flat), counts.shape[1])
        if counts[true, pred] == 0:
            break
        pairs.append((confusion.names[true], confusion.names[pred], int(counts[true, pred]),
                      float(counts[true, pred] / max(rows[true], 1))))
    return pairs


def best_checkpoint(uri: str, parent_run_id: Optional[str], sweep_dir: Path, best: TrialRecord,
                    into: Path) -> Optional[Path]:
    """A folder holding the best trial's checkpoint: the parent run's ``best_checkpoint/``
    artifact if it belongs to that trial, else the trial's last checkpoint in the sweep folder."""
    tracking = _tracking()
    if parent_run_id and "best_checkpoint" in tracking.artifact_paths(uri, parent_run_id):
        folder = Path(tracking.download_artifacts(uri, parent_run_id, "best_checkpoint", str(into)))
        config = folder / "config.json"
        try:
            if config.is_file() and json.loads(config.read_text()) == best.config:
                return folder  # read later with weights_only=True (validation_confusion)
        except (ValueError, UnicodeDecodeError):  # a damaged artifact: use the sweep folder's copy
            pass
    local = sorted(sweep_dir.glob(f"*_{best.trial_id}/checkpoint_*/state.pt"))
    return local[-1].parent if local else None


def rebuild_model(config: dict, state: dict, num_labels: int):
    """The trial's model, as its family builds it, with the checkpoint's weights."""

    trainable = config.get("trainable", "finetune")
    if trainable in BASELINES:  # a tfidf or bilstm model: no encoder to build
        return rebuild_baseline(config, model_weights(state), num_labels)
    cfg = registry.config_class(trainable).from_dict(config)
    model = build_classifier(cfg, num_labels)
    if trainable == "contrastive":
        model = ContrastiveModel(model, cfg.projection_dim)
    model.load_state_dict(model_weights(state))  # the best epoch's (averaged) weights
    return model


def validation_confusion(checkpoint_dir: Path, data_config, trial_id: str) -> Confusion:
    """Re-tokenize the validation split the way the trial saw it, run the checkpoint over it."""
    import torch


    state = load_checkpoint(checkpoint_dir)
    config = state["config"]
    data, _ = task_data.load_encoded(data_config, config.get("trainable", "finetune"),
                                     load_tokenizer(config["model"]), model=config["model"],
                                     max_length=config["max_length"], include_test=False)
    saved = LabelMap.from_dict(state["label_map"])
    if saved.names != data.label_map.names:
        raise ConfigError(f"the labels of {data_config.source!r} no longer match the checkpoint's "
                          f"({len(data.label_map)} vs {len(saved)} classes, or renamed); the data "
                          f"changed since the sweep")
    val = data.splits["validation"]
    log.info(f"re-evaluating trial {trial_id} on the validation split ({len(val)} examples)")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = rebuild_model(config, state, data.num_labels).to(device)
    result = evaluate(model, val, batch_size=EVAL_BATCH_SIZE, pad_token_id=data.pad_token_id,
                      num_labels=data.num_labels, device=device)
    return Confusion(trial_id, confusion_counts(result.labels, result.predictions, data.num_labels),
                     list(saved.names), result.accuracy)


def best_trial_confusion(uri: str, parent_run_id: Optional[str], sweep: str, storage: str,
                         best: Optional[TrialRecord]) -> tuple[Optional[Confusion], Optional[str]]:
    """The best trial's validation confusion matrix, or (None, why it was skipped)."""
    return best_trial_evaluation(uri, parent_run_id, sweep, storage, best, validation_confusion)


def best_trial_evaluation(uri: str, parent_run_id: Optional[str], sweep: str, storage: str,
                          best: Optional[TrialRecord],
                          evaluate_checkpoint: Callable[[Path, object, str], Evaluation]
                          ) -> tuple[Optional[Evaluation], Optional[str]]:
    """``evaluate_checkpoint(checkpoint folder, the sweep's DataConfig, trial id)`` of the best
    trial's checkpoint, or (None, why it was skipped)."""
    if best is None:
        return None, "No finished trial, so no checkpoint to evaluate."
    try:
        settings = load_saved_sweep(sweep, storage)
    except UserError:
        return None, (f"Skipped: the sweep's saved settings ({sweep}/tunebert_sweep.json under "
                      f"{Path(storage).expanduser().resolve() / 'ray'}) are not available here, so "
                      f"the validation data cannot be rebuilt. Pass the --storage the sweep used.")
    with tempfile.TemporaryDirectory(prefix="tunebert-report-") as tmp:
        checkpoint = best_checkpoint(uri, parent_run_id, settings.sweep_dir, best, Path(tmp))
        if checkpoint is None:
            return None, (f"Skipped: no checkpoint of trial {best.trial_id} in the parent run's "
                          f"best_checkpoint/ artifact or in {settings.sweep_dir}.")
        try:
            return evaluate_checkpoint(checkpoint, settings.data, best.trial_id), None
        except UserError as exc:
            return None, f"Skipped: {exc}"
