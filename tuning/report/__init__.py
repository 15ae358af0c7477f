"""The sweep report (``tunebert report``): one HTML page with PNG figures that sums up a sweep,
read from MLflow and logged back to it.

The page holds a summary table, the optimization history, fANOVA parameter importances, parallel
coordinates of the varying parameters, the learning curves of the top trials, the Pareto front of
a two-objective sweep and the best trial's confusion matrix on the VALIDATION split (nothing is
ever evaluated on the test split here); a multitask sweep's also its slot confusion matrix and
the F1 of each slot type, and its curves one panel per task. Trials are ranked, and importances
computed, by the sweep's own metric (its first objective, as `tunebert best` ranks). It is
written to a local folder (``<storage>/reports/<sweep>/``) and logged to the sweep's parent
MLflow run under ``report/``.

This module puts the report together and runs the command; the parts live beside it:

- ``tuning.report.data``: the trials and what else the report reads from MLflow
- ``tuning.report.study``: the trials as an Optuna study, and fANOVA importances
- ``tuning.report.checkpoint``: the best trial's checkpoint re-evaluated on validation
- ``tuning.report.tagging``: the same for a multitask trial (intents, slots, per-type F1)
- ``tuning.report.figures``: the figures (Optuna's where it draws them)
- ``tuning.report.page``: the HTML page

The command's arguments are defined in ``tuning.cli.commands``; this module is imported only when
``tunebert report`` runs (matplotlib and optuna still load inside the functions that draw).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import tuning.tracking as tracking
from trainables.errors import ConfigError
from tuning.config import DEFAULT_ROOT, Objective, check_sweep_name, resolve_tracking_uri
from tuning.report.checkpoint import (Confusion, best_trial_confusion, best_trial_evaluation,  # noqa: F401
                                      confusion_counts, most_confused, rebuild_model)
from tuning.report.data import (METRIC, TOP_CURVES, TrialRecord, is_multitask, load_trials,  # noqa: F401
                                log_scaled, pick_best, saved_search_space, top_curves, varying_params,
                                wall_time, with_search_conditions)
from tuning.report.figures import (plot_confusion, plot_history, plot_importances,
                                   plot_learning_curves, plot_parallel, plot_pareto,
                                   plot_slot_confusion)
from tuning.report.page import render_html
from tuning.report.study import build_study, param_importances, unassessed_note
from tuning.report.tagging import SlotConfusion, multitask_validation
from tuning.tracking.best import Goal, front, sweep_goal

log = logging.getLogger(__name__)

ARTIFACT_DIR = "report"
HTML_FILE = "report.html"

FIGURES = {  # figure key (its PNG's file stem) -> what the figure shows
    "history": "optimization history",
    "importance": "parameter importances",
    "parallel": "parallel coordinates",
    "curves": "learning curves",
    "confusion": "confusion matrix",
    "pareto": "Pareto front",
}
MULTITASK_FIGURES = {  # the figures only a multitask sweep's report has
    "slot_confusion": "slot confusion matrix",
}


def _tracking():
    """``tuning.tracking``, through one function the tests can stub."""
    return tracking


@dataclass
class Report:
    sweep: str
    output_dir: Path
    html: Path
    figures: dict[str, Path]  # figure key -> PNG in output_dir
    trials: list[TrialRecord]
    importances: Optional[dict[str, float]]
    confusion: Optional[Confusion]
    notes: dict[str, str] = field(default_factory=dict)  # figure key -> why it is missing or partial
    mlflow_run_id: Optional[str] = None  # the parent run the report was logged to
    slots: Optional[SlotConfusion] = None  # a multitask sweep's best trial's slot confusion


# --------------------------------------------------------------------------- one step per figure


def _pareto_step(trials: list[TrialRecord], sweep: str, uri: str, storage: str, goal: Goal,
                 best: Optional[TrialRecord], out: Path, figures: dict[str, Path]) -> None:
    """The Pareto figure, for a sweep with exactly two objectives."""
    if len(goal.objectives) == 2:
        front_ids = [r.trial_id for r in front(sweep, goal=goal, tracking_uri=uri, storage=storage)]
        figures["pareto"] = plot_pareto(trials, goal, front_ids, best.trial_id if best else None,
                                        out / "pareto.png")


def _importance_step(trials: list[TrialRecord], kinds: dict[str, str], study, out: Path,
                     figures: dict[str, Path], notes: dict[str, str]) -> Optional[dict[str, float]]:
    """fANOVA importances of the varying parameters and their figure, or a note saying why not;
    a note also names the conditional parameters left out (some finished trials did not use them)."""
    metric = trials[0].metric if trials else METRIC
    if not kinds:
        notes["importance"] = "No parameter took more than one value in this sweep."
        return None
    log.info(f"computing fANOVA importances of {len(kinds)} varying parameters over "
             f"{sum(t.scored for t in trials)} finished trials")
    importances, why = param_importances(study, metric=metric)
    if importances is None:
        notes["importance"] = why
        return None
    if importances:
        figures["importance"] = plot_importances(study, importances, out / "importance.png", metric)
    left_out = unassessed_note(trials, kinds, importances)
    if left_out:
        notes["importance"] = left_out
    return importances


def _parallel_step(scored: list[TrialRecord], space: dict, ranked: Objective, out: Path,
                   figures: dict[str, Path], notes: dict[str, str]) -> None:
    """Parallel coordinates over the parameters that differ between the finished trials (an axis
    where every drawn line agrees says nothing)."""
    kinds = varying_params(scored)
    if kinds:
        study = build_study(scored, kinds, log_scaled(kinds, scored, space), mode=ranked.mode)
        figures["parallel"] = plot_parallel(study, kinds, out / "parallel.png", ranked.metric)
    else:
        notes["parallel"] = (f"Needs ≥ 2 finished trials with a finite {ranked.metric} and different "
                             f"parameters; this sweep has {len(scored)} finished.")


def _curves_step(uri: str, trials: list[TrialRecord], scored: list[TrialRecord], out: Path,
                 figures: dict[str, Path], notes: dict[str, str], sweep: str, storage: str) -> None:
    """The top trials' learning curves (one panel per task for a multitask sweep)."""
    metric = trials[0].metric
    if scored:
        log.info(f"reading the learning curves of the top {min(TOP_CURVES, len(scored))} trials")
        figures["curves"] = plot_learning_curves(top_curves(uri, trials, sweep, storage),
                                                 out / "curves.png", metric)
    else:
        notes["curves"] = f"No finished trial with a finite {metric}."


