"""The Ray Tune callback that logs every trial of a sweep as a nested MLflow run of the sweep's
parent run (``MlflowTrialLogger``), and PBT/PB2 clones into the lineage of a trial's run."""

from __future__ import annotations

import json
import logging
import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable, Optional

from mlflow.entities import Metric, RunTag
from mlflow.tracking import MlflowClient
from ray.tune import Callback
from trainables.registry import ONE_STAGE

import tuning.credentials as credentials
from tuning.tracking.names import (CONFIG, END_REASON, ERROR, KIND, LINEAGE_FILE, MAX_TAG, PARENT,
                                   PBT_CHANGES, PBT_CLONED_AT_EPOCH, PBT_CLONED_FROM,
                                   PBT_CLONED_FROM_RUN, PBT_CLONES, PBT_CONFIG, RAY_EXPERIMENT,
                                   SWEEP, TRAINABLE, TRIAL_ID)
from tuning.tracking.records import metrics_of, params_of
from tuning.tracking.restore import RestoreReconciler, RestoredTrial
from tuning.tracking.store import client_for, runs_where
from tuning.tracking.writer import OrderedWriter

log = logging.getLogger(__name__)


class MlflowTrialLogger(OrderedWriter, RestoreReconciler, Callback):
    """Logs every Ray Tune trial as a nested MLflow run of the sweep's parent run.

    Runs in the driver, so only one process writes to the store (no SQLite lock contention).
    Picklable (Ray saves callbacks with the experiment state): it keeps only the URI and ids and
    rebuilds the client and the trial→run map after a restore, by searching runs by their
    trial-id tag.

    Ray's hooks never wait on MLflow: they put writes in an ordered queue that one writer thread
    delivers (``tuning.tracking.writer.OrderedWriter``). A write that fails (a server that is down
    or silent) stays at the head of the queue and is tried again every ``RETRY_AFTER_S`` seconds
    on that timer, whether or not trials report anything meanwhile, so a driver killed later has
    lost only what was still undeliverable.

    A restored sweep (``expect_restore``) is reconciled with Ray's saved state before anything
    else is written (``tuning.tracking.restore.RestoreReconciler``): orphan runs are deleted, runs
    of trials Ray saw end are ended, and a trial Ray runs again from an older checkpoint does not
    log the steps its run already holds.
    """

    OPEN = "open"  # pseudo-method: just find or create the trial's run
    _live: dict[str, "MlflowTrialLogger"] = {}  # sweep name -> the instance Ray is calling
    _restoring: set[str] = set()  # sweeps whose next Ray setup is a restore

    @classmethod
    def live(cls, sweep_name: str) -> Optional["MlflowTrialLogger"]:
        """The instance Ray used for ``sweep_name`` in this process (after a restore, Ray uses the
        copy saved with the experiment, not the one the runner built)."""
        return cls._live.get(sweep_name)

    @classmethod
    def expect_restore(cls, sweep_name: str) -> None:
        """The next experiment Ray sets up for ``sweep_name`` is a restore: reconcile MLflow with
        the trials Ray brings back before anything else is written."""
        cls._restoring.add(sweep_name)

    def setup(self, **info):
        MlflowTrialLogger._live[self.sweep_name] = self
        self._reconcile_due = self.sweep_name in MlflowTrialLogger._restoring
        MlflowTrialLogger._restoring.discard(self.sweep_name)

    def __init__(self, uri: str, experiment_id: str, parent_run_id: str,
                 resolve_config: Callable[[dict], dict], sweep_name: str):
        self.uri = uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.resolve_config = resolve_config
        self.sweep_name = sweep_name
        self.ray_experiment = uuid.uuid4().hex  # see RAY_EXPERIMENT
        self.failed_writes = 0
        self.delayed_writes = 0
        self._init_runtime()

    def _init_runtime(self) -> None:
        """What lives only in this process: the client, the caches, the queue and its writer."""
        self._client: Optional[MlflowClient] = None
        self._run_ids: dict[str, str] = {}
        self._logged_before: dict[str, dict[str, int]] = {}  # trial -> metric -> last step an earlier driver logged
        self._init_queue()
        self._reconcile_due = False
        self.skipped_steps = 0  # metric values not logged again after a restore

    def __getstate__(self):
        keep = ("uri", "experiment_id", "parent_run_id", "resolve_config", "sweep_name",
                "ray_experiment", "failed_writes", "delayed_writes")
        state = {k: self.__dict__.get(k) for k in keep}
        # no password in Ray's saved state: a restored logger gets it back from memory or
        # MLFLOW_TRACKING_URI (client_for -> credentials.reveal)
        state["uri"] = credentials.redact(credentials.reveal(self.uri))
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._init_runtime()

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = client_for(self.uri)
        return self._client

    # -- one queued write, made in the writer thread (OrderedWriter)
    def _deliver(self, entry: tuple) -> Optional[str]:
        """``method``: a client method's name, OPEN, or one of ours taking the run id first."""
        trial, method, args, kwargs, _ = entry
        try:
            if trial is None:
                method(*args, **kwargs)
                return None
            run_id = self._resolve_run(trial)
            if callable(method):
                method(run_id, *args, **kwargs)
            elif method != self.OPEN:
                getattr(self.client, method)(run_id, *args, **kwargs)
            return None
        except Exception as exc:  # tracking must never stop training
            return (str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)

    def _resolve_run(self, trial) -> str:
        """The trial's run id: cached, found by its trial-id tag, or created. Raises if the
        store cannot be reached."""
        run_id = self._run_ids.get(trial.trial_id)
        if run_id:
            return run_id
        found = runs_where(self.client, self.experiment_id, f"tags.`{TRIAL_ID}` = '{trial.trial_id}'")
        if found:
            run = found[0]
            run_id = run.info.run_id
            # an earlier driver logged these: a trial Ray runs again from an older checkpoint
            # reports them again, and they are not logged twice
            self._logged_before[trial.trial_id] = {
                key: max(m.step for m in self.client.get_metric_history(run_id, key))
                for key in run.data.metrics}
            # KILLED (the driver went down) continues; a FINISHED run keeps its status while Ray
            # re-runs a trial its saved state had not seen end
            if run.info.status not in ("RUNNING", "FINISHED"):
                self.client.update_run(run_id, status="RUNNING")
            if not run.data.params:  # created, then the store failed before its params
                self.client.log_batch(run_id, params=params_of(self.resolve_config(trial.config)))
        else:
            config = self.resolve_config(trial.config)
            run = self.client.create_run(
                self.experiment_id, run_name=f"{config['trainable']}-{trial.trial_id}",
                tags={KIND: "trial", SWEEP: self.sweep_name, TRIAL_ID: trial.trial_id,
                      RAY_EXPERIMENT: self.ray_experiment, PARENT: self.parent_run_id,
                      TRAINABLE: config["trainable"],
                      CONFIG: json.dumps(config, sort_keys=True)[:MAX_TAG],
                      **({"tunebert.preset": config["preset"]} if config.get("preset") else {})})
            run_id = run.info.run_id
            self.client.log_batch(run_id, params=params_of(config))
        self._run_ids[trial.trial_id] = run_id
        return run_id

    def _log_result(self, run_id: str, trial_id: str, metrics: list, tags: list) -> None:
        before = self._logged_before.get(trial_id, {})
        fresh = [m for m in metrics if m.step > before.get(m.key, 0)]
        self.skipped_steps += len(metrics) - len(fresh)
        self.client.log_batch(run_id, metrics=fresh, tags=tags)

    # -- how a trial ended
    def _end_of(self, trial) -> tuple[str, str]:
        """The MLflow status and end reason of a trial Ray ended without an error."""
        last = trial.last_result or {}
        if "epoch" not in last:  # stopped (time budget, interruption) before its first report
            return "KILLED", "stopped before it reported an epoch"
        config = self.resolve_config(trial.config)
        total = config.get("epochs") if config.get("trainable") in ONE_STAGE else \
            (config["epochs"] + (0 if config.get("mode") == "joint" else config.get("contrastive_epochs", 0)))
        total = last.get("rounds", total)  # with eval_every a trial counts (and stops after) rounds
        return "FINISHED", ("completed" if last.get("epoch") == total
                            else "stopped early (scheduler or time budget)")

    # -- Ray hooks
    def on_step_begin(self, iteration, trials, **info):
        if self._reconcile_due:  # the first step after a restore: Ray's trials are all back
            self._reconcile_due = False
            self._call(None, self._reconcile, {t.trial_id: RestoredTrial.of(t) for t in trials})

    def on_trial_start(self, iteration, trials, trial, **info):
        self._call(trial, self.OPEN)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in metrics_of(result).items()]
        tags = [RunTag("tunebert.node_ip", str(result.get("node_ip", ""))),
                RunTag("tunebert.node_id", str(result.get("node_id", "")))]
        self._call(trial, self._log_result, trial.trial_id, metrics, tags)

    def on_trial_complete(self, iteration, trials, trial, **info):
        status, reason = self._end_of(trial)
        self._call(trial, "set_tag", END_REASON, reason)
        self._call(trial, "set_terminated", status)

    def on_trial_error(self, iteration, trials, trial, **info):
        text = ""
        if trial.error_file and Path(trial.error_file).is_file():
            text = Path(trial.error_file).read_text(errors="replace")
            self._call(trial, "log_artifact", trial.error_file)
        self._call(trial, "set_tag", ERROR, _error_summary(text)[:MAX_TAG])
        self._call(trial, "set_tag", END_REASON, "error")
        self._call(trial, "set_terminated", "FAILED")

    def on_experiment_end(self, trials, **info):
        pending = self.pending_writes()
        if pending:
            log.warning("MLflow: %d write(s) not delivered yet", pending)

    # -- PBT/PB2 lineage
    def record_clone(self, trial, donor, event: dict) -> None:
        """``trial`` now trains from ``donor``'s checkpoint with a new config (``event`` from
        ``tuning.sweep.pbt.clone_event``). Its run keeps its params (the initial config) and its whole
        metric history; the clone goes into tags (the latest) and LINEAGE_FILE (all of them)."""
        self._call(trial, self._write_clone, RestoredTrial.of(donor), event)

    def _write_clone(self, run_id: str, donor, event: dict) -> None:
        event = {**event, "donor_run_id": self._resolve_run(donor)}
        history = self._lineage(run_id)
        if not history or history[-1].get("time") != event["time"]:  # a retried write appends once
            history.append(event)
        self.client.log_text(run_id, json.dumps(history, indent=2, sort_keys=True), LINEAGE_FILE)
        tags = {PBT_CLONED_FROM: event["donor_trial_id"], PBT_CLONED_FROM_RUN: event["donor_run_id"],
                PBT_CLONED_AT_EPOCH: str(event["donor_epoch"]), PBT_CLONES: str(len(history)),
                PBT_CHANGES: json.dumps(event["changes"], sort_keys=True)[:MAX_TAG],
                PBT_CONFIG: json.dumps(event["config"], sort_keys=True)[:MAX_TAG]}
        self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def _lineage(self, run_id: str) -> list:
        """The clones recorded so far in the run's LINEAGE_FILE ([] if none)."""
        if not any(a.path == LINEAGE_FILE for a in self.client.list_artifacts(run_id)):
            return []
        with tempfile.TemporaryDirectory() as folder:
            return json.loads(Path(self.client.download_artifacts(run_id, LINEAGE_FILE, folder)).read_text())


def record_clone(sweep_name: str, trial, donor, event: dict) -> None:
    """The PBT/PB2 scheduler's ``on_clone`` (bound to the sweep with functools.partial, so it
    pickles with the scheduler): hands the clone to the MLflow logger Ray is calling."""
    live = MlflowTrialLogger.live(sweep_name)
    if live is None:
        log.warning("no MLflow logger for sweep %r: the clone of %s into %s is not recorded",
                    sweep_name, donor.trial_id, trial.trial_id)
        return
    live.record_clone(trial, donor, event)


def _error_summary(text: str) -> str:
    """The last line of a traceback that names the exception, e.g. 'NonFiniteLossError: ...'."""
    lines = [l.strip() for l in text.strip().splitlines() if l.strip()]
    for line in reversed(lines):
        if "Error" in line.split(":")[0] or "Exception" in line.split(":")[0]:
            return line
    return lines[-1] if lines else "unknown error"
