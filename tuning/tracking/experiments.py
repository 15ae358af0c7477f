"""MLflow experiments, one per sweep (named after it): created or found, claimed by one sweep
(its uid tag, so two sweeps of one name never share one), and made to read well in the MLflow UI
(the runs-table view and a description that says how to read the sweep)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from mlflow.entities import ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from trainables.registry import ranked_metric
from tuning.tracking.names import (EXPERIMENT_KIND, KIND, MAX_TAG, NOTE, OUR_NOTE, RUNS_VIEW,
                                   SWEEP, SWEEP_UID, UNCHOSEN_KINDS)
from tuning.tracking.store import TrackingError, client_for, redact, runs_where

log = logging.getLogger(__name__)


def ensure_experiment(client: MlflowClient, name: str, artifact_location: Optional[str],
                      description: Optional[str] = None, uid: Optional[str] = None) -> str:
    """The id of experiment ``name``, created (or restored) if needed, and shown by the MLflow UI
    as a runs table (``show_as_runs``); ``description``: its note (``describe``).

    ``uid``: the sweep that records there (``SweepConfig.uid``). A new experiment is created with
    it as its ``SWEEP_UID`` tag, in the same request, and an experiment another sweep holds is
    refused: two new sweeps of one name that start at the same moment from different sweep
    folders both pass ``claim_experiment`` (no experiment yet), and the second would otherwise
    record into the first one's parent run."""
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
    parent = runs_where(client, experiment.experiment_id, f"tags.`{KIND}` = 'sweep'")
    params = parent[0].data.params if parent else {}
    metric, mode = params.get("metric", "val_accuracy"), params.get("mode", "max")
    try:
        show_as_runs(client, experiment)
        describe(client, experiment, sweep_description(sweep_name, metric, mode))
    except Exception as exc:  # a server this user may only read: the links work all the same
        log.warning("could not tag MLflow experiment %s for the UI: %s", experiment.experiment_id,
                    str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)
    return experiment.experiment_id, ranked_metric(metric), mode


def find_sweep_experiment(uri: str, sweep_name: str):
    """(client, experiment) of sweep ``sweep_name``; a missing store or sweep is refused with the
    sweeps the store holds."""
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
