"""``tunebert report``: one HTML page with PNG figures that sums up a sweep, read from MLflow.

The page holds a summary table, the optimization history, fANOVA parameter importances, parallel
coordinates of the varying parameters, the learning curves of the top trials and the best trial's
confusion matrix on the VALIDATION split (nothing is ever evaluated on the test split here). It is written to a
local folder (``<storage>/reports/<sweep>/``) and logged to the sweep's parent MLflow run under
``report/``. Figures are referenced by relative path and also embedded as data URIs, so the HTML
works on its own when downloaded from MLflow.

Heavy imports (matplotlib, optuna, torch) happen inside the functions that need them, so
building the CLI parser stays fast.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from trainables.errors import ConfigError, UserError
from tuning.config import DEFAULT_ROOT, check_sweep_name, resolve_tracking_uri


def _tracking():
    """``tuning.tracking`` (mlflow, Ray) loads on first use, so building the CLI stays fast."""
    from tuning import tracking

    return tracking

METRIC = "val_accuracy"
TOP_CURVES = 5
CONFUSED_PAIRS = 10
MIN_IMPORTANCE_TRIALS = 3  # fANOVA fits a random forest; fewer points give no meaningful split
# Parameters searched on a log scale in the default spaces (a sweep's search_space.yaml may add more).
LOG_PARAMS = frozenset({"lr", "contrastive_lr", "temperature", "head_lr_multiplier", "joint_lambda"})
# Config keys that are provenance, not hyperparameters.
NOT_HYPERPARAMETERS = frozenset({"preset"})
# How tracking's end-reason tag starts for a FINISHED trial that did not run all its epochs.
STOPPED_EARLY = "stopped early"
ARTIFACT_DIR = "report"
HTML_FILE = "report.html"
DPI = 110

FIGURES = {  # figure key (its PNG's file stem) -> what the figure shows
    "history": "optimization history",
    "importance": "parameter importances",
    "parallel": "parallel coordinates",
    "curves": "learning curves",
    "confusion": "confusion matrix",
    "pareto": "Pareto front",
}


def say(message: str) -> None:
    print(f"[tunebert] {message}", flush=True)


# --------------------------------------------------------------------------- what the report holds


@dataclass(frozen=True)
class TrialRecord:
    """One trial's MLflow run, as the report needs it."""

    run_id: str
    trial_id: str
    status: str  # FINISHED | FAILED | KILLED | RUNNING
    end_reason: str  # "completed", "stopped early (...)", "error", ...
    config: dict[str, Any]
    metrics: dict[str, float]  # last value of each metric
    start_ms: int
    end_ms: Optional[int]
    preset: Optional[str] = None
    error: Optional[str] = None

    @property
    def value(self) -> float:
        """The trial's score: val_accuracy at its best epoch (NaN when it never reported one)."""
        from tuning.best import score_key

        return float(self.metrics.get(score_key(METRIC, self.metrics), math.nan))

    @property
    def scored(self) -> bool:
        """A finished trial with a finite metric: the only kind that can be best."""
        return self.status == "FINISHED" and math.isfinite(self.value)

    @property
    def stopped_early(self) -> bool:
        """Finished before its last epoch (ASHA, or the sweep's time budget)."""
        return self.status == "FINISHED" and self.end_reason.startswith(STOPPED_EARLY)

    @property
    def label(self) -> str:
        return f"{self.trial_id} ({self.preset})" if self.preset else self.trial_id


@dataclass
class Confusion:
    """The best trial's confusion matrix on the validation split."""

    trial_id: str
    counts: np.ndarray  # (num_labels, num_labels): rows true class, columns predicted class
    names: list[str]
    accuracy: float

    @property
    def total(self) -> int:
        return int(self.counts.sum())


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


# --------------------------------------------------------------------------- reading the sweep


def load_trials(uri: str, sweep: str) -> list[TrialRecord]:
    """Every trial run of ``sweep``, in start order. Raises TrackingError for an unknown sweep."""
    records = []
    for run in _tracking().trial_runs(uri, sweep):
        tags = run.data.tags
        records.append(TrialRecord(
            run_id=run.info.run_id, trial_id=tags.get(_tracking().TRIAL_ID, run.info.run_id[:8]),
            status=run.info.status, end_reason=tags.get(_tracking().END_REASON, ""),
            config=json.loads(tags.get(_tracking().CONFIG, "{}")), metrics=dict(run.data.metrics),
            start_ms=int(run.info.start_time or 0), end_ms=run.info.end_time,
            preset=tags.get("tunebert.preset"), error=tags.get(_tracking().ERROR)))
    return sorted(records, key=lambda r: (r.start_ms, r.trial_id))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def varying_params(trials: list[TrialRecord]) -> dict[str, str]:
    """Parameters whose value differs between trials: name -> "numeric" or "categorical".

    Only keys every trial's config has count (in a mixed sweep, family-specific parameters are
    left out: their absence would only repeat what ``trainable`` says).
    """
    if not trials:
        return {}
    shared = set.intersection(*(set(t.config) for t in trials)) - NOT_HYPERPARAMETERS
    kinds = {}
    for name in sorted(shared):
        values = [t.config[name] for t in trials]
        if any(isinstance(v, (list, dict)) for v in values):
            continue
        if len({json.dumps(v, sort_keys=True) for v in values}) < 2:
            continue
        kinds[name] = "numeric" if all(_is_number(v) for v in values) else "categorical"
    return kinds


