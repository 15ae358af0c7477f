"""Everything MLflow. The only module in the project that imports mlflow, but for
``tuning.serve.mlflow_model``: the pyfunc class MLflow imports when it loads a logged model (and
``tuning/serve/mlflow_model_code.py``, the file a logged model runs to name that class).

Layout: one experiment per sweep (named after it); a parent run for the sweep (tag
``tunebert.kind=sweep``) and one nested child run per trial (``tunebert.kind=trial``, tagged with
its Ray trial id). A trial that is retried or resumed finds its run again by that tag and keeps
logging into it, so no trial ever gets a second run. A standalone training run has
``tunebert.kind=train``.

Tracking must never kill or stall training: the sweep callback only queues its writes; one writer
thread delivers them in order, keeps those that fail (a server that is down or silent) and tries
again on a timer; the number of writes that were delayed is recorded on the parent run. A resumed
sweep is reconciled with Ray Tune's saved state (see ``MlflowTrialLogger``).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional
from urllib.parse import urlencode

from mlflow.entities import Metric, Param, RunTag, ViewType
from mlflow.tracking import MlflowClient
from ray.tune import Callback

import tuning.credentials as credentials
from trainables.errors import UserError
from trainables.model_files import ENSEMBLE_FILE, MODEL_FILE, STATE_FILE
from trainables.registry import ranked_metric
from tuning.config import resolve_tracking_uri
from tuning.tracking.names import ARTIFACT, KIND, RUNS_VIEW_QUERY, TEXT_COLUMN

log = logging.getLogger(__name__)
for _noisy in ("mlflow", "alembic"):
    logging.getLogger(_noisy).setLevel(logging.WARNING)

SWEEP = "tunebert.sweep"
TRIAL_ID = "tunebert.trial_id"
CONFIG = "tunebert.config"
TRAINABLE = "tunebert.trainable"
PARENT = "mlflow.parentRunId"
RUN_NAME = "mlflow.runName"
ERROR = "tunebert.error"
END_REASON = "tunebert.end_reason"
# the Ray Tune experiment a trial run belongs to (a uuid the pickled MlflowTrialLogger carries):
# reconciling a restore touches only that experiment's runs
RAY_EXPERIMENT = "tunebert.ray_experiment"
ORPHAN = "tunebert.orphan"  # a run of a trial Ray never recorded (see MlflowTrialLogger); deleted
# PBT/PB2 lineage of a trial's run (see MlflowTrialLogger.record_clone): the latest clone in tags,
# every clone in the run's LINEAGE_FILE artifact
PBT_CLONED_FROM = "tunebert.pbt.cloned_from"  # the donor's Ray trial id
PBT_CLONED_FROM_RUN = "tunebert.pbt.cloned_from_run"  # the donor's MLflow run id
PBT_CLONED_AT_EPOCH = "tunebert.pbt.cloned_at_epoch"  # the donor checkpoint's epoch
PBT_CHANGES = "tunebert.pbt.changes"  # JSON {param: {old, donor, new, op}}
PBT_CONFIG = "tunebert.pbt.config"  # JSON: the config the trial trains with now
PBT_CLONES = "tunebert.pbt.clones"  # how many times the trial was cloned into
LINEAGE_FILE = "pbt_lineage.json"

# Ray's bookkeeping keys in a result dict: not metrics of the model.
RAY_RESULT_KEYS = {
    "epoch", "timestamp", "pid", "done", "time_since_restore", "iterations_since_restore",
    "time_this_iter_s", "date", "hostname", "node_ip", "trial_id", "config", "experiment_tag",
    "checkpoint_dir_name", "should_checkpoint", "training_iteration", "experiment_id", "node_id",
}
# A dead or silent tracking server must not stall anyone: one request gives up after ~10 s
# (a 5 s connect/read timeout, tried twice, no backoff sleep between: MLflow 3.x reads these
# variables at every request; its own defaults wait minutes). The sweep's writer thread then
# waits RETRY_AFTER_S seconds before the next attempt while writes queue up.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "5", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0", "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0"}
RETRY_AFTER_S = 10.0


def bound_http_waits() -> None:
    """Apply HTTP_DEFAULTS unless the user set them (MLflow's own defaults wait minutes)."""
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
SECRET_WORDS = ("password", "passwd", "secret", "token", "api_key", "apikey", "credential")
MAX_TAG = 5000


class TrackingError(UserError):
    """An MLflow store or sweep that cannot be found or used."""


def redact(text: str) -> str:
    """Hide a password in a URI such as postgresql://user:pw@host/db (``tuning.credentials``)."""
    return credentials.redact(text)


def is_local_store(uri: str) -> bool:
    """A store only this machine can write (SQLite or a plain folder), as opposed to a server."""
    return uri.startswith(("sqlite:", "file:", "/", ".")) or "://" not in uri


def client_for(uri: str) -> MlflowClient:
    uri = credentials.reveal(uri)  # a masked URI read back from saved state gets its password
    if not uri.startswith("sqlite:///"):
        return MlflowClient(tracking_uri=uri)
    db = Path(uri[len("sqlite:///"):])
    db.parent.mkdir(parents=True, exist_ok=True)
    # MLflow creates a new SQLite store's tables when it first opens it, without a lock: two
    # processes opening the same new file at once (two `tunebert train` side by side) both try,
    # and one dies on "table experiments already exists". Opening under a lock file beside the
    # database makes the second wait until the first has created them.
    with open(db.with_name(db.name + ".init-lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return MlflowClient(tracking_uri=uri)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def metrics_of(result: dict) -> dict[str, float]:
    """The model's metrics in a Ray result: numeric, finite-or-not, minus Ray's bookkeeping."""
    return {k: float(v) for k, v in result.items()
            if k not in RAY_RESULT_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool)}


def params_of(config: dict) -> list[Param]:
    return [Param(k, redact(str(v))[:6000]) for k, v in sorted(config.items())
            if not any(word in k.lower() for word in SECRET_WORDS)]


# --------------------------------------------------------------------------- experiments and sweep runs


def ensure_experiment(client: MlflowClient, name: str, artifact_location: Optional[str],
                      description: Optional[str] = None, uid: Optional[str] = None) -> str:
    """The id of experiment ``name``, created (or restored) if needed, and shown by the MLflow UI
    as a runs table (``show_as_runs``); ``description``: its note (``describe``).

    ``uid``: the sweep that records there (``SweepConfig.uid``). A new experiment is created with
    it as its ``SWEEP_UID`` tag, in the same request, and an experiment another sweep holds is
    refused: two new sweeps of one name that start at the same moment from different sweep
    folders both pass ``claim_experiment`` (no experiment yet), and the second would otherwise
    record into the first one's parent run."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(
                name, artifact_location=artifact_location,
                tags={SWEEP: name, EXPERIMENT_KIND: RUNS_VIEW,
                      NOTE: description or f"{OUR_NOTE} {name}: one child run per trial",
                      **({SWEEP_UID: uid} if uid else {})})
        except MlflowException:
            experiment = client.get_experiment_by_name(name)  # created meanwhile by another driver?
            if experiment is None:
                raise
    owner = experiment.tags.get(SWEEP_UID)
    if uid and owner and owner != uid:
        raise TrackingError(
            f"MLflow experiment {name!r} belongs to another sweep of the same name (uid {owner}; "
            f"this one is {uid}), started moments ago from another sweep folder: two sweeps in one "
            f"experiment would be ranked together. Choose another --name.")
    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
    show_as_runs(client, experiment)
    if description:
        describe(client, experiment, description)
    return experiment.experiment_id


# How the MLflow UI shows an experiment. MLflow 3.x UIs ask which kind an experiment is and keep
# the answer in the tag EXPERIMENT_KIND (the UI writes it itself): RUNS_VIEW is its "Machine
# learning" kind (the runs table), "genai_development" its traces view. Without the tag, 3.x asks
# on every visit; up to 3.16 or so it picked the view from the tag. MLflow 3.17 picks the view
# from the browser's workflow toggle instead, which a link's query RUNS_VIEW_QUERY
# (``tuning.tracking.names``) sets, for the page it opens (``link_report``, ``tuning.tracking.ui``).
EXPERIMENT_KIND = "mlflow.experimentKind"
RUNS_VIEW = "custom_model_development"
NOTE = "mlflow.note.content"  # the Markdown description the UI shows for an experiment or run
OUR_NOTE = "tunebert sweep"  # how every experiment description tunebert writes starts
# a kind the UI sets on its own (inferred) or that says nothing: ours replaces it; a kind someone
# chose in the UI stays
UNCHOSEN_KINDS = ("", "no_inferred_type", "genai_development_inferred",
                  "custom_model_development_inferred")


def show_as_runs(client: MlflowClient, experiment) -> None:
    """Tag ``experiment`` (an MLflow Experiment) with the runs-table kind unless someone chose
    another kind for it in the UI."""
    if experiment.tags.get(EXPERIMENT_KIND, "") in UNCHOSEN_KINDS:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND, RUNS_VIEW)


def describe(client: MlflowClient, experiment, text: str) -> None:
    """Set the experiment's description to ``text`` unless someone wrote their own there."""
    current = experiment.tags.get(NOTE, "")
    if current != text and (not current.strip() or current.startswith(OUR_NOTE)):
        client.set_experiment_tag(experiment.experiment_id, NOTE, text[:MAX_TAG])


def sweep_description(name: str, metric: str = "val_accuracy", mode: str = "max") -> str:
    """How to read sweep ``name`` in the MLflow UI (Markdown, the experiment's description)."""
    ranked = ranked_metric(metric)
    better = "higher" if mode == "max" else "lower"
    return (
        f"{OUR_NOTE} **{name}**: a hyperparameter search of BERT text classifiers "
        f"(Ray Tune + Optuna).\n\n"
        f"- **The sweep** is the run named `{name}` (tag `{KIND}` = `sweep`): the sweep's settings "
        f"as parameters; when it ends, its outcome as metrics (`best_{metric}`, `trials_finished`, "
        f"...), the best checkpoint and `best_config.yaml` as artifacts; after "
        f"`tunebert report {name}`, the HTML report under `report/report.html` (linked from the "
        f"run's description).\n"
        f"- **The trials** are its child runs (expand the sweep's row with its + in the runs "
        f"table, or search ``tags.`{KIND}` = 'trial'``): one run per trial, its config as "
        f"parameters, one metric step per epoch.\n"
        f"- **Ranking**: trials are ranked by `{ranked}` ({metric} at the trial's best epoch, "
        f"{better} is better); only FINISHED trials count (sort the table by that column).\n"
        f"- **The best config**: `tunebert best {name}` (`-o best.yaml` writes it, `--top 5` "
        f"lists the leaders); `tunebert train --from-sweep {name}` retrains it and scores it on "
        f"the test split. Add the sweep's `--storage` or `--tracking-uri` when it used its own.")


def prepare_for_ui(uri: str, sweep_name: str) -> tuple[str, str, str]:
    """Make sweep ``sweep_name``'s experiment read well in the MLflow UI (the runs-table kind and
    the description, also for sweeps recorded before tunebert set them). Returns its experiment
    id, the metric key its trials are ranked by and the mode ('max' or 'min')."""
    client, experiment = find_sweep_experiment(uri, sweep_name)
    parent = _runs(client, experiment.experiment_id, f"tags.`{KIND}` = 'sweep'")
    params = parent[0].data.params if parent else {}
    metric, mode = params.get("metric", "val_accuracy"), params.get("mode", "max")
    try:
        show_as_runs(client, experiment)
        describe(client, experiment, sweep_description(sweep_name, metric, mode))
    except Exception as exc:  # a server this user may only read: the links work all the same
        log.warning("could not tag MLflow experiment %s for the UI: %s", experiment.experiment_id,
                    str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)
    return experiment.experiment_id, ranked_metric(metric), mode


SWEEP_RUN_NOTE = ("The sweep: its trials are this run's child runs (expand this row in the "
                  "experiment's runs table); the experiment's description says how to read them.")
REPORT_LINK = "\n\n**Report**: "  # where the report's link starts in the sweep run's description


def link_report(uri: str, run_id: str, artifact_path: str, local_path: str) -> None:
    """Link the report logged at ``artifact_path`` of sweep run ``run_id`` from the run's
    description (a link inside the MLflow UI, so it works on any host and port), replacing the
    link of an earlier report."""
    client = client_for(uri)
    run = client.get_run(run_id)
    text = run.data.tags.get(NOTE, "").split(REPORT_LINK)[0]
    page = (f"#/experiments/{run.info.experiment_id}/runs/{run_id}/artifacts/{artifact_path}?"
            f"{urlencode(RUNS_VIEW_QUERY)}")
    text += (f"{REPORT_LINK}[{artifact_path}]({page}) (artifact of this run, written "
             f"{time.strftime('%Y-%m-%d %H:%M')}); on disk: `{local_path}`")
    client.set_tag(run_id, NOTE, text.lstrip()[:MAX_TAG])


def _runs(client: MlflowClient, experiment_id: str, filter_string: str,
          order_by: Optional[list[str]] = None) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=filter_string,
                                  run_view_type=ViewType.ACTIVE_ONLY, max_results=1000,
                                  order_by=order_by, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def start_sweep_run(uri: str, sweep_name: str, settings: dict, artifact_location: Optional[str],
                    uid: Optional[str] = None) -> tuple[str, str]:
    """(experiment id, parent run id); a resumed sweep gets its existing parent run back. ``uid``:
    the sweep's, which must own the experiment (``ensure_experiment``)."""
    client = client_for(uri)
    experiment_id = ensure_experiment(
        client, sweep_name, artifact_location,
        sweep_description(sweep_name, settings.get("metric", "val_accuracy"), settings.get("mode", "max")),
        uid=uid)
    existing = _runs(client, experiment_id, f"tags.`{KIND}` = 'sweep'")
    if existing:
        run_id = existing[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        client.set_tag(run_id, "tunebert.resumed_at", time.strftime("%Y-%m-%d %H:%M:%S"))
        return experiment_id, run_id
    run = client.create_run(experiment_id, run_name=sweep_name,
                            tags={KIND: "sweep", SWEEP: sweep_name, NOTE: SWEEP_RUN_NOTE})
    client.log_batch(run.info.run_id, params=params_of(_flatten(settings)))
    return experiment_id, run.info.run_id


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def finish_sweep_run(uri: str, run_id: str, *, status: str, summary: dict,
                     best_checkpoint: Optional[str], extra_files: Iterable[str] = ()) -> None:
    client = client_for(uri)
    numeric = {k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in numeric.items()],
                     tags=[RunTag(f"tunebert.{k}", str(v)[:MAX_TAG]) for k, v in summary.items()
                           if k not in numeric])
    if best_checkpoint:
        client.log_artifacts(run_id, best_checkpoint, artifact_path="best_checkpoint")
        label_map = Path(best_checkpoint) / "label_map.json"
        if label_map.is_file():
            client.log_artifact(run_id, str(label_map))
    for path in extra_files:
        client.log_artifact(run_id, path)
    client.set_terminated(run_id, status)


def close_open_trial_runs(uri: str, experiment_id: str, status: str = "KILLED") -> int:
    """Mark child runs still RUNNING (their trial did not end in this process) as ``status``."""
    client = client_for(uri)
    open_runs = _runs(client, experiment_id,
                      f"tags.`{KIND}` = 'trial' and attributes.status = 'RUNNING'")
    for run in open_runs:
        client.set_tag(run.info.run_id, END_REASON, "sweep stopped before the trial ended")
        client.set_terminated(run.info.run_id, status)
    return len(open_runs)


# --------------------------------------------------------------------------- the Ray Tune callback


class MlflowTrialLogger(Callback):
    """Logs every Ray Tune trial as a nested MLflow run of the sweep's parent run.

    Runs in the driver, so only one process writes to the store (no SQLite lock contention).
    Picklable (Ray saves callbacks with the experiment state): it keeps only the URI and ids and
    rebuilds the client and the trial→run map after a restore, by searching runs by their
    trial-id tag.

    Ray's hooks never wait on MLflow: they put writes in an ordered queue that one writer thread
    delivers. A write that fails (a server that is down or silent) stays at the head of the queue
    and is tried again every ``RETRY_AFTER_S`` seconds on that timer, whether or not trials report
    anything meanwhile, so a driver killed later has lost only what was still undeliverable.

    A restored sweep (``expect_restore``) is reconciled with Ray's saved state, which trails what
    MLflow already holds by up to Ray's snapshot period (~10 s):

    - a run whose trial Ray never recorded (started after Ray's last snapshot; Ray samples a
      replacement) is an orphan: tagged ``ORPHAN``, ended KILLED and deleted (MLflow keeps
      deleted runs restorable), so counts, ``best`` and reports never see it;
    - a trial Ray restored as ended gets its run ended with Ray's status and last result;
    - a trial Ray runs again from an older checkpoint finds its run: steps the run already holds
      are not logged again (per metric), and a FINISHED run is not reopened as RUNNING.
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
        self._pending: deque = deque()
        self._lock = threading.Condition()
        self._writer: Optional[threading.Thread] = None
        self._retry_at = 0.0
        self._retry_every = RETRY_AFTER_S
        self._failures = 0  # failed deliveries so far; entries remember the count when queued
        self._outage = False
        self._stopped = False
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

    # -- delivery: an ordered queue and one writer thread
    def _call(self, trial, method, *args, **kwargs) -> None:
        """Queue one write for ``trial``'s run (``trial`` None: ``method`` takes no run id)."""
        with self._lock:
            self._pending.append((trial, method, args, kwargs, self._failures))
            self._lock.notify_all()
            if self._writer is None or not self._writer.is_alive():
                self._stopped = False
                self._writer = threading.Thread(target=self._write_loop, daemon=True,
                                                name=f"tunebert-mlflow-{self.sweep_name}")
                self._writer.start()

    def _write_loop(self) -> None:
        while True:
            with self._lock:
                while not self._stopped and (not self._pending or time.time() < self._retry_at):
                    self._lock.wait(None if not self._pending else max(0.0, self._retry_at - time.time()))
                if self._stopped:
                    return
                entry = self._pending[0]
            error = self._deliver(entry)  # outside the lock: it may wait on the network
            with self._lock:
                if error is None:
                    self._pending.popleft()
                    if entry[4] < self._failures:  # it waited out at least one failure
                        self.delayed_writes += 1
                    if self._outage and not self._pending:
                        self._outage = False
                        log.warning("MLflow reachable again: queued writes delivered")
                else:
                    if not self._outage:
                        log.warning("MLflow %s failed (%s); writes are queued and retried every "
                                    "%.0fs while training goes on",
                                    getattr(entry[1], "__name__", entry[1]), error, self._retry_every)
                    self._outage = True
                    self._failures += 1
                    self._retry_at = time.time() + self._retry_every
                self._lock.notify_all()

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

    def pending_writes(self) -> int:
        with self._lock:
            return len(self._pending)

    def flush_until(self, deadline_s: float) -> int:
        """Wait until the queued writes are delivered or ``deadline_s`` passes, retrying every
        2 s meanwhile; returns how many are still undelivered."""
        end = time.time() + deadline_s
        with self._lock:
            self._retry_every = min(RETRY_AFTER_S, 2.0)
            self._retry_at = min(self._retry_at, time.time())
            self._lock.notify_all()
            while self._pending and time.time() < end:
                self._lock.wait(min(0.5, max(0.0, end - time.time())))
            self.failed_writes = len(self._pending)
            return self.failed_writes

    def stop(self) -> None:
        """Stop the writer (after its current attempt); undelivered writes are dropped."""
        with self._lock:
            self._stopped = True
            self._lock.notify_all()

    def _resolve_run(self, trial) -> str:
        """The trial's run id: cached, found by its trial-id tag, or created. Raises if the
        store cannot be reached."""
        run_id = self._run_ids.get(trial.trial_id)
        if run_id:
            return run_id
        found = _runs(self.client, self.experiment_id, f"tags.`{TRIAL_ID}` = '{trial.trial_id}'")
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

    # -- reconciling a restored sweep with Ray's saved state
    def _reconcile(self, restored: dict[str, "_RestoredTrial"]) -> None:
        """See the class docstring. ``restored``: what Ray brought back, by trial id."""
        runs = {}
        for run in _runs(self.client, self.experiment_id, f"tags.`{KIND}` = 'trial'"):
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
        earlier = [run for run in _runs(self.client, self.experiment_id, f"tags.`{KIND}` = 'trial'")
                   if run.data.tags.get(PARENT) == self.parent_run_id]
        for run in earlier:
            self._orphan(run, "orphan: its sweep stopped before Ray saved any state, and the "
                              "resumed sweep started its trials again")
        return len(earlier)

    def _end_of(self, trial) -> tuple[str, str]:
        """The MLflow status and end reason of a trial Ray ended without an error."""
        last = trial.last_result or {}
        if "epoch" not in last:  # stopped (time budget, interruption) before its first report
            return "KILLED", "stopped before it reported an epoch"
        config = self.resolve_config(trial.config)
        total = config.get("epochs") if config.get("trainable") == "finetune" else \
            (config["epochs"] + (0 if config.get("mode") == "joint" else config.get("contrastive_epochs", 0)))
        return "FINISHED", ("completed" if last.get("epoch") == total
                            else "stopped early (scheduler or time budget)")

    # -- Ray hooks
    def on_step_begin(self, iteration, trials, **info):
        if self._reconcile_due:  # the first step after a restore: Ray's trials are all back
            self._reconcile_due = False
            self._call(None, self._reconcile, {t.trial_id: _RestoredTrial.of(t) for t in trials})

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
        self._call(trial, self._write_clone, _RestoredTrial.of(donor), event)

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
        import tempfile

        if not any(a.path == LINEAGE_FILE for a in self.client.list_artifacts(run_id)):
            return []
        with tempfile.TemporaryDirectory() as folder:
            return json.loads(Path(self.client.download_artifacts(run_id, LINEAGE_FILE, folder)).read_text())


@dataclass(frozen=True)
class _RestoredTrial:
    """What the writer thread needs of a Ray trial, copied in Ray's thread (Ray keeps changing
    the live object)."""

    trial_id: str
    status: str
    config: dict
    last_result: dict

    @classmethod
    def of(cls, trial) -> "_RestoredTrial":
        return cls(trial.trial_id, trial.status, dict(trial.config), dict(trial.last_result or {}))


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


# --------------------------------------------------------------------------- reading results


def find_sweep_experiment(uri: str, sweep_name: str):
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise TrackingError(
            f"no MLflow store at {uri[len('sqlite:///'):]} (so no sweep {sweep_name!r}). Pass the "
            f"--storage the sweep used, or --tracking-uri / MLFLOW_TRACKING_URI for a server.")
    client = client_for(uri)
    experiment = client.get_experiment_by_name(sweep_name)
    if experiment is None or experiment.lifecycle_stage == "deleted":
        names = sorted(e.name for e in client.search_experiments()
                       if e.tags.get(SWEEP))
        raise TrackingError(
            f"no sweep named {sweep_name!r} in the MLflow store {redact(uri)}; sweeps there: "
            f"{names or 'none'}. Check the name, or pass --tracking-uri / set MLFLOW_TRACKING_URI "
            f"to the store the sweep logged to.")
    return client, experiment


def trial_runs(uri: str, sweep_name: str) -> list:
    client, experiment = find_sweep_experiment(uri, sweep_name)
    return _runs(client, experiment.experiment_id, f"tags.`{KIND}` = 'trial'")


def sweep_run(uri: str, sweep_name: str):
    client, experiment = find_sweep_experiment(uri, sweep_name)
    runs = _runs(client, experiment.experiment_id, f"tags.`{KIND}` = 'sweep'")
    return runs[0] if runs else None


BENCH_JOB = "tunebert.bench_job"  # a benchmark job's key (tuning.results.jobs.job_key)


def finished_job(uri: str, experiment: str, job_key: str) -> Optional[dict]:
    """The latest metrics and wall seconds of a FINISHED run tagged ``BENCH_JOB = job_key`` in
    ``experiment``, or None: a benchmark run again skips the jobs it already finished."""
    client = client_for(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = _runs(client, found.experiment_id,
                 f"tags.`{BENCH_JOB}` = '{job_key}' and attributes.status = 'FINISHED'")
    if not runs:
        return None
    run = runs[0]
    return {"run_id": run.info.run_id, "metrics": dict(run.data.metrics),
            "seconds": (run.info.end_time - run.info.start_time) / 1000.0}


def unfinished_job(uri: str, experiment: str, job_key: str) -> Optional[str]:
    """The id of the latest run tagged ``BENCH_JOB = job_key`` in ``experiment`` that did not
    finish (RUNNING: its process was killed; KILLED: interrupted; FAILED), or None: a benchmark
    run again continues that run rather than starting a second one for the same job."""
    client = client_for(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = _runs(client, found.experiment_id,
                 f"tags.`{BENCH_JOB}` = '{job_key}' and attributes.status != 'FINISHED'",
                 order_by=["attributes.start_time DESC"])
    return runs[0].info.run_id if runs else None


def metric_history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client_for(uri).get_metric_history(run_id, key)]


def download_artifacts(uri: str, run_id: str, path: str, destination: str) -> str:
    return client_for(uri).download_artifacts(run_id, path, destination)


# --------------------------------------------------------------------------- standalone training runs


class _OwnRun:
    """A run this process opened itself and closes itself (training, selection, benchmark)."""

    client: MlflowClient
    run_id: str

    def log_artifacts(self, local_dir: str, artifact_path: Optional[str] = None) -> None:
        self.client.log_artifacts(self.run_id, local_dir, artifact_path)

    def log_artifact(self, path: str) -> None:
        self.client.log_artifact(self.run_id, path)

    def end(self, status: str = "FINISHED", error: Optional[str] = None) -> None:
        if error:
            self.client.set_tag(self.run_id, ERROR, error[:MAX_TAG])
        self.client.set_terminated(self.run_id, status)


class TrainRun(_OwnRun):
    """A run for one standalone training (``tunebert train``): params, per-epoch metrics, test."""

    def __init__(self, uri: str, experiment: str, config: dict, run_name: str,
                 tags: Optional[dict] = None):
        self.uri = uri
        self.client = client_for(uri)
        experiment_id = ensure_experiment(self.client, experiment, None)
        run = self.client.create_run(experiment_id, run_name=run_name,
                                     tags={KIND: "train", TRAINABLE: config["trainable"],
                                           CONFIG: json.dumps(config, sort_keys=True)[:MAX_TAG],
                                           **(tags or {})})
        self.run_id = run.info.run_id
        self.client.log_batch(self.run_id, params=params_of(config))
        self.logged_through, self.logged = 0, set()

    @classmethod
    def reopen(cls, uri: str, run_id: str) -> "TrainRun":
        """An unfinished run continued (a benchmark job resumed from its checkpoint): RUNNING
        again, its params and metrics kept. ``logged_through`` is the last epoch it holds
        metrics for, ``logged`` the names of the metrics it holds."""
        self = cls.__new__(cls)
        self.uri, self.client, self.run_id = uri, client_for(uri), run_id
        run = self.client.get_run(run_id)
        self.logged = set(run.data.metrics)
        if ERROR in run.data.tags:  # the error that stopped it is over once it goes on
            self.client.delete_tag(run_id, ERROR)
        self.logged_through = max((m.step for m in self.client.get_metric_history(run_id, "val_accuracy")),
                                  default=0)
        self.client.update_run(run_id, status="RUNNING")
        return self

    def log_metrics(self, metrics: dict, step: int) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step)
                                                   for k, v in metrics.items() if k != "epoch"])


