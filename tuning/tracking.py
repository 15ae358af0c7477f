"""Everything MLflow. The only module in the project that imports mlflow.

Layout: one experiment per sweep (named after it); a parent run for the sweep (tag
``tunebert.kind=sweep``) and one nested child run per trial (``tunebert.kind=trial``, tagged with
its Ray trial id). A trial that is retried or resumed finds its run again by that tag and keeps
logging into it, so no trial ever gets a second run. A standalone training run has
``tunebert.kind=train``.

Tracking must never kill training: every write from the sweep callback is caught; writes that
fail (a server that is down) are kept and sent again on the next callback, and the number of
writes still missing at the end is recorded as a tag on the parent run.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Callable, Iterable, Optional

from mlflow.entities import Metric, Param, RunTag, ViewType
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from trainables.errors import UserError

log = logging.getLogger("tunebert.tracking")
for _noisy in ("mlflow", "alembic"):
    logging.getLogger(_noisy).setLevel(logging.WARNING)

KIND = "tunebert.kind"
SWEEP = "tunebert.sweep"
TRIAL_ID = "tunebert.trial_id"
CONFIG = "tunebert.config"
TRAINABLE = "tunebert.trainable"
PARENT = "mlflow.parentRunId"
RUN_NAME = "mlflow.runName"
ERROR = "tunebert.error"
END_REASON = "tunebert.end_reason"
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
# A dead tracking server must not stall the sweep: few retries, short timeouts, and after a
# failure no new attempt for RETRY_AFTER_S seconds (writes queue up meanwhile).
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
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
    """Hide a password in a URI such as postgresql://user:pw@host/db."""
    import re

    return re.sub(r"(://[^:/@\s]+):[^@/\s]+@", r"\1:***@", text)


def is_local_store(uri: str) -> bool:
    """A store only this machine can write (SQLite or a plain folder), as opposed to a server."""
    return uri.startswith(("sqlite:", "file:", "/", ".")) or "://" not in uri


def client_for(uri: str) -> MlflowClient:
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri)


def metrics_of(result: dict) -> dict[str, float]:
    """The model's metrics in a Ray result: numeric, finite-or-not, minus Ray's bookkeeping."""
    return {k: float(v) for k, v in result.items()
            if k not in RAY_RESULT_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool)}


def params_of(config: dict) -> list[Param]:
    return [Param(k, redact(str(v))[:6000]) for k, v in sorted(config.items())
            if not any(word in k.lower() for word in SECRET_WORDS)]


# --------------------------------------------------------------------------- experiments and sweep runs


def ensure_experiment(client: MlflowClient, name: str, artifact_location: Optional[str]) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location,
                                    tags={SWEEP: name, "mlflow.note.content":
                                          f"tunebert sweep {name}: one child run per trial"})


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