def log_scaled(kinds: dict[str, str], trials: list[TrialRecord], space: dict) -> set[str]:
    """Numeric parameters to show and model on a log scale: the usual ones and any the sweep's
    search space marks ``log: true``, as long as every observed value is positive."""
    marked = {name for name, spec in space.items() if isinstance(spec, dict) and spec.get("log")}
    return {name for name, kind in kinds.items()
            if kind == "numeric" and (name in LOG_PARAMS or name in marked)
            and all(t.config[name] > 0 for t in trials)}


def saved_search_space(uri: str, parent_run_id: Optional[str], sweep_dir: Path) -> dict:
    """The sweep's ``search_space.yaml`` (from the parent run, else the local sweep folder)."""
    import yaml

    text = None
    if parent_run_id and "search_space.yaml" in _tracking().artifact_paths(uri, parent_run_id):
        with tempfile.TemporaryDirectory() as tmp:
            text = Path(_tracking().download_artifacts(uri, parent_run_id, "search_space.yaml", tmp)).read_text()
    elif (sweep_dir / "search_space.yaml").is_file():
        text = (sweep_dir / "search_space.yaml").read_text()
    loaded = yaml.safe_load(text) if text else None
    return loaded if isinstance(loaded, dict) else {}


def categorical_choices(trials: list[TrialRecord], name: str) -> list[str]:
    return sorted({str(t.config[name]) for t in trials}, key=lambda s: (len(s), s))


# --------------------------------------------------------------------------- parameter importances


def build_study(trials: list[TrialRecord], kinds: dict[str, str], log_names: set[str],
                mode: str = "max"):
    """An Optuna study holding the finished trials (value = final val_accuracy), with
    distributions inferred from what the trials used (numeric: observed min..max)."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    distributions = {}
    for name, kind in kinds.items():
        if kind == "numeric":
            values = [float(t.config[name]) for t in trials]
            distributions[name] = FloatDistribution(min(values), max(values), log=name in log_names)
        else:
            distributions[name] = CategoricalDistribution(categorical_choices(trials, name))
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    for trial in trials:
        if not trial.scored:
            continue
        params = {name: float(trial.config[name]) if kind == "numeric" else str(trial.config[name])
                  for name, kind in kinds.items()}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions,
                                                  value=trial.value))
    return study


def param_importances(study, seed: int = 0) -> tuple[Optional[dict[str, float]], Optional[str]]:
    """fANOVA importances (normalised to sum 1), or (None, why not)."""
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    finished = len(study.trials)
    if finished < MIN_IMPORTANCE_TRIALS:
        return None, (f"Parameter importances need ≥ {MIN_IMPORTANCE_TRIALS} finished trials with a "
                      f"finite {METRIC}; this sweep has {finished}.")
    if len({t.value for t in study.trials}) < 2:
        return None, (f"All {finished} finished trials reached the same {METRIC}, so there is "
                      f"no variation for fANOVA to attribute to parameters.")
    try:
        importances = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=seed))
    except (ValueError, RuntimeError, ZeroDivisionError) as exc:
        return None, (f"Parameter importances could not be computed from {finished} finished trials "
                      f"({exc}); they need ≥ {MIN_IMPORTANCE_TRIALS} finished trials that differ.")
    if not importances or not all(math.isfinite(v) for v in importances.values()):
        return None, f"fANOVA gave no finite importances from {finished} finished trials."
    return dict(importances), None


# --------------------------------------------------------------------------- the best trial on validation


def best_checkpoint(uri: str, parent_run_id: Optional[str], sweep_dir: Path, best: TrialRecord,
                    into: Path) -> Optional[Path]:
    """A folder holding the best trial's checkpoint: the parent run's ``best_checkpoint/``
    artifact if it belongs to that trial, else the trial's last checkpoint in the sweep folder."""
    if parent_run_id and "best_checkpoint" in _tracking().artifact_paths(uri, parent_run_id):
        folder = Path(_tracking().download_artifacts(uri, parent_run_id, "best_checkpoint", str(into)))
        config = folder / "config.json"
        try:
            if config.is_file() and json.loads(config.read_text()) == best.config:
                return folder  # read later with weights_only=True (validation_confusion)
        except (ValueError, UnicodeDecodeError):  # a damaged artifact: use the sweep folder's copy
            pass
    local = sorted(sweep_dir.glob(f"*_{best.trial_id}/checkpoint_*/state.pt"))
    return local[-1].parent if local else None


