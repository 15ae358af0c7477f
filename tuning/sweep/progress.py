"""The sweep's compact live view in the terminal (a Ray Tune callback; see ``tuning.console``).

One line when a trial starts (its id and the few searched parameters that set it apart from the
trials before it), one when it ends (epochs run, its best score and at which epoch, finished /
stopped early / failed) and a status line every ``STATUS_EVERY_S`` seconds, later every sixth of
the time elapsed (about 20 lines in two hours): trials done / running / pending, the best so far,
elapsed time and an estimate of the time left. On the demo
sweep (20 trials) that is about 50 lines where Ray's own output printed about 1,200.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections import Counter
from typing import Any, Callable, Optional, Sequence

from ray.tune import Callback

from trainables import registry
from tuning.console import clock

log = logging.getLogger(__name__)

STATUS_EVERY_S = 90.0     # the first status lines; later every sixth of the time elapsed
SHOWN_PARAMS = 4           # parameters named on a trial's start line



def _fmt_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e-2 or abs(value) >= 1e3 else f"{value:.3f}".rstrip("0").rstrip(".")
    return str(value)


def planned_epochs(config: dict[str, Any]) -> int:
    """The epochs a trial of ``config`` runs when nothing stops it (both stages of a contrastive
    trial; a sweep's ``stop_epoch`` shortens it)."""
    resolved = registry.resolve_config(config)
    cfg = registry.config_class(resolved.get("trainable", "finetune")).from_dict(resolved)
    return int(getattr(cfg, "total_epochs", cfg.last_epoch))


def standing_out(config: dict[str, Any], earlier: Sequence[dict[str, Any]], keys: Sequence[str],
                 n: int = SHOWN_PARAMS) -> list[str]:
    """The ``n`` of ``keys`` in which ``config`` differs most from the ``earlier`` configs, in
    ``keys`` order. A number scores by how far it lies from the earlier values' median, in units
    of their spread (log scale for positive values spanning a decade or more); a category scores
    1 if no earlier config shared its value, 0.5 if it is not the most common one. With no
    earlier config, the first ``n`` keys."""
    keys = [k for k in keys if k in config]
    if not earlier:
        return keys[:n]
    scores: dict[str, float] = {}
    for key in keys:
        value = config[key]
        seen = [c[key] for c in earlier if key in c]
        if not seen:
            scores[key] = 1.0
        elif isinstance(value, (int, float)) and not isinstance(value, bool) \
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in seen):
            values = [float(v) for v in seen] + [float(value)]
            if min(values) > 0 and max(values) / min(values) >= 10:
                values = [math.log10(v) for v in values]
            *rest, mine = values
            spread = (max(values) - min(values)) or 1.0
            scores[key] = min(1.0, abs(mine - statistics.median(rest)) / spread)
        else:
            counts = Counter(map(str, seen))
            scores[key] = 1.0 if str(value) not in counts else \
                0.5 if counts.most_common(1)[0][0] != str(value) else 0.0
    chosen = set(sorted(keys, key=lambda k: -scores[k])[:n])
    return [k for k in keys if k in chosen]


