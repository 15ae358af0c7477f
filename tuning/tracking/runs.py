"""MLflow runs outside the sweep callback: the sweep's parent run (started, resumed, finished, its
report linked), reading a sweep's trial runs and a benchmark's jobs, and the runs a process opens
and closes itself (``TrainRun`` for ``tunebert train``, ``SelectionRun`` for ``tunebert select``)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterable, Optional
from urllib.parse import urlencode

from mlflow.entities import Metric, RunTag
from mlflow.tracking import MlflowClient

from tuning.tracking.experiments import ensure_experiment, find_sweep_experiment, sweep_description
from tuning.tracking.names import (BENCH_JOB, CONFIG, END_REASON, ERROR, KIND, MAX_TAG, NOTE, PARENT,
                                   RUNS_VIEW_QUERY, SWEEP, TRAINABLE)
from tuning.tracking.records import batches, flatten, params_of
from tuning.tracking.store import client_for, runs_where

# --------------------------------------------------------------------------- the sweep's parent run

def start_sweep_run(uri: str, sweep_name: str, settings: dict, artifact_location: Optional[str],
                    uid: Optional[str] = None) -> tuple[str, str]:
    """(experiment id, parent run id); a resumed sweep gets its existing parent run back. ``uid``:
    the sweep's, which must own the experiment (``ensure_experiment``)."""
    client = client_for(uri)
    experiment_id = ensure_experiment(
        client, sweep_name, artifact_location,
        sweep_description(sweep_name, settings.get("metric", "val_accuracy"), settings.get("mode", "max")),
        uid=uid)
    existing = runs_where(client, experiment_id, f"tags.`{KIND}` = 'sweep'")
    if existing:
        run_id = existing[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        client.set_tag(run_id, "tunebert.resumed_at", time.strftime("%Y-%m-%d %H:%M:%S"))
        return experiment_id, run_id
    run = client.create_run(experiment_id, run_name=sweep_name,
                            tags={KIND: "sweep", SWEEP: sweep_name, NOTE: SWEEP_RUN_NOTE})
    client.log_batch(run.info.run_id, params=params_of(flatten(settings)))
    return experiment_id, run.info.run_id


def finish_sweep_run(uri: str, run_id: str, *, status: str, summary: dict,
                     best_checkpoint: Optional[str], extra_files: Iterable[str] = ()) -> None:
    """End the sweep's parent run with ``status``: the summary's numbers as metrics, the rest as
    tags, the best checkpoint (and its label map) and ``extra_files`` as artifacts."""
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
    open_runs = runs_where(client, experiment_id,
                      f"tags.`{KIND}` = 'trial' and attributes.status = 'RUNNING'")
    for run in open_runs:
        client.set_tag(run.info.run_id, END_REASON, "sweep stopped before the trial ended")
        client.set_terminated(run.info.run_id, status)
    return len(open_runs)


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


# --------------------------------------------------------------------------- reading runs


def trial_runs(uri: str, sweep_name: str) -> list:
    """Every active trial run of sweep ``sweep_name``."""
    client, experiment = find_sweep_experiment(uri, sweep_name)
    return runs_where(client, experiment.experiment_id, f"tags.`{KIND}` = 'trial'")


def sweep_run(uri: str, sweep_name: str):
    """The parent run of sweep ``sweep_name``, or None."""
    client, experiment = find_sweep_experiment(uri, sweep_name)
    runs = runs_where(client, experiment.experiment_id, f"tags.`{KIND}` = 'sweep'")
    return runs[0] if runs else None


def finished_job(uri: str, experiment: str, job_key: str) -> Optional[dict]:
    """The latest metrics and wall seconds of a FINISHED run tagged ``BENCH_JOB = job_key`` in
    ``experiment``, or None: a benchmark run again skips the jobs it already finished."""
    client = client_for(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = runs_where(client, found.experiment_id,
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
    runs = runs_where(client, found.experiment_id,
                 f"tags.`{BENCH_JOB}` = '{job_key}' and attributes.status != 'FINISHED'",
                 order_by=["attributes.start_time DESC"])
    return runs[0].info.run_id if runs else None


def metric_history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client_for(uri).get_metric_history(run_id, key)]


def download_artifacts(uri: str, run_id: str, path: str, destination: str) -> str:
    return client_for(uri).download_artifacts(run_id, path, destination)


def artifact_paths(uri: str, run_id: str, path: Optional[str] = None) -> list[str]:
    """The artifact paths directly under ``path`` of a run ([] when there is nothing there)."""
    return [a.path for a in client_for(uri).list_artifacts(run_id, path)]


# --------------------------------------------------------------------------- runs a process opens itself


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
        for chunk in batches(params_of(params), 100):  # MLflow takes at most 100 params a batch
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
    for chunk in batches(metric_list, 1000):
        client.log_batch(run_id, metrics=chunk)
    for chunk in batches(tag_list, 100):
        client.log_batch(run_id, tags=chunk)


def log_artifacts_to(uri: str, run_id: str, local_dir: str, artifact_path: Optional[str] = None) -> None:
    """Upload a folder to an existing (possibly finished) run."""
    client_for(uri).log_artifacts(run_id, local_dir, artifact_path)