def rebuild_model(config: dict, state: dict, num_labels: int):
    """The trial's model, as its family builds it, with the checkpoint's weights."""
    from trainables import registry
    from trainables.checkpointing import model_weights
    from trainables.finetune import build_classifier

    trainable = config.get("trainable", "finetune")
    cfg = registry.config_class(trainable).from_dict(config)
    model = build_classifier(cfg, num_labels)
    if trainable == "contrastive":
        from trainables.contrastive import ContrastiveModel

        model = ContrastiveModel(model, cfg.projection_dim)
    model.load_state_dict(model_weights(state))  # the best epoch's (averaged) weights
    return model


def confusion_counts(labels: np.ndarray, predictions: np.ndarray, num_labels: int) -> np.ndarray:
    """(num_labels, num_labels) counts: row = true class, column = predicted class."""
    flat = np.bincount(labels * num_labels + predictions, minlength=num_labels * num_labels)
    return flat.reshape(num_labels, num_labels)


def validation_confusion(checkpoint_dir: Path, data_config, trial_id: str) -> Confusion:
    """Re-tokenize the validation split the way the trial saw it, run the checkpoint over it."""
    import torch

    from trainables.checkpointing import load_checkpoint
    from trainables.data import LabelMap, load_raw_splits, tokenize_splits
    from trainables.loops import evaluate
    from trainables.models import load_tokenizer

    state = load_checkpoint(checkpoint_dir)
    config = state["config"]
    raw = load_raw_splits(data_config)
    data = tokenize_splits(raw, load_tokenizer(config["model"]), model=config["model"],
                           max_length=config["max_length"], include_test=False)
    saved = LabelMap.from_dict(state["label_map"])
    if saved.names != data.label_map.names:
        raise ConfigError(f"the labels of {data_config.source!r} no longer match the checkpoint's "
                          f"({len(data.label_map)} vs {len(saved)} classes, or renamed); the data "
                          f"changed since the sweep")
    val = data.splits["validation"]
    say(f"re-evaluating trial {trial_id} on the validation split ({len(val)} examples)")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = rebuild_model(config, state, data.num_labels).to(device)
    result = evaluate(model, val, batch_size=64, pad_token_id=data.pad_token_id,
                      num_labels=data.num_labels, device=device)
    return Confusion(trial_id, confusion_counts(result.labels, result.predictions, data.num_labels),
                     list(saved.names), result.accuracy)


def most_confused(confusion: Confusion, k: int = CONFUSED_PAIRS) -> list[tuple[str, str, int, float]]:
    """The ``k`` largest off-diagonal cells: (true, predicted, count, share of the true class)."""
    counts = confusion.counts.copy()
    np.fill_diagonal(counts, 0)
    rows = counts.sum(axis=1) + np.diag(confusion.counts)
    order = np.argsort(-counts, axis=None, kind="stable")[:k]  # ties: first true class first
    pairs = []
    for flat in order:
        true, pred = divmod(int(flat), counts.shape[1])
        if counts[true, pred] == 0:
            break
        pairs.append((confusion.names[true], confusion.names[pred], int(counts[true, pred]),
                      float(counts[true, pred] / max(rows[true], 1))))
    return pairs


# --------------------------------------------------------------------------- figures (one function each)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, bbox_inches="tight", facecolor="white")
    _pyplot().close(fig)
    return path


def _fmt(value: float) -> str:
    return f"{value:.2e}" if 0 < abs(value) < 1e-3 else f"{value:.3g}"