def start_sweep_run(uri: str, sweep_name: str, settings: dict, artifact_location: Optional[str]) -> tuple[str, str]:
    """(experiment id, parent run id); a resumed sweep gets its existing parent run back."""
    client = client_for(uri)
    experiment_id = ensure_experiment(client, sweep_name, artifact_location)
    existing = _runs(client, experiment_id, f"tags.`{KIND}` = 'sweep'")
    if existing:
        run_id = existing[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        client.set_tag(run_id, "tunebert.resumed_at", time.strftime("%Y-%m-%d %H:%M:%S"))
        return experiment_id, run_id
    run = client.create_run(experiment_id, run_name=sweep_name,
                            tags={KIND: "sweep", SWEEP: sweep_name})
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
    trial-id tag. Writes that fail are queued in order and delivered when the store answers again.
    """

    OPEN = "open"  # pseudo-method: just find or create the trial's run
    _live: dict[str, "MlflowTrialLogger"] = {}  # sweep name -> the instance Ray is calling

    @classmethod
    def live(cls, sweep_name: str) -> Optional["MlflowTrialLogger"]:
        """The instance Ray used for ``sweep_name`` in this process (after a restore, Ray uses the
        copy saved with the experiment, not the one the runner built)."""
        return cls._live.get(sweep_name)

    def setup(self, **info):
        MlflowTrialLogger._live[self.sweep_name] = self

    def __init__(self, uri: str, experiment_id: str, parent_run_id: str,
                 resolve_config: Callable[[dict], dict], sweep_name: str):
        self.uri = uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.resolve_config = resolve_config
        self.sweep_name = sweep_name
        self._client: Optional[MlflowClient] = None
        self._run_ids: dict[str, str] = {}
        self._pending: list[tuple] = []
        self._retry_at = 0.0
        self.failed_writes = 0
        self.delayed_writes = 0

    def __getstate__(self):
        state = dict(self.__dict__)
        state.update(_client=None, _run_ids={}, _pending=[], _retry_at=0.0)
        return state

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = client_for(self.uri)
        return self._client

    # -- delivery with a queue
    def _call(self, trial, method: str, *args, **kwargs) -> None:
        """Deliver one write for ``trial``'s run, or queue it behind earlier failed ones."""
        entry = (trial, method, args, kwargs)
        self._flush()
        if self._pending:
            self._pending.append(entry)
            return
        error = self._deliver(entry)
        if error is not None:
            log.warning("MLflow %s failed (%s); queued, retrying in %.0fs while training goes on",
                        getattr(method, "__name__", method), error, RETRY_AFTER_S)
            self._pending.append(entry)
            self._retry_at = time.time() + RETRY_AFTER_S

    def _deliver(self, entry: tuple) -> Optional[str]:
        """``method``: a client method's name, OPEN, or one of ours taking the run id first."""
        trial, method, args, kwargs = entry
        try:
            run_id = self._resolve_run(trial)
            if callable(method):
                method(run_id, *args, **kwargs)
            elif method != self.OPEN:
                getattr(self.client, method)(run_id, *args, **kwargs)
            return None
        except Exception as exc:  # tracking must never stop training
            return (str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)

    def _flush(self, force: bool = False) -> None:
        if not self._pending or (not force and time.time() < self._retry_at):
            return
        while self._pending:
            if self._deliver(self._pending[0]) is not None:
                self._retry_at = time.time() + RETRY_AFTER_S
                return
            self._pending.pop(0)
            self.delayed_writes += 1
        log.warning("MLflow reachable again: queued writes delivered")

    def pending_writes(self) -> int:
        return len(self._pending)

    def flush_until(self, deadline_s: float) -> int:
        """Keep retrying queued writes until they are delivered or ``deadline_s`` passes."""
        end = time.time() + deadline_s
        while self._pending and time.time() < end:
            self._flush(force=True)
            if self._pending:
                time.sleep(min(2.0, max(0.0, end - time.time())))
        self.failed_writes = len(self._pending)
        return self.failed_writes

    def _resolve_run(self, trial) -> str:
        """The trial's run id: cached, found by its trial-id tag, or created. Raises if the
        store cannot be reached."""
        run_id = self._run_ids.get(trial.trial_id)
        if run_id:
            return run_id
        found = _runs(self.client, self.experiment_id, f"tags.`{TRIAL_ID}` = '{trial.trial_id}'")
        if found:
            run_id = found[0].info.run_id
            if found[0].info.status != "RUNNING":
                self.client.update_run(run_id, status="RUNNING")
        else:
            config = self.resolve_config(trial.config)
            run = self.client.create_run(
                self.experiment_id, run_name=f"{config['trainable']}-{trial.trial_id}",
                tags={KIND: "trial", SWEEP: self.sweep_name, TRIAL_ID: trial.trial_id,
                      PARENT: self.parent_run_id, TRAINABLE: config["trainable"],
                      CONFIG: json.dumps(config, sort_keys=True)[:MAX_TAG],
                      **({"tunebert.preset": config["preset"]} if config.get("preset") else {})})
            run_id = run.info.run_id
            self.client.log_batch(run_id, params=params_of(config))
        self._run_ids[trial.trial_id] = run_id
        return run_id

    # -- Ray hooks
    def on_trial_start(self, iteration, trials, trial, **info):
        self._call(trial, self.OPEN)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in metrics_of(result).items()]
        tags = [RunTag("tunebert.node_ip", str(result.get("node_ip", ""))),
                RunTag("tunebert.node_id", str(result.get("node_id", "")))]
        self._call(trial, "log_batch", metrics=metrics, tags=tags)

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        if "epoch" not in last:  # stopped (time budget, interruption) before its first report
            self._call(trial, "set_tag", END_REASON, "stopped before it reported an epoch")
            self._call(trial, "set_terminated", "KILLED")
            return
        config = self.resolve_config(trial.config)
        total = config.get("epochs") if config.get("trainable") == "finetune" else \
            (config["epochs"] + (0 if config.get("mode") == "joint" else config.get("contrastive_epochs", 0)))
        reason = "completed" if last.get("epoch") == total else "stopped early (scheduler or time budget)"
        self._call(trial, "set_tag", END_REASON, reason)
        self._call(trial, "set_terminated", "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        text = ""
        if trial.error_file and Path(trial.error_file).is_file():
            text = Path(trial.error_file).read_text(errors="replace")
            self._call(trial, "log_artifact", trial.error_file)
        self._call(trial, "set_tag", ERROR, _error_summary(text)[:MAX_TAG])
        self._call(trial, "set_tag", END_REASON, "error")
        self._call(trial, "set_terminated", "FAILED")

    def on_experiment_end(self, trials, **info):
        self._flush(force=True)
        self.failed_writes = len(self._pending)
        if self._pending:
            log.warning("MLflow: %d write(s) not delivered yet", len(self._pending))

    # -- PBT/PB2 lineage
    def record_clone(self, trial, donor, event: dict) -> None:
        """``trial`` now trains from ``donor``'s checkpoint with a new config (``event`` from
        ``tuning.pbt.clone_event``). Its run keeps its params (the initial config) and its whole
        metric history; the clone goes into tags (the latest) and LINEAGE_FILE (all of them)."""
        self._call(trial, self._write_clone, donor, event)

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