# --------------------------------------------------------------------------- sweep reports


def artifact_paths(uri: str, run_id: str, path: Optional[str] = None) -> list[str]:
    """The artifact paths directly under ``path`` of a run ([] when there is nothing there)."""
    return [a.path for a in client_for(uri).list_artifacts(run_id, path)]



# --------------------------------------------------------------------------- final selection runs


def _batches(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


class SelectionRun(_OwnRun):
    """A ``tunebert select`` run (``tunebert.kind=selection``) in the sweep's experiment, nested
    under the sweep's parent run; the re-training runs of the selection are nested under it."""

    def __init__(self, uri: str, sweep_name: str, params: dict, run_name: str,
                 parent_run_id: Optional[str] = None, tags: Optional[dict] = None):
        self.uri = uri
        self.client, experiment = find_sweep_experiment(uri, sweep_name)
        run = self.client.create_run(
            experiment.experiment_id, run_name=run_name,
            tags={KIND: "selection", SWEEP: sweep_name,
                  **({PARENT: parent_run_id} if parent_run_id else {}), **(tags or {})})
        self.run_id = run.info.run_id
        self.log_params(params)

    def log_params(self, params: dict) -> None:
        for chunk in _batches(params_of(params), 100):  # MLflow takes at most 100 params a batch
            self.client.log_batch(self.run_id, params=chunk)

    def log_metrics(self, metrics: dict, step: int = 0) -> None:
        annotate_run(self.uri, self.run_id, metrics=metrics, step=step)

    def set_tags(self, tags: dict) -> None:
        annotate_run(self.uri, self.run_id, tags=tags)


def annotate_run(uri: str, run_id: str, *, metrics: Optional[dict] = None,
                 tags: Optional[dict] = None, step: int = 0) -> None:
    """Add metrics and tags to an existing (possibly finished) run."""
    client = client_for(uri)
    now = int(time.time() * 1000)
    metric_list = [Metric(k, float(v), now, step) for k, v in (metrics or {}).items()]
    tag_list = [RunTag(k, str(v)[:MAX_TAG]) for k, v in (tags or {}).items()]
    for chunk in _batches(metric_list, 1000):
        client.log_batch(run_id, metrics=chunk)
    for chunk in _batches(tag_list, 100):
        client.log_batch(run_id, tags=chunk)


def log_artifacts_to(uri: str, run_id: str, local_dir: str, artifact_path: Optional[str] = None) -> None:
    """Upload a folder to an existing (possibly finished) run."""
    client_for(uri).log_artifacts(run_id, local_dir, artifact_path)


# --------------------------------------------------------------------------- handed-over models
# A model folder (trainables.export) logged as an MLflow pyfunc model (tuning.serve.mlflow_model says
# why pyfunc), registered on request, and downloaded back for `tunebert predict`.

MODEL_TYPE = "tunebert-text-classifier"
# lineage tags of a logged model and of a registered model version
LINEAGE_KEYS = {"sweep": SWEEP, "trial_id": TRIAL_ID, "run_id": "tunebert.run_id",
                "data_fingerprint": "tunebert.data_fingerprint", "kind": "tunebert.model_kind",
                "data": "tunebert.data"}
EXAMPLE_TEXTS = ["wake me up at seven", "what's the weather like tomorrow"]
# what the model imports at load time; tunebert itself is not on PyPI: the model is loaded and
# served where tunebert is installed (`mlflow models serve --env-manager local`)
MODEL_REQUIREMENTS = ("mlflow", "torch", "transformers", "tokenizers", "safetensors", "numpy",
                      "pandas")
# the model's code, logged "from code" (a file MLflow copies into the model and runs when it loads
# it) rather than as a pickled object: a logged model holds no pickle
MODEL_CODE = Path(__file__).resolve().parents[1] / "serve" / "mlflow_model_code.py"


@dataclass(frozen=True)
class LoggedModelRef:
    """Where a logged model can be loaded from: ``runs:/<run id>/<name>``, its MLflow model id,
    and the registered model version, if it was registered."""

    uri: str
    model_id: str
    registered_name: Optional[str] = None
    registered_version: Optional[str] = None

    @property
    def registered_uri(self) -> Optional[str]:
        return (f"models:/{self.registered_name}/{self.registered_version}"
                if self.registered_version else None)


def lineage_tags(**values: Optional[str]) -> dict[str, str]:
    """Lineage tags (``LINEAGE_KEYS``: sweep, trial_id, run_id, data_fingerprint, kind, data),
    leaving out the unknown ones."""
    unknown = sorted(set(values) - set(LINEAGE_KEYS))
    if unknown:
        raise ValueError(f"unknown lineage field(s) {unknown}; known: {sorted(LINEAGE_KEYS)}")
    return {LINEAGE_KEYS[k]: str(v) for k, v in values.items() if v not in (None, "")}


def _process_tracking_uri(uri: str):
    """MLflow's model functions read the process-wide tracking URI: point it at ``uri`` while
    they run, then put back what was there (``MLFLOW_TRACKING_URI`` included)."""
    from contextlib import contextmanager

    import mlflow
    from mlflow.tracking._tracking_service import utils as tracking_utils

    @contextmanager
    def use():
        before, before_env = tracking_utils._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")
        mlflow.set_tracking_uri(credentials.reveal(uri))
        try:
            yield
        finally:
            mlflow.set_tracking_uri(before)
            if before_env is not None:
                os.environ["MLFLOW_TRACKING_URI"] = before_env

    return use()


def model_signature():
    """Input: one string column (a list of strings, or a DataFrame's ``text`` column); output:
    one label per text; params: ``proba`` (probabilities per label instead of labels) and
    ``batch_size``."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    # unnamed: a plain list of strings is a valid input too (a named column would refuse it)
    return ModelSignature(inputs=Schema([ColSpec("string")]), outputs=Schema([ColSpec("string")]),
                          params=ParamSchema([ParamSpec("proba", "boolean", False),
                                              ParamSpec("batch_size", "long", 64)]))


def _requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for name in MODEL_REQUIREMENTS:
        try:
            pins.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            pins.append(name)
    return pins


def log_model(uri: str, run_id: str, folder: str, name: str = "model", *,
              register_as: Optional[str] = None,
              lineage: Optional[dict] = None) -> LoggedModelRef:
    """Log the model folder ``folder`` as MLflow pyfunc model ``name`` of run ``run_id``
    (loadable as ``runs:/<run_id>/<name>``), with its signature and an input example; with
    ``register_as``, also register it as a new version of that registered model. ``lineage``
    (``lineage_tags``) tags the logged model and the model version."""
    from importlib.metadata import PackageNotFoundError, version

    import mlflow
    import pandas as pd
    from mlflow.models import Model

    client = client_for(uri)
    tags = {k: str(v)[:MAX_TAG] for k, v in (lineage or {}).items()}
    try:
        tunebert_version = version("tunebert")
    except PackageNotFoundError:
        tunebert_version = "unknown"
    with _process_tracking_uri(uri):
        # created here, in the run's experiment: runs:/<run id>/<name> finds it only there
        logged = client.create_logged_model(client.get_run(run_id).info.experiment_id,
                                            name=name, source_run_id=run_id, tags=tags,
                                            model_type=MODEL_TYPE)
        info = Model.log(
            artifact_path=None, name=name, flavor=mlflow.pyfunc, run_id=run_id,
            model_id=logged.model_id, python_model=str(MODEL_CODE),
            artifacts={ARTIFACT: str(folder)}, signature=model_signature(),
            input_example=pd.DataFrame({TEXT_COLUMN: EXAMPLE_TEXTS}),
            pip_requirements=_requirements(),
            metadata={"tunebert_version": tunebert_version,
                      "needs": "tunebert installed where the model is loaded"})
        ref = LoggedModelRef(f"runs:/{run_id}/{name}", info.model_id)
        if register_as:
            registered = mlflow.register_model(info.model_uri, register_as, tags=tags,
                                               await_registration_for=60)
            ref = LoggedModelRef(ref.uri, ref.model_id, register_as, str(registered.version))
    return ref


def download_model(model_uri: str, uri: Optional[str], destination: str) -> str:
    """Download the MLflow model at ``model_uri`` (``runs:/...``, ``models:/...``) from the store
    ``uri`` (default: ``$MLFLOW_TRACKING_URI``) into ``destination``; the path of the tunebert
    model folder inside it (an older run's ``model`` artifact is the folder itself)."""
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    from contextlib import nullcontext

    shown = redact(uri) if uri else os.environ.get("MLFLOW_TRACKING_URI", "MLflow's default store")
    try:
        # through the process-wide URI: MLflow 3 does not find a run's logged model from a
        # runs:/ URI with download_artifacts(tracking_uri=...)
        with _process_tracking_uri(uri) if uri else nullcontext():
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri,
                                                             dst_path=destination))
    except (MlflowException, OSError) as exc:
        reason = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        raise TrackingError(
            f"cannot download the model {model_uri} from the MLflow store {redact(shown)} "
            f"({redact(reason)}). Check the run id and model name (runs:/RUN_ID/model) or the "
            f"registered name and version (models:/NAME/VERSION), and --tracking-uri / "
            f"MLFLOW_TRACKING_URI.") from None
    candidates = [local]  # an older tunebert run's `model` artifact is the folder itself
    if (local / "MLmodel").is_file():
        from mlflow.models import Model

        artifacts = Model.load(str(local / "MLmodel")).flavors.get("python_function", {}) \
            .get("artifacts", {})
        if ARTIFACT in artifacts:
            candidates.insert(0, local / artifacts[ARTIFACT]["path"])
    for candidate in candidates:
        if any((candidate / name).is_file() for name in (MODEL_FILE, ENSEMBLE_FILE, STATE_FILE)):
            return str(candidate)
    raise TrackingError(f"{model_uri} is not a tunebert model: it holds no tunebert model folder "
                        f"(the artifact {ARTIFACT!r} of a pyfunc model, with {MODEL_FILE} or "
                        f"{ENSEMBLE_FILE})")