def running_best(points: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """(x, value) pairs in order -> (x, best value so far) at each x."""
    out, best = [], -math.inf
    for x, value in points:
        best = max(best, value)
        out.append((x, best))
    return out


def plot_history(trials: list[TrialRecord], path: Path) -> Path:
    """Final val_accuracy of each finished/failed trial in start order, with the running best."""
    import matplotlib.transforms as transforms
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    shown = [(i, t) for i, t in enumerate(trials, start=1) if t.status in ("FINISHED", "FAILED")]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    completed = [(i, t.value) for i, t in shown if t.scored and not t.stopped_early]
    stopped = [(i, t.value) for i, t in shown if t.scored and t.stopped_early]
    failed = [(i, t.value) for i, t in shown if t.status == "FAILED" and math.isfinite(t.value)]
    failed_blank = [i for i, t in shown if t.status == "FAILED" and not math.isfinite(t.value)]
    if completed:
        ax.scatter(*zip(*completed), s=42, color="tab:blue", zorder=3, label="finished")
    if stopped:
        ax.scatter(*zip(*stopped), s=42, facecolors="none", edgecolors="tab:blue", zorder=3,
                   label="stopped early (ASHA or time budget)")
    if failed:
        ax.scatter(*zip(*failed), s=60, marker="x", color="tab:red", zorder=3,
                   label="failed (last value before the error)")
    if failed_blank:  # no value at all: a triangle on the bottom edge, off the value scale
        ax.scatter(failed_blank, [0.0] * len(failed_blank), s=60, marker="v", color="tab:red",
                   transform=transforms.blended_transform_factory(ax.transData, ax.transAxes),
                   clip_on=False, zorder=3, label="failed before any result")
    steps = running_best([(i, t.value) for i, t in shown if t.scored])
    if steps:
        steps.append((shown[-1][0], steps[-1][1]))  # carry the line to the last trial
        ax.step(*zip(*steps), where="post", color="tab:orange", lw=2, zorder=2, label="best so far")
        x, best = max(((i, t) for i, t in shown if t.scored), key=lambda pair: pair[1].value)
        ax.scatter([x], [best.value], s=260, marker="*", color="gold", edgecolors="black",
                   linewidths=0.6, zorder=4, label=f"best: {best.label}")
    ax.set_xlabel("trial, in start order")
    ax.set_ylabel(f"best-epoch {METRIC}")
    ax.set_title("Optimization history")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if shown:
        ax.set_xlim(0.5, shown[-1][0] + 0.5)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return _save(fig, path)


def _objective_label(metric: str, mode: str) -> str:
    from trainables.registry import REPORTED_METRICS, ranked_metric

    unit = getattr(REPORTED_METRICS.get(metric), "unit", "")
    name = "best-epoch " + metric if ranked_metric(metric) != metric else metric
    return f"{name} ({unit + ', ' if unit else ''}{'higher' if mode == 'max' else 'lower'} is better)"


def plot_pareto(trials: list[TrialRecord], goal, front_ids: list[str], chosen_id: Optional[str],
                path: Path) -> Path:
    """The two objectives of every finished trial that reported both (grey; infeasible: crosses),
    the Pareto front (``tuning.best.front``) highlighted and joined, the point ``best`` hands back
    starred. Drawn here, not with optuna.visualization's plot_pareto_front: the front and the
    chosen point must be exactly `tunebert best --front`'s (constraints, best epochs, trials with
    a missing objective left out), which an Optuna study rebuilt from MLflow would not know."""
    from tuning.best import score_key

    plt = _pyplot()
    y_obj, x_obj = goal.objectives  # the first objective up the y axis

    def point(t: TrialRecord) -> tuple[float, float]:
        return (float(t.metrics.get(score_key(x_obj.metric, t.metrics), math.nan)),
                float(t.metrics.get(score_key(y_obj.metric, t.metrics), math.nan)))

    finished = [t for t in trials if t.status == "FINISHED" and t.metrics.get("stage", 2) != 1]
    shown = [t for t in finished if all(math.isfinite(v) for v in point(t))]
    feasible = [t for t in shown if goal.feasible(t.metrics)]
    by_id = {t.trial_id: t for t in shown}
    on_front = sorted((by_id[i] for i in front_ids if i in by_id), key=point)
    fig, ax = plt.subplots(figsize=(8.5, 5.2))
    rest = [point(t) for t in feasible if t.trial_id not in front_ids]
    if rest:
        ax.scatter(*zip(*rest), s=36, color="0.65", zorder=2, label="feasible, dominated")
    infeasible = [point(t) for t in shown if not goal.feasible(t.metrics)]
    if infeasible:
        ax.scatter(*zip(*infeasible), s=40, marker="x", color="0.55", zorder=2,
                   label="infeasible (breaks " + ", ".join(str(c) for c in goal.constraints) + ")")
    if on_front:
        ax.plot(*zip(*map(point, on_front)), color="tab:blue", lw=1.2, ls="--", zorder=3)
        ax.scatter(*zip(*map(point, on_front)), s=60, color="tab:blue", edgecolors="black",
                   linewidths=0.5, zorder=4, label=f"Pareto front ({len(on_front)} trials)")
        for t in on_front:
            ax.annotate(t.label, point(t), xytext=(5, 5), textcoords="offset points", fontsize=7,
                        zorder=5)
    if chosen_id in by_id:
        ax.scatter(*point(by_id[chosen_id]), s=320, marker="*", color="gold", edgecolors="black",
                   linewidths=0.6, zorder=6, label=f"chosen (tunebert best): {by_id[chosen_id].label}")
    ax.set_xlabel(_objective_label(x_obj.metric, x_obj.mode))
    ax.set_ylabel(_objective_label(y_obj.metric, y_obj.mode))
    missing = len(finished) - len(shown)
    ax.set_title(f"Pareto front: {y_obj} vs {x_obj}"
                 + (f"\n{missing} finished trial(s) lacking an objective (stopped before their last epoch) "
                    f"not shown" if missing else ""), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return _save(fig, path)


def plot_importances(importances: dict[str, float], path: Path) -> Path:
    """Horizontal bars, most important on top."""
    plt = _pyplot()
    names = list(importances)[::-1]
    values = [importances[n] for n in names]
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.38 * len(names)))
    bars = ax.barh(names, values, color="tab:blue")
    ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], padding=3, fontsize=8)
    ax.set_xlim(0, max(values) * 1.15 or 1)
    ax.set_xlabel(f"importance for {METRIC} (fANOVA, sums to 1)")
    ax.set_title("Parameter importances")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def _axis_positions(values: list, kind: str, log: bool) -> tuple[np.ndarray, list[tuple[float, str]]]:
    """Values mapped onto [0, 1] for one parallel-coordinates axis, and that axis's ticks."""
    if kind == "categorical":
        choices = sorted({str(v) for v in values}, key=lambda s: (len(s), s))
        spread = max(len(choices) - 1, 1)
        where = {c: (i / spread if len(choices) > 1 else 0.5) for i, c in enumerate(choices)}
        return np.array([where[str(v)] for v in values]), [(where[c], c) for c in choices]
    x = np.log10(np.asarray(values, float)) if log else np.asarray(values, float)
    low, high = float(x.min()), float(x.max())
    if high == low:
        return np.full(len(x), 0.5), [(0.5, _fmt(values[0]))]
    ticks = [(p, _fmt(10 ** (low + p * (high - low)) if log else low + p * (high - low)))
             for p in (0.0, 0.5, 1.0)]
    return (x - low) / (high - low), ticks