def _confusion_step(uri: str, parent_id: Optional[str], sweep: str, storage: str,
                    best: Optional[TrialRecord], out: Path, figures: dict[str, Path],
                    notes: dict[str, str]) -> Optional[Confusion]:
    """The best text-classification trial's confusion matrix on validation, or a note why not."""
    confusion, why = best_trial_confusion(uri, parent_id, sweep, storage, best)
    if confusion is not None:
        figures["confusion"] = plot_confusion(confusion, out / "confusion.png")
    else:
        notes["confusion"] = why
    return confusion


def _multitask_step(uri: str, parent_id: Optional[str], sweep: str, storage: str,
                    best: Optional[TrialRecord], out: Path, figures: dict[str, Path],
                    notes: dict[str, str]) -> tuple[Optional[Confusion], Optional[SlotConfusion]]:
    """The best multitask trial's intent and slot confusion on validation, or notes why not."""
    checked, why = best_trial_evaluation(uri, parent_id, sweep, storage, best, multitask_validation)
    if checked is None:
        notes["confusion"] = notes["slot_confusion"] = why
        return None, None
    if checked.intent is not None:
        figures["confusion"] = plot_confusion(checked.intent, out / "confusion.png")
    else:
        notes["confusion"] = ("Skipped: the validation split has no sentence labels (tagging-only "
                              "data), so there are no intents to confuse.")
    if checked.slots is not None:
        figures["slot_confusion"] = plot_slot_confusion(checked.slots, out / "slot_confusion.png")
    else:
        notes["slot_confusion"] = ("Skipped: the validation split has no word tags (the sentence "
                                   "task's dataset alone), so there are no slots to confuse.")
    return checked.intent, checked.slots


# --------------------------------------------------------------------------- putting it together


