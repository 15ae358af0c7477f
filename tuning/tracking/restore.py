"""Reconciling a restored sweep's MLflow runs with Ray Tune's saved state, which trails what MLflow
already holds by up to Ray's snapshot period (~10 s) (a mixin of ``MlflowTrialLogger``):

- a run whose trial Ray never recorded (started after Ray's last snapshot; Ray samples a
  replacement) is an orphan: tagged ``ORPHAN``, ended KILLED and deleted (MLflow keeps deleted
  runs restorable), so counts, ``best`` and reports never see it;
- a trial Ray restored as ended gets its run ended with Ray's status and last result;
- a trial Ray runs again from an older checkpoint finds its run (``MlflowTrialLogger``): steps
  the run already holds are not logged again (per metric), and a FINISHED run is not reopened.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from mlflow.entities import Metric, RunTag

from tuning.tracking.names import END_REASON, KIND, ORPHAN, PARENT, RAY_EXPERIMENT, TRIAL_ID
from tuning.tracking.records import metrics_of
from tuning.tracking.store import runs_where

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RestoredTrial:
    """What the writer thread needs of a Ray trial, copied in Ray's thread (Ray keeps changing
    the live object)."""

    trial_id: str
    status: str
    config: dict
    last_result: dict

    @classmethod
    def of(cls, trial) -> "RestoredTrial":
        return cls(trial.trial_id, trial.status, dict(trial.config), dict(trial.last_result or {}))


class RestoreReconciler:
    """The reconciling half of ``MlflowTrialLogger``: it uses the logger's ``client``,
    ``experiment_id``, ``parent_run_id``, ``ray_experiment``, ``_resolve_run``, ``_log_result``
    and ``_end_of``."""

    def _reconcile(self, restored: dict[str, "RestoredTrial"]) -> None:
        """See the module docstring. ``restored``: what Ray brought back, by trial id."""
        runs = {}
        for run in runs_where(self.client, self.experiment_id, f"tags.`{KIND}` = 'trial'"):
            tags = run.data.tags
            mine = tags.get(RAY_EXPERIMENT) == self.ray_experiment if self.ray_experiment else \
                tags.get(PARENT) == self.parent_run_id  # a sweep started before this tag existed
            if not mine:
                continue  # another sweep's run in this experiment: never touched
            if tags.get(TRIAL_ID) in restored:
                runs[tags[TRIAL_ID]] = run
                continue
            self._orphan(run, "orphan: started after Ray's last saved state, so the resumed sweep "
                              "ran a new trial in its place")
        for trial in restored.values():
            if trial.status not in ("TERMINATED", "ERROR"):
                continue  # Ray runs it again: its hooks bring the run up to date
            run = runs.get(trial.trial_id)
            if run is not None and run.info.status in ("FINISHED", "FAILED"):
                continue
            # Ray saw it end, MLflow did not (the driver died with the writes queued)
            run_id = self._resolve_run(trial)
            last = trial.last_result
            if "epoch" in last:
                step = int(last["epoch"])
                self._log_result(run_id, trial.trial_id, [
                    Metric(k, v, int(time.time() * 1000), step) for k, v in metrics_of(last).items()], [])
            status, reason = ("FAILED", "error") if trial.status == "ERROR" else self._end_of(trial)
            self.client.set_tag(run_id, END_REASON, reason)
            self.client.set_terminated(run_id, status)

    def _orphan(self, run, reason: str) -> None:
        """End (KILLED), tag (``ORPHAN``) and delete the run of a trial Ray never recorded."""
        run_id = run.info.run_id
        self.client.log_batch(run_id, tags=[RunTag(ORPHAN, "true"), RunTag(END_REASON, reason)])
        if run.info.status == "RUNNING":
            self.client.set_terminated(run_id, "KILLED")
        self.client.delete_run(run_id)
        log.warning("MLflow: run %s of trial %s, which Ray never recorded, was ended and deleted "
                    "(tag %s)", run_id, run.data.tags.get(TRIAL_ID), ORPHAN)

    def orphan_earlier_runs(self) -> int:
        """A sweep whose driver stopped before Ray saved any state starts its trials again, so
        every trial run already under its parent run belongs to a trial Ray never recorded: each
        is made an orphan (``_orphan``), and the sweep ends with exactly its own trials' runs.
        Returns how many."""
        earlier = [run for run in runs_where(self.client, self.experiment_id, f"tags.`{KIND}` = 'trial'")
                   if run.data.tags.get(PARENT) == self.parent_run_id]
        for run in earlier:
            self._orphan(run, "orphan: its sweep stopped before Ray saved any state, and the "
                              "resumed sweep started its trials again")
        return len(earlier)