def plot_parallel(trials: list[TrialRecord], kinds: dict[str, str], log_names: set[str],
                  path: Path) -> Path:
    """One line per finished trial across the varying parameters, coloured by val_accuracy."""
    plt = _pyplot()
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    scored = sorted((t for t in trials if t.scored), key=lambda t: t.value)  # best drawn last
    names = list(kinds)
    accuracy = [t.value for t in scored]
    columns = [_axis_positions([t.config[n] for t in scored], kinds[n], n in log_names) for n in names]
    columns.append(_axis_positions(accuracy, "numeric", False))
    labels = [n + (" (log)" if n in log_names else "") for n in names] + [METRIC]
    norm = Normalize(min(accuracy), max(accuracy) if max(accuracy) > min(accuracy) else min(accuracy) + 1e-9)
    cmap = plt.get_cmap("viridis")
    fig, ax = plt.subplots(figsize=(max(8.0, 1.25 * len(labels) + 1.5), 6.0))
    xs = np.arange(len(labels))
    for row, trial in enumerate(scored):
        ys = [col[0][row] for col in columns]
        best = row == len(scored) - 1
        ax.plot(xs, ys, color=cmap(norm(trial.value)), lw=2.6 if best else 1.4,
                alpha=1.0 if best else 0.75, zorder=3 if best else 2)
    for x, (_, ticks) in zip(xs, columns):
        ax.axvline(x, color="0.25", lw=0.8, zorder=1)
        for y, text in ticks:
            ax.text(x - 0.04, y, text, ha="right", va="center", fontsize=7, zorder=4,
                    bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.8))
    ax.set_xticks(xs, labels, rotation=30, ha="right", fontsize=8)
    ax.set_xlim(-0.6, len(labels) - 0.6)
    ax.set_ylim(-0.06, 1.06)
    ax.set_yticks([])
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, pad=0.01, fraction=0.03,
                 label=f"best-epoch {METRIC}")
    ax.set_title(f"Parallel coordinates of the varying parameters ({len(scored)} finished trials; "
                 f"thick line: best)")
    return _save(fig, path)


