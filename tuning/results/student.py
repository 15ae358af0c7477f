"""The distilled student of a final selection: one model of the chosen config trained on train
with a KL term to the better ensemble's temperature-softened probabilities plus cross-entropy
(``trainables.distill``; Hinton et al. 2015), so the ensemble's accuracy may come at one model's
latency. It is a hand-over candidate like the others (``tuning.results.handover``): scored on
validation by the same evaluation, never on test before the choice.

The teacher's probabilities on train are computed once, by the training, and cached in the
teacher's folder (``trainables.distill``); the student trains with a fresh seed (the chosen
config's last selection seed + 1) and is a normal model folder.

Loaded only once a selection runs: it brings torch and MLflow."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Optional, Sequence

from trainables import registry
from trainables.data import DataConfig
from trainables.errors import NonFiniteLossError
from tuning.results.candidates import Candidate, better
from tuning.results.evaluation import evaluate_folders
from tuning.results.handover import Option
from tuning.results.train import train_config

log = logging.getLogger(__name__)



def _say(message: str) -> None:
    log.info(f"select: {message}")


def can_distil(config: dict) -> Optional[str]:
    """Why the chosen config cannot have a student (None: it can): only fine-tuned text
    classifiers train with a teacher."""
    if config.get("trainable") != "finetune":
        return (f"no distilled student: only fine-tuned classifiers train with a teacher, and "
                f"the chosen config is a {config.get('trainable')!r} trial")
    if config.get("rdrop_alpha") or config.get("supcon_lambda"):
        return ("no distilled student: the chosen config trains with R-Drop or joint SupCon, "
                "whose two-view losses take no teacher")
    return None


def teacher_of(options: Sequence[Option], mode: str) -> Optional[Option]:
    """The ensemble (of seeds or of configs) that scores best on validation, if any."""
    teacher = None
    for option in options:
        if option.kind in ("ensemble", "cross") and math.isfinite(option.val) and (
                teacher is None or better(option.val, teacher.val, mode)):
            teacher = option
    return teacher


def train_student(chosen: Candidate, teacher: Option, data: DataConfig, run, *, uri: str,
                  sweep: str, metric: str, folder: Path, temperature: float, alpha: float,
                  max_train_examples: Optional[int], layers: int = 0) -> Optional[Option]:
    """Train the student of ``teacher`` into ``folder`` and score it on validation; None when it
    diverged (its run ends FAILED and it cannot be handed over). ``layers``: a smaller student that
    keeps the encoder's bottom ``layers`` layers (the deploy option ``num_layers``)."""
    seed = max(chosen.seeds) + 1
    config = {**chosen.config, "seed": seed, "distill_teacher": str(teacher.folder),
              "distill_temperature": float(temperature), "distill_alpha": float(alpha),
              **({"num_layers": layers} if layers else {})}
    registry.config_class(config["trainable"]).from_dict(config)  # refused here, not mid-run
    _say(f"distilling the {teacher.label} ({metric} {teacher.val:.4f}) into one model of the "
         f"chosen config (seed {seed}, temperature {temperature:g}, alpha {alpha:g})")
    start = time.perf_counter()
    try:
        outcome = train_config(
            config, data, tracking_uri=uri, experiment=sweep, run_name=f"select-student-seed{seed}",
            output_dir=str(folder),
            tags={"tunebert.sweep": sweep, "tunebert.from_sweep": sweep,
                  "tunebert.selection.rank": str(chosen.rank),
                  "tunebert.selection.trial_id": chosen.trial_id,
                  "tunebert.selection.student": "true", "tunebert.selection.seed": str(seed),
                  "tunebert.selection.teacher": teacher.kind},
            max_train_examples=max_train_examples, evaluate_test=False,
            parent_run_id=run.run_id, log_model=False)
    except NonFiniteLossError as exc:
        _say(f"the student diverged ({exc}); it cannot be handed over")
        return None
    score = evaluate_folders([str(folder)], data, chosen.config, "validation")[0][metric]
    run.log_metrics({f"student_{metric}": score,
                     "student_seconds": time.perf_counter() - start})
    run.set_tags({"tunebert.student_run_id": outcome.run_id})
    _say(f"student: {metric} {score:.4f} (teacher {teacher.val:.4f})")
    size = f", {layers} layers" if layers else ""
    return Option("student", f"student of the {teacher.label} (seed {seed}{size})", str(folder), score,
                  score, 1)
