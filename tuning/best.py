"""Best configurations of a sweep, read from MLflow (works with no Ray and after the sweep exited).

Only trials whose run FINISHED with a classifier and whose metric is a finite number can be
best: failed, killed, still-running and NaN runs never are, nor contrastive trials stopped before
their classifier stage.

A trial is scored by its best validation epoch, not its last: trainables report ``best_epoch``
and ``best_val_*`` (the scores of the model the trial hands over) every epoch, and ranking reads
``best_<metric>`` (``score_key``). The config handed back records the epoch count that produced
the score as ``stop_epoch`` (the schedule still spans ``epochs``), so retraining it reproduces
that model. This is the one ranking function: ``best``, ``top_k``, ``report``, ``select`` and
``train --from-sweep`` all call it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from tuning import tracking
from tuning.config import DEFAULT_ROOT, resolve_tracking_uri
from trainables.errors import ConfigError


@dataclass(frozen=True)
class TrialRun:
    """One finished trial as MLflow holds it."""

    run_id: str
    trial_id: str
    trainable: str
    config: dict[str, Any]
    metrics: dict[str, float]
    artifact_uri: str
    status: str
    tags: dict[str, str] = field(default_factory=dict)

    def score(self, metric: str = "val_accuracy") -> float:
        """The trial's score: ``metric`` at its best validation epoch."""
        return self.metrics[score_key(metric, self.metrics)]

    @property
    def name(self) -> str:
        return self.tags.get("mlflow.runName", self.run_id)


def _uri(tracking_uri: Optional[str], storage: str) -> str:
    return resolve_tracking_uri(tracking_uri, Path(storage).expanduser().resolve())


def score_key(metric: str, metrics: dict) -> str:
    """The key a trial is ranked by: ``best_<metric>`` (its best epoch's) when it was reported."""
    return f"best_{metric}" if f"best_{metric}" in metrics else metric


def reproducing_config(config: dict[str, Any], metrics: dict[str, float]) -> dict[str, Any]:
    """``config`` with ``stop_epoch`` set to the classification-stage epoch that produced the
    trial's score, when that is not its last epoch."""
    best_epoch = metrics.get("best_epoch")
    if not best_epoch:
        return config
    stage1 = 0
    if config.get("trainable") == "contrastive" and config.get("mode", "two-stage") != "joint":
        stage1 = int(config.get("contrastive_epochs", 0))
    stop = int(best_epoch) - stage1
    epochs = int(config.get("epochs", 0))
    return {**config, "stop_epoch": stop if 1 <= stop < epochs else None}


def _to_trial(run) -> TrialRun:
    tags = run.data.tags
    # a Population Based Training clone trains on with its mutated config: that one is current
    current = tags.get(tracking.PBT_CONFIG) or tags.get(tracking.CONFIG, "{}")
    config = reproducing_config(json.loads(current), run.data.metrics)
    return TrialRun(run_id=run.info.run_id, trial_id=tags.get(tracking.TRIAL_ID, ""),
                    trainable=tags.get(tracking.TRAINABLE, config.get("trainable", "finetune")),
                    config=config, metrics=dict(run.data.metrics),
                    artifact_uri=run.info.artifact_uri, status=run.info.status, tags=dict(tags))


def top_k(sweep: str, k: int = 5, metric: str = "val_accuracy", mode: str = "max", *,
          tracking_uri: Optional[str] = None, storage: str = DEFAULT_ROOT) -> list[TrialRun]:
    """The ``k`` best finished trials of ``sweep``, best first, by the metric at each trial's best
    validation epoch (``score_key``); ``TrialRun.config`` reproduces that epoch's model."""
    if mode not in ("max", "min"):
        raise ConfigError(f"`mode` must be 'max' or 'min', but got {mode!r}")
    if k < 1:
        raise ConfigError(f"`k` must be >= 1, but got {k}")
    runs = [_to_trial(r) for r in tracking.trial_runs(_uri(tracking_uri, storage), sweep)]
    # A contrastive trial stopped during its first stage (stage 1) reported a k-NN proxy, not a
    # classifier's accuracy: it has no classifier to hand back, so it cannot be best.
    candidates = [r for r in runs if r.status == "FINISHED" and r.metrics.get("stage", 2) != 1
                  and isinstance(r.metrics.get(score_key(metric, r.metrics)), float)
                  and math.isfinite(r.metrics[score_key(metric, r.metrics)])]
    known = sorted({m for r in runs for m in r.metrics})
    if known and metric not in known:
        raise ConfigError(f"no trial of sweep {sweep!r} reported metric {metric!r}; "
                          f"metrics there: {known}")
    candidates.sort(key=lambda r: r.metrics[score_key(metric, r.metrics)], reverse=(mode == "max"))
    return candidates[:k]


def best_run(sweep: str, metric: str = "val_accuracy", mode: str = "max", *,
             tracking_uri: Optional[str] = None, storage: str = DEFAULT_ROOT) -> TrialRun:
    """The best finished trial: run id, metrics, config and artifact URI."""
    best = top_k(sweep, 1, metric, mode, tracking_uri=tracking_uri, storage=storage)
    if not best:
        raise ConfigError(f"sweep {sweep!r} has no finished trial with a finite {metric!r} yet")
    return best[0]


def best_config(sweep: str, metric: str = "val_accuracy", mode: str = "max", *,
                tracking_uri: Optional[str] = None, storage: str = DEFAULT_ROOT) -> dict[str, Any]:
    """The best trial's full config as a plain dict (includes ``trainable``); train it with
    ``tunebert train --config`` or ``tuning.train.train_config``."""
    return dict(best_run(sweep, metric, mode, tracking_uri=tracking_uri, storage=storage).config)