def plot_learning_curves(curves: dict[str, dict[str, list[tuple[int, float]]]], path: Path) -> Path:
    """val_accuracy and val_loss per epoch of the top trials, one colour per trial."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
    for (label, history), color in zip(curves.items(), plt.get_cmap("tab10").colors):
        for ax, key in ((left, "val_accuracy"), (right, "val_loss")):
            points = sorted(history.get(key, []))
            if points:
                ax.plot(*zip(*points), marker="o", ms=4, color=color, label=label)
    for ax, key in ((left, "val_accuracy"), (right, "val_loss")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    left.set_title(f"Top {len(curves)} trials: {METRIC}")
    right.set_title(f"Top {len(curves)} trials: val_loss")
    handles, labels = left.get_legend_handles_labels()
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 3), fontsize=8,
               title=f"trial (best-epoch {METRIC})", title_fontsize=8, frameon=False)
    return _save(fig, path)


def plot_confusion(confusion: Confusion, path: Path) -> Path:
    """Row-normalised confusion matrix; sized so that 60 class names stay legible."""
    plt = _pyplot()
    from mpl_toolkits.axes_grid1 import make_axes_locatable

    n = len(confusion.names)
    rows = confusion.counts.sum(axis=1, keepdims=True)
    share = confusion.counts / np.maximum(rows, 1)
    side = min(max(6.0, 0.3 * n + 3.0), 32.0)
    tick_size = 9 if n <= 20 else 7 if n <= 70 else 5
    names = [name if len(name) <= 28 else name[:27] + "…" for name in confusion.names]
    fig, ax = plt.subplots(figsize=(side + 1.0, side))
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks(range(n), names, rotation=90, fontsize=tick_size)
    ax.set_yticks(range(n), names, fontsize=tick_size)
    ax.set_xlabel("predicted class", fontsize=10 if n <= 20 else 13)
    ax.set_ylabel("true class", fontsize=10 if n <= 20 else 13)
    if n <= 20:  # room to print each cell's share
        for (i, j), value in np.ndenumerate(share):
            if confusion.counts[i, j]:
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if value > 0.6 else "black")
    ax.set_xticks(np.arange(n + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(n + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="0.9", lw=0.4)
    ax.tick_params(which="minor", length=0)
    colorbar_axes = make_axes_locatable(ax).append_axes("right", size=0.25, pad=0.15)
    fig.colorbar(image, cax=colorbar_axes, label="share of the true class")
    ax.set_title(f"Confusion matrix of trial {confusion.trial_id}, validation split\n"
                 f"{confusion.total} examples, accuracy {confusion.accuracy:.3f}; rows sum to 1",
                 fontsize=12 if n <= 20 else 15)
    return _save(fig, path)


# --------------------------------------------------------------------------- the page


def _cell(value: Any) -> str:
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return html.escape(text)


def _table(header: Optional[list[str]], rows: list[list[Any]]) -> str:
    """An HTML table; cells are escaped, floats shown with 4 significant digits."""
    head = ("<thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr></thead>"
            if header else "")
    body = "".join("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table>{head}<tbody>{body}</tbody></table>"


def _figure_html(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    name = html.escape(path.name)
    return (f'<figure><a href="{name}"><img src="data:image/png;base64,{data}" '
            f'alt="{html.escape(caption)}"></a><figcaption>{html.escape(caption)} '
            f'(<a href="{name}">{name}</a>)</figcaption></figure>')


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def summary_rows(trials: list[TrialRecord], best: Optional[TrialRecord],
                 wall_s: Optional[float]) -> list[list[Any]]:
    finished = [t for t in trials if t.status == "FINISHED"]
    early = sum(t.stopped_early for t in finished)
    rows = [["trials", len(trials)],
            ["finished", f"{len(finished)} ({len(finished) - early} ran all epochs, {early} stopped "
                         f"early by ASHA or the time budget)"]]
    for status in ("FAILED", "KILLED", "RUNNING"):
        count = sum(t.status == status for t in trials)
        if count or status != "RUNNING":
            rows.append([status.lower(), count])
    if wall_s is not None:
        rows.append(["wall time", _duration(wall_s)])
    if best is not None:
        rows += [[f"best {METRIC}", f"{best.value:.4f}"], ["best trial", best.label]]
    return rows


def render_html(sweep: str, *, uri: str, parent_run_id: Optional[str], trials: list[TrialRecord],
                best: Optional[TrialRecord], kinds: dict[str, str], wall_s: Optional[float],
                figures: dict[str, Path], notes: dict[str, str], confusion: Optional[Confusion]) -> str:
    parts = [f"<h1>Sweep report: {html.escape(sweep)}</h1>",
             f"<p class=meta>Generated {time.strftime('%Y-%m-%d %H:%M:%S')} from MLflow "
             f"{html.escape(_tracking().redact(uri))}, experiment {html.escape(sweep)}"
             + (f", parent run {html.escape(parent_run_id)}" if parent_run_id else "") + ".</p>",
             "<h2>Summary</h2>", _table(None, summary_rows(trials, best, wall_s))]
    if best is not None:
        metrics = [[k, f"{v:.4f}"] for k, v in sorted(best.metrics.items())
                   if k.startswith(("val_", "train_"))]
        parts += [f"<h2>Best trial: {html.escape(best.label)}</h2>",
                  f"<p>MLflow run {html.escape(best.run_id)}. Metrics at its last epoch:</p>",
                  _table(["metric", "value"], metrics),
                  f"<p>Its config (<b>bold</b>: parameters that varied in this sweep; exact "
                  f"values: <code>tunebert best {html.escape(sweep)}</code>):</p>",
                  "<table><thead><tr><th>parameter</th><th>value</th></tr></thead><tbody>"
                  + "".join(f"<tr><td>{f'<b>{html.escape(k)}</b>' if k in kinds else html.escape(k)}"
                            f"</td><td>{_cell(v)}</td></tr>" for k, v in sorted(best.config.items()))
                  + "</tbody></table>"]
    else:
        parts.append(f"<p class=note>No trial finished with a finite {METRIC}; there is no best trial.</p>")
    failed = [t for t in trials if t.status == "FAILED"]
    if failed:
        parts += ["<h2>Failed trials</h2>",
                  _table(["trial", "error"], [[t.label, t.error or "unknown error"] for t in failed])]
    sections = [("history", "Optimization history",
                 f"Best-epoch {METRIC} of every finished and failed trial in the order they started; the "
                 f"orange line is the best finished trial so far."),
                ("importance", "Parameter importances",
                 f"fANOVA importances of the varying parameters for {METRIC}, from the finished trials."),
                ("parallel", "Parallel coordinates",
                 f"Each line is a finished trial; colour is its best-epoch {METRIC}."),
                ("curves", "Learning curves",
                 f"{METRIC} and val_loss per epoch of the top {TOP_CURVES} finished trials."),
                ("pareto", "Pareto front",
                 "Each point is a finished trial that reported both objectives; the joined blue "
                 "points are the feasible trials no other trial beats on both (tunebert best "
                 "--front), the star the one tunebert best hands back."),
                ("confusion", "Confusion matrix (validation split)",
                 "The best trial's checkpoint re-evaluated on the validation split; each row is "
                 "normalised by the number of examples of its true class.")]
    for key, title, caption in sections:
        parts.append(f"<h2>{title}</h2>")
        if key in notes:
            parts.append(f"<p class=note>{html.escape(notes[key])}</p>")
        if key in figures:
            parts.append(_figure_html(figures[key], caption))
    if confusion is not None:
        logged = f"; the trial logged {best.value:.4f}" if best is not None else ""
        parts.append(f"<p>Re-evaluated accuracy on {confusion.total} validation examples: "
                     f"{confusion.accuracy:.4f}{logged}.</p>")
        pairs = most_confused(confusion)
        parts.append(f"<h3>The {len(pairs)} most confused pairs</h3>")
        parts.append(_table(["true class", "predicted as", "examples", "share of the true class"],
                            [[t, p, c, f"{s:.1%}"] for t, p, c, s in pairs])
                     if pairs else "<p>No validation example was misclassified.</p>")
    style = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;"
             "color:#222}table{border-collapse:collapse;margin:.5em 0 1em}td,th{border:1px solid #ccc;"
             "padding:.25em .6em;text-align:left;font-size:.9em}th{background:#f3f3f3}"
             "img{max-width:100%;height:auto;border:1px solid #eee}figure{margin:0 0 1.5em}"
             "figcaption{font-size:.85em;color:#555}.note{background:#fff6db;padding:.5em .8em;"
             "border-left:4px solid #e0b000}.meta{color:#666;font-size:.85em}")
    return ("<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
            f"<title>tunebert report: {html.escape(sweep)}</title><style>{style}</style></head>"
            "<body>\n" + "\n".join(parts) + "\n</body></html>\n")


# --------------------------------------------------------------------------- putting it together


def _wall_time(parent, trials: list[TrialRecord]) -> Optional[float]:
    if parent is not None and "wall_time_s" in parent.data.metrics:
        return float(parent.data.metrics["wall_time_s"])
    ends = [t.end_ms for t in trials if t.end_ms]
    return (max(ends) - min(t.start_ms for t in trials)) / 1000 if ends else None


def _top_curves(uri: str, trials: list[TrialRecord]) -> dict[str, dict[str, list[tuple[int, float]]]]:
    top = sorted((t for t in trials if t.scored), key=lambda t: t.value, reverse=True)[:TOP_CURVES]
    return {f"{t.label} ({t.value:.3f})": {key: _tracking().metric_history(uri, t.run_id, key)
                                           for key in ("val_accuracy", "val_loss")}
            for t in top}


def _confusion_step(uri: str, parent_run_id: Optional[str], sweep: str, storage: str,
                    best: Optional[TrialRecord]) -> tuple[Optional[Confusion], Optional[str]]:
    """The best trial's validation confusion matrix, or (None, why it was skipped)."""
    from tuning.config import load_saved_sweep

    if best is None:
        return None, "No finished trial, so no checkpoint to evaluate."
    try:
        settings = load_saved_sweep(sweep, storage)
    except UserError:
        return None, (f"Skipped: the sweep's saved settings ({sweep}/tunebert_sweep.json under "
                      f"{Path(storage).expanduser().resolve() / 'ray'}) are not available here, so "
                      f"the validation data cannot be rebuilt. Pass the --storage the sweep used.")
    with tempfile.TemporaryDirectory(prefix="tunebert-report-") as tmp:
        checkpoint = best_checkpoint(uri, parent_run_id, settings.sweep_dir, best, Path(tmp))
        if checkpoint is None:
            return None, (f"Skipped: no checkpoint of trial {best.trial_id} in the parent run's "
                          f"best_checkpoint/ artifact or in {settings.sweep_dir}.")
        try:
            return validation_confusion(checkpoint, settings.data, best.trial_id), None
        except UserError as exc:
            return None, f"Skipped: {exc}"