# --------------------------------------------------------------------------- checks before Ray starts
# (tuning.sweep.runner.prepare / run_sweep and the reading commands in tuning.cli)

SWEEP_UID = "tunebert.sweep_uid"  # experiment tag: which sweep (SweepConfig.uid) owns it


# Database stores MLflow opens through SQLAlchemy (``postgresql+psycopg2://...`` and the like)
DATABASE_SCHEMES = ("postgresql", "mysql", "mssql")
DATABASE_CONNECT_TIMEOUT_S = 5


def _dialect(uri: str) -> str:
    """``postgresql`` of ``postgresql+psycopg2://...``: the scheme without its driver."""
    return uri.split(":", 1)[0].split("+", 1)[0]


def probe_database(uri: str) -> None:
    """One connection to a database store, with a timeout where the driver takes one: MLflow's
    SQLAlchemy store retries a refused connection 10 times, ~100 s in all, before it says so."""
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    connect_args = ({"connect_timeout": DATABASE_CONNECT_TIMEOUT_S}
                    if _dialect(uri) in ("postgresql", "mysql") else {})
    engine = sqlalchemy.create_engine(uri, poolclass=NullPool, connect_args=connect_args)
    try:
        with engine.connect():
            pass
    finally:
        engine.dispose()


SQLITE_HEADER = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file