def build_report(sweep: str, *, storage: str = DEFAULT_ROOT, tracking_uri: Optional[str] = None,
                 output: Optional[str] = None, log_to_mlflow: bool = True) -> Report:
    """Render the report of ``sweep`` into ``output`` (default ``<storage>/reports/<sweep>/``)
    and log it to the sweep's parent MLflow run under ``report/``."""
    check_sweep_name(sweep)
    root = Path(storage).expanduser().resolve()
    uri = resolve_tracking_uri(tracking_uri, root)
    log.info(f"reading the trials of sweep {sweep!r} from MLflow {_tracking().redact(uri)}")
    goal = sweep_goal(sweep, tracking_uri=uri, storage=storage)
    ranked = goal.objectives[0]  # what `tunebert best` ranks by first
    trials = load_trials(uri, sweep, ranked.metric)
    if not trials:
        raise ConfigError(f"sweep {sweep!r} has no trial runs in MLflow yet; nothing to report")
    parent = _tracking().sweep_run(uri, sweep)
    parent_id = parent.info.run_id if parent is not None else None
    out = Path(output).expanduser() if output else root / "reports" / sweep
    out.mkdir(parents=True, exist_ok=True)
    notes: dict[str, str] = {}
    figures: dict[str, Path] = {}
    space = saved_search_space(uri, parent_id, root / "ray" / sweep)
    trials = with_search_conditions(trials, space)  # which parameters each trial used
    scored = [t for t in trials if t.scored]
    best = pick_best(trials, sweep, uri, storage)
    kinds = varying_params(trials)
    study = build_study(trials, kinds, log_scaled(kinds, trials, space),  # every trial, start order
                        mode=ranked.mode)

    figures["history"] = plot_history(study, trials, best, out / "history.png")
    _pareto_step(trials, sweep, uri, storage, goal, best, out, figures)
    importances = _importance_step(trials, kinds, study, out, figures, notes)
    _parallel_step(scored, space, ranked, out, figures, notes)
    _curves_step(uri, trials, scored, out, figures, notes, sweep, storage)
    slots = None
    if is_multitask(trials):
        confusion, slots = _multitask_step(uri, parent_id, sweep, storage, best, out, figures, notes)
    else:
        confusion = _confusion_step(uri, parent_id, sweep, storage, best, out, figures, notes)

    page = render_html(sweep, store=_tracking().redact(uri), parent_run_id=parent_id, trials=trials,
                       best=best, kinds=kinds, wall_s=wall_time(parent, trials), figures=figures,
                       notes=notes, confusion=confusion, slots=slots, mode=ranked.mode)
    html_path = out / HTML_FILE
    html_path.write_text(page, encoding="utf-8")
    logged_to = None
    if log_to_mlflow and parent_id:
        log.info(f"logging the report to MLflow run {parent_id} under {ARTIFACT_DIR}/")
        _log_folder(uri, parent_id, html_path, figures)
        _tracking().link_report(uri, parent_id, f"{ARTIFACT_DIR}/{HTML_FILE}", str(html_path.resolve()))
        logged_to = parent_id
    elif log_to_mlflow:
        log.info(f"note: sweep {sweep!r} has no parent MLflow run; the report is only on disk")
    log.info(f"report: {html_path}")
    return Report(sweep, out, html_path, figures, trials, importances, confusion, notes, logged_to,
                  slots)


def _log_folder(uri: str, run_id: str, html_path: Path, figures: dict[str, Path]) -> None:
    """Log exactly this report's files (the output folder may hold other things)."""
    with tempfile.TemporaryDirectory(prefix="tunebert-report-") as tmp:
        for path in [html_path, *figures.values()]:
            shutil.copy2(path, Path(tmp) / path.name)
        _tracking().log_artifacts_to(uri, run_id, tmp, ARTIFACT_DIR)


# --------------------------------------------------------------------------- the CLI command


def run(args: argparse.Namespace) -> int:
    """``tunebert report``."""
    _tracking().reachable_store(args.tracking_uri, args.storage)
    report = build_report(args.name, storage=args.storage, tracking_uri=args.tracking_uri,
                          output=args.output, log_to_mlflow=not args.no_mlflow)
    for key, note in report.notes.items():
        log.info(f"note ({FIGURES.get(key) or MULTITASK_FIGURES[key]}): {note}")
    if report.mlflow_run_id:
        log.info(f"MLflow: artifacts {ARTIFACT_DIR}/{HTML_FILE} of the parent run {report.mlflow_run_id} "
                 f"(experiment {args.name!r})")
    return 0