def _pareto_step(trials: list[TrialRecord], sweep: str, uri: str, storage: str,
                 best: Optional[TrialRecord], out: Path, figures: dict[str, Path]) -> None:
    """The Pareto figure, for a sweep with exactly two objectives."""
    from tuning.best import front, sweep_goal

    goal = sweep_goal(sweep, tracking_uri=uri, storage=storage)
    if len(goal.objectives) == 2:
        front_ids = [r.trial_id for r in front(sweep, goal=goal, tracking_uri=uri, storage=storage)]
        figures["pareto"] = plot_pareto(trials, goal, front_ids, best.trial_id if best else None,
                                        out / "pareto.png")


def pick_best(trials: list, sweep: str, uri: str, storage: str):
    """The report's best trial: the one `tunebert best` returns (the one ranking function, so the
    two never disagree: stage-1 contrastive trials excluded, best epoch, same tie-break)."""
    from tuning.best import top_k

    leader = top_k(sweep, 1, tracking_uri=uri, storage=storage)  # the sweep's own objectives
    return next((t for t in trials if leader and t.trial_id == leader[0].trial_id), None)


def build_report(sweep: str, *, storage: str = DEFAULT_ROOT, tracking_uri: Optional[str] = None,
                 output: Optional[str] = None, log_to_mlflow: bool = True) -> Report:
    """Render the report of ``sweep`` into ``output`` (default ``<storage>/reports/<sweep>/``)
    and log it to the sweep's parent MLflow run under ``report/``."""
    check_sweep_name(sweep)
    root = Path(storage).expanduser().resolve()
    uri = resolve_tracking_uri(tracking_uri, root)
    say(f"reading the trials of sweep {sweep!r} from MLflow {_tracking().redact(uri)}")
    trials = load_trials(uri, sweep)
    if not trials:
        raise ConfigError(f"sweep {sweep!r} has no trial runs in MLflow yet; nothing to report")
    parent = _tracking().sweep_run(uri, sweep)
    parent_id = parent.info.run_id if parent is not None else None
    out = Path(output).expanduser() if output else root / "reports" / sweep
    out.mkdir(parents=True, exist_ok=True)
    sweep_dir = root / "ray" / sweep
    notes: dict[str, str] = {}
    figures: dict[str, Path] = {}
    scored = [t for t in trials if t.scored]
    best = pick_best(trials, sweep, uri, storage)

    figures["history"] = plot_history(trials, out / "history.png")
    _pareto_step(trials, sweep, uri, storage, best, out, figures)

    kinds = varying_params(trials)
    space = saved_search_space(uri, parent_id, sweep_dir)
    importances = None
    if not kinds:
        notes["importance"] = "No parameter took more than one value in this sweep."
    else:
        say(f"computing fANOVA importances of {len(kinds)} varying parameters over {len(scored)} finished trials")
        study = build_study(trials, kinds, log_scaled(kinds, trials, space))
        importances, why = param_importances(study)
        if importances is not None:
            figures["importance"] = plot_importances(importances, out / "importance.png")
        else:
            notes["importance"] = why
    parallel_kinds = varying_params(scored)  # an axis where every drawn line agrees says nothing
    if parallel_kinds:
        figures["parallel"] = plot_parallel(trials, parallel_kinds,
                                            log_scaled(parallel_kinds, scored, space), out / "parallel.png")
    else:
        notes["parallel"] = (f"Needs ≥ 2 finished trials with a finite {METRIC} and different "
                             f"parameters; this sweep has {len(scored)} finished.")

    if scored:
        say(f"reading the learning curves of the top {min(TOP_CURVES, len(scored))} trials")
        figures["curves"] = plot_learning_curves(_top_curves(uri, trials), out / "curves.png")
    else:
        notes["curves"] = f"No finished trial with a finite {METRIC}."

    confusion, why = _confusion_step(uri, parent_id, sweep, storage, best)
    if confusion is not None:
        figures["confusion"] = plot_confusion(confusion, out / "confusion.png")
    else:
        notes["confusion"] = why

    page = render_html(sweep, uri=uri, parent_run_id=parent_id, trials=trials, best=best,
                       kinds=kinds, wall_s=_wall_time(parent, trials), figures=figures,
                       notes=notes, confusion=confusion)
    html_path = out / HTML_FILE
    html_path.write_text(page, encoding="utf-8")
    logged_to = None
    if log_to_mlflow and parent_id:
        say(f"logging the report to MLflow run {parent_id} under {ARTIFACT_DIR}/")
        _log_folder(uri, parent_id, html_path, figures)
        _tracking().link_report(uri, parent_id, f"{ARTIFACT_DIR}/{HTML_FILE}", str(html_path.resolve()))
        logged_to = parent_id
    elif log_to_mlflow:
        say(f"note: sweep {sweep!r} has no parent MLflow run; the report is only on disk")
    say(f"report: {html_path}")
    return Report(sweep, out, html_path, figures, trials, importances, confusion, notes, logged_to)