def refuse_non_sqlite_file(uri: str) -> None:
    """A ``sqlite:///`` store whose path holds something else than an SQLite database (a text
    file, a folder) is refused by name: SQLAlchemy only says "file is not a database", in a
    traceback. A missing or empty file is fine: MLflow creates the database in it."""
    if not uri.startswith("sqlite:///"):
        return
    path = Path(uri[len("sqlite:///"):].split("?")[0]).expanduser()
    fix = ("Point --tracking-uri (or MLFLOW_TRACKING_URI) at the mlflow.db file a sweep wrote, "
           "or at a new file for a new store, or leave it out for <storage>/mlflow.db")
    if path.is_dir():
        raise TrackingError(f"the MLflow store {uri} is a folder, not an SQLite database file. {fix}")
    try:
        with open(path, "rb") as f:
            head = f.read(len(SQLITE_HEADER))
    except FileNotFoundError:
        return
    except OSError as exc:
        raise TrackingError(f"cannot read the MLflow store {uri} ({exc.strerror or exc}). {fix}") from None
    if head and head != SQLITE_HEADER:
        raise TrackingError(f"the MLflow store {uri}: {path} is not an SQLite database (those begin "
                        f"with 'SQLite format 3'; it holds other data). {fix}")


def check_store(uri: str) -> None:
    """Refuse, within seconds, a tracking URI MLflow cannot use or a server that does not
    answer. Call ``bound_http_waits`` first (MLflow's own retries wait minutes); a database
    store gets one connection attempt first (``probe_database``). Local stores (SQLite, a
    folder) are not opened: they are created when first written; an SQLite path that holds
    something else is refused (``refuse_non_sqlite_file``)."""
    refuse_non_sqlite_file(uri)
    if is_local_store(uri):
        return
    try:
        if _dialect(uri) in DATABASE_SCHEMES:
            probe_database(credentials.reveal(uri))
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except Exception as exc:
        reason = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        if "unsupported URI" in reason or "registered" in reason or "plugin" in reason:
            raise TrackingError(
                f"--tracking-uri {redact(uri)} is not a store MLflow can use ({redact(reason)}). "
                f"Use http://HOST:PORT for an MLflow server, sqlite:///path/to/mlflow.db, "
                f"postgresql://USER@HOST/DB, or leave it out for the SQLite file under "
                f"--storage.") from None
        raise TrackingError(
            f"cannot reach the MLflow store {redact(uri)} ({redact(reason)}). Start the server, "
            f"or fix --tracking-uri / MLFLOW_TRACKING_URI.") from None