class SweepProgress(Callback):
    """A Ray Tune callback printing the sweep's compact view through this module's logger.

    ``searched``: the space's searched parameters (what a start line may name); ``metric`` and
    ``mode``: the ranking metric as the trials report it; ``planned_epochs(config)``: a trial's
    full length, to tell "finished" from "stopped early"; ``num_trials`` and ``time_budget_s``
    bound the estimate of the time left.
    """

    def __init__(self, searched: Sequence[str], metric: str, mode: str, num_trials: int,
                 time_budget_s: Optional[float],
                 planned_epochs: Callable[[dict], Optional[int]] = planned_epochs,
                 status_every_s: float = STATUS_EVERY_S, clock_fn: Callable[[], float] = time.monotonic):
        self.searched, self.metric, self.mode = list(searched), metric, mode
        # a trial's best epoch so far is what the sweep ranks by (``best_val_accuracy``); the
        # lines say "best val_accuracy"
        self.label = metric[len("best_"):] if metric.startswith("best_") else metric
        self.num_trials, self.time_budget_s = num_trials, time_budget_s
        self.planned_epochs, self.status_every_s, self.clock_fn = planned_epochs, status_every_s, clock_fn
        self._reset()

    def _reset(self) -> None:
        self.started_at: Optional[float] = None
        self.last_status = 0.0
        self.configs: list[dict] = []
        self.best: dict[str, tuple[float, int]] = {}   # trial id -> (best score, its epoch)
        self.epochs: dict[str, int] = {}
        self.ended: dict[str, str] = {}                 # trial id -> finished / stopped / failed
        self.epoch_seconds: list[float] = []

    def __getstate__(self):  # pickled with the Tuner: a resumed sweep starts its view afresh
        state = dict(self.__dict__)
        state.update(started_at=None, last_status=0.0, configs=[], best={}, epochs={}, ended={},
                     epoch_seconds=[])
        return state

    # -- what it prints
    def _better(self, a: float, b: float) -> bool:
        return a > b if self.mode == "max" else a < b

    def best_so_far(self) -> Optional[tuple[str, float]]:
        best = None
        for trial_id, (score, _) in self.best.items():
            if math.isfinite(score) and (best is None or self._better(score, best[1])):
                best = (trial_id, score)
        return best

    def status_line(self, running: int, pending: int, now: float) -> str:
        done = len(self.ended)
        stopped = sum(v == "stopped early" for v in self.ended.values())
        failed = sum(v == "failed" for v in self.ended.values())
        elapsed = now - (self.started_at if self.started_at is not None else now)
        parts = [f"{done}/{self.num_trials} done"]
        if stopped or failed:
            parts[0] += f" ({stopped} stopped early, {failed} failed)"
        parts += [f"{running} running", f"{pending} pending"]
        best = self.best_so_far()
        parts.append(f"best {self.label} {best[1]:.4f} ({best[0]})" if best else "no result yet")
        parts.append(f"{clock(elapsed)} elapsed")
        left = self.time_left(elapsed, done, running)
        if left is not None:
            parts.append(f"~{clock(left)} left")
        return "sweep: " + ", ".join(parts)

    def time_left(self, elapsed: float, done: int, running: int) -> Optional[float]:
        """Trials left × the mean wall time per ended trial so far, capped by the time budget;
        None before any trial has ended."""
        estimates = []
        if done:
            estimates.append(max(0.0, (self.num_trials - done) * elapsed / done))
        if self.time_budget_s:
            estimates.append(max(0.0, self.time_budget_s - elapsed))
        return min(estimates) if estimates else None

    # -- Ray Tune hooks
    def setup(self, **info) -> None:
        self._reset()

    def on_step_begin(self, iteration: int, trials: list, **info) -> None:
        now = self.clock_fn()
        if self.started_at is None:
            self.started_at = self.last_status = now
            for trial in trials:  # a resumed sweep: what had ended before still counts
                if trial.status in ("TERMINATED", "ERROR") and trial.last_result:
                    self._note_result(trial.trial_id, trial.last_result)
                    self.ended[trial.trial_id] = "failed" if trial.status == "ERROR" else \
                        self._end_kind(trial)
        if now - self.last_status >= max(self.status_every_s, (now - self.started_at) / 6):
            self.last_status = now
            running = sum(t.status == "RUNNING" for t in trials)
            pending = max(0, self.num_trials - len(self.ended) - running)
            log.info(self.status_line(running, pending, now))

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        config = {k: trial.config[k] for k in self.searched if k in trial.config}
        shown = standing_out(config, self.configs, self.searched)
        self.configs.append(config)
        params = " ".join(f"{k}={_fmt_value(config[k])}" for k in shown)
        log.info(f"trial {trial.trial_id} started: {params}".rstrip())

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        self._note_result(trial.trial_id, result)

    def _note_result(self, trial_id: str, result: dict) -> None:
        epoch = int(result.get("epoch", result.get("training_iteration", 0)) or 0)
        self.epochs[trial_id] = max(epoch, self.epochs.get(trial_id, 0))
        value = result.get(self.metric)
        if isinstance(value, (int, float)) and math.isfinite(value):
            old = self.best.get(trial_id)
            if old is None or self._better(float(value), old[0]):
                self.best[trial_id] = (float(value), epoch)
        seconds = result.get("time_this_iter_s")
        if isinstance(seconds, (int, float)) and seconds > 0:
            self.epoch_seconds.append(float(seconds))

    def _end_kind(self, trial) -> str:
        try:
            planned = self.planned_epochs(trial.config)
        except Exception:  # a config the trainable refused: it failed, and says so elsewhere
            planned = None
        planned = (getattr(trial, "last_result", None) or {}).get("rounds", planned)  # eval_every
        return "stopped early" if planned and self.epochs.get(trial.trial_id, 0) < planned \
            else "finished"

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        kind = self._end_kind(trial)
        self.ended[trial.trial_id] = kind
        log.info(f"trial {trial.trial_id} {kind}: {self._result_words(trial.trial_id)}")

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self.ended[trial.trial_id] = "failed"
        where = getattr(trial, "error_file", None) or getattr(trial, "path", "")
        log.warning(f"trial {trial.trial_id} failed after {self.epochs.get(trial.trial_id, 0)} "
                    f"epoch(s); its error is in {where} and in its MLflow run")

    def _result_words(self, trial_id: str) -> str:
        epochs = self.epochs.get(trial_id, 0)
        best = self.best.get(trial_id)
        if best is None:
            return f"{epochs} epoch(s), no {self.label}"
        return f"{epochs} epoch(s), best {self.label} {best[0]:.4f} (epoch {best[1]})"