def _log_folder(uri: str, run_id: str, html_path: Path, figures: dict[str, Path]) -> None:
    """Log exactly this report's files (the output folder may hold other things)."""
    with tempfile.TemporaryDirectory(prefix="tunebert-report-") as tmp:
        for path in [html_path, *figures.values()]:
            shutil.copy2(path, Path(tmp) / path.name)
        _tracking().log_artifacts_to(uri, run_id, tmp, ARTIFACT_DIR)


# --------------------------------------------------------------------------- the CLI command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``tunebert report``."""
    parser.add_argument("name", help="the sweep to report on")
    parser.add_argument("--output", "-o", default=None,
                        help="folder for report.html and the PNGs (default: <storage>/reports/<name>/)")
    parser.add_argument("--no-mlflow", action="store_true",
                        help="only write the local folder; do not log the report to the sweep's "
                             "parent MLflow run")
    g = parser.add_argument_group("where results are")
    g.add_argument("--storage", default=DEFAULT_ROOT,
                   help="root folder the sweep used: Ray Tune state, checkpoints and the default "
                        "MLflow store (default: ./tunebert-runs)")
    g.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
                        "sqlite:///<storage>/mlflow.db)")


def run(args: argparse.Namespace) -> int:
    report = build_report(args.name, storage=args.storage, tracking_uri=args.tracking_uri,
                          output=args.output, log_to_mlflow=not args.no_mlflow)
    for key, note in report.notes.items():
        say(f"note ({FIGURES[key]}): {note}")
    if report.mlflow_run_id:
        say(f"MLflow: artifacts {ARTIFACT_DIR}/{HTML_FILE} of the parent run {report.mlflow_run_id} "
            f"(experiment {args.name!r})")
    return 0