def reachable_store(tracking_uri: Optional[str], storage: str) -> str:
    """The MLflow store a command reads (``--tracking-uri``, else the SQLite file under
    ``--storage``), refused within seconds when MLflow cannot use or reach it (MLflow's own HTTP
    retries wait minutes)."""
    uri = resolve_tracking_uri(tracking_uri, Path(storage).expanduser().resolve())
    bound_http_waits()
    check_store(uri)
    return uri


def claim_experiment(uri: str, sweep_name: str, uid: Optional[str], *, resume: bool) -> None:
    """Refuse to record sweep ``uid`` in an experiment that holds another sweep of the same name:
    a name reused after its Ray folder was deleted (``best`` would rank both sweeps together), a
    deleted experiment (MLflow would bring its old runs back), or, on resume, an experiment
    tagged with another sweep's uid."""
    client = client_for(uri)
    experiment = client.get_experiment_by_name(sweep_name)
    if experiment is None:
        return
    where = f"MLflow experiment {sweep_name!r} (id {experiment.experiment_id}) in {redact(uri)}"
    if experiment.lifecycle_stage == "deleted":
        if resume:
            raise TrackingError(
                f"the {where} of this sweep is deleted. Restore it to continue the sweep "
                f"(`mlflow experiments restore --experiment-id {experiment.experiment_id}`), or "
                f"start a new sweep with another --name.")
        raise TrackingError(
            f"the {where} is deleted but still holds the runs of an earlier sweep of that name; "
            f"a new sweep would bring them back and mix them with its own. Choose another --name, "
            f"or remove the old runs for good first (`mlflow gc --backend-store-uri URI "
            f"--experiment-ids {experiment.experiment_id}`).")
    owner = experiment.tags.get(SWEEP_UID)
    if resume:
        if owner is not None and uid is not None and owner != uid:
            raise TrackingError(
                f"the {where} belongs to another sweep of the same name (uid {owner}, this one "
                f"is {uid}): resuming would merge the two. Resume with the --storage and "
                f"--tracking-uri this sweep started with.")
        return
    has_runs = bool(client.search_runs([experiment.experiment_id], max_results=1,
                                       run_view_type=ViewType.ALL))
    if owner is not None or has_runs:
        raise TrackingError(
            f"the {where} already holds an earlier sweep of that name whose Ray Tune folder is "
            f"gone, so it cannot be resumed; a new sweep there would be ranked together with it "
            f"by `tunebert best`. Choose another --name, or delete the old experiment for good "
            f"first (`mlflow experiments delete`, then `mlflow gc`).")


def tag_sweep_uid(uri: str, experiment_id: str, uid: str) -> None:
    """Mark the experiment as sweep ``uid``'s (see ``claim_experiment``)."""
    client_for(uri).set_experiment_tag(experiment_id, SWEEP_UID, uid)
