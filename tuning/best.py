"""Best configurations of a sweep, read from MLflow (works with no Ray and after the sweep exited).

Only trials whose run FINISHED with a classifier and whose metric is a finite number can be
best: failed, killed, still-running and NaN runs never are, nor contrastive trials stopped before
their classifier stage.
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

    @property
    def name(self) -> str:
        return self.tags.get("mlflow.runName", self.run_id)


def _uri(tracking_uri: Optional[str], storage: str) -> str:
    return resolve_tracking_uri(tracking_uri, Path(storage).expanduser().resolve())


def _to_trial(run) -> TrialRun:
    tags = run.data.tags
    config = json.loads(tags.get(tracking.CONFIG, "{}"))
    return TrialRun(run_id=run.info.run_id, trial_id=tags.get(tracking.TRIAL_ID, ""),
                    trainable=tags.get(tracking.TRAINABLE, config.get("trainable", "finetune")),
                    config=config, metrics=dict(run.data.metrics),
                    artifact_uri=run.info.artifact_uri, status=run.info.status, tags=dict(tags))


def top_k(sweep: str, k: int = 5, metric: str = "val_accuracy", mode: str = "max", *,
          tracking_uri: Optional[str] = None, storage: str = DEFAULT_ROOT) -> list[TrialRun]:
    """The ``k`` best finished trials of ``sweep``, best first, by the metric's last value."""
    if mode not in ("max", "min"):
        raise ConfigError(f"`mode` must be 'max' or 'min', but got {mode!r}")
    if k < 1:
        raise ConfigError(f"`k` must be >= 1, but got {k}")
    runs = [_to_trial(r) for r in tracking.trial_runs(_uri(tracking_uri, storage), sweep)]
    # A contrastive trial stopped during its first stage (stage 1) reported a k-NN proxy, not a
    # classifier's accuracy: it has no classifier to hand back, so it cannot be best.
    candidates = [r for r in runs if r.status == "FINISHED" and r.metrics.get("stage", 2) != 1
                  and isinstance(r.metrics.get(metric), float) and math.isfinite(r.metrics[metric])]
    known = sorted({m for r in runs for m in r.metrics})
    if known and metric not in known:
        raise ConfigError(f"no trial of sweep {sweep!r} reported metric {metric!r}; "
                          f"metrics there: {known}")
    candidates.sort(key=lambda r: r.metrics[metric], reverse=(mode == "max"))
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
