"""The report's figures, one function each, every one written to a PNG and its path returned.

Drawn by ``optuna.visualization.matplotlib`` from the study ``tuning.report.study`` rebuilds:
the optimization history (with what it cannot show added on top), the parameter importances and
the parallel coordinates. Drawn here: the learning curves, the Pareto front and the confusion
matrix; each function says why. Legends sit outside the axes so they never hide data.

matplotlib and optuna load inside the functions, so importing this module stays fast.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from trainables.registry import REPORTED_METRICS, ranked_metric
from tuning.report.checkpoint import Confusion
from tuning.report.data import METRIC, TrialRecord
from tuning.report.study import completed
from tuning.report.tagging import OTHER_TYPES, SlotConfusion
from tuning.tracking.best import score_key

DPI = 110


def target_name(metric: str) -> str:
    """What the study's value is, on axes and colour bars."""
    return f"best-epoch {metric}"


def _metric_of(trials: list[TrialRecord]) -> str:
    return trials[0].metric if trials else METRIC
LEGEND_OUTSIDE = dict(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, bbox_inches="tight", facecolor="white")
    _pyplot().close(fig)
    return path


@contextlib.contextmanager
def _optuna_drawing(figsize: tuple[float, float]) -> Iterator[None]:
    """Around a call to ``optuna.visualization.matplotlib``: its figures get ``figsize``; the
    ``plt.style.use("ggplot")`` some of them call (which changes matplotlib's global style) is
    undone afterwards; its "experimental" warning, given on every call, is silenced, and so is
    its log line about a study without finished trials (the page's note says that already)."""
    import matplotlib
    import optuna
    from optuna.exceptions import ExperimentalWarning

    _pyplot()
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        with matplotlib.rc_context({"figure.figsize": figsize}), warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            # optuna's history calls plt.legend() even when it drew nothing (no finished trial)
            warnings.filterwarnings("ignore", message="No artists with labels found")
            yield
    finally:
        optuna.logging.set_verbosity(verbosity)


# --------------------------------------------------------------------------- from optuna


def plot_history(study, trials: list[TrialRecord], best: Optional[TrialRecord], path: Path) -> Path:
    """Optuna's optimization history of ``study`` (``report_study.build_study`` of all
    ``trials``: its trial number is the start order) with what it cannot show drawn on top:
    trials stopped early (hollow), failed trials (their last value, or a triangle on the bottom
    edge when they failed before any), and the report's best trial starred."""
    import matplotlib.transforms as transforms
    from matplotlib.ticker import MaxNLocator
    from optuna.visualization.matplotlib import plot_optimization_history

    numbered = list(enumerate(trials))  # (optuna trial number, trial)
    target = target_name(_metric_of(trials))
    with _optuna_drawing((9.0, 4.5)):
        ax = plot_optimization_history(study, target_name=target)
        for artist in [*ax.collections, *ax.lines]:  # name optuna's two series as this report does
            artist.set_label({target: "finished", "Best Value": "best so far"}
                             .get(artist.get_label(), artist.get_label()))
        stopped = [(i, t.value) for i, t in numbered if t.scored and t.stopped_early]
        if stopped:  # white over optuna's dot: the hollow marker of a trial that stopped early
            ax.scatter(*zip(*stopped), s=42, facecolors="white", edgecolors="tab:blue", zorder=3,
                       label="stopped early (ASHA or time budget)")
        failed = [(i, t.value) for i, t in numbered if t.status == "FAILED" and math.isfinite(t.value)]
        if failed:  # Optuna's FAIL trials have no value; the report shows the last one
            ax.scatter(*zip(*failed), s=60, marker="x", color="tab:red", zorder=3,
                       label="failed (last value before the error)")
        blank = [i for i, t in numbered if t.status == "FAILED" and not math.isfinite(t.value)]
        if blank:  # no value at all: a triangle on the bottom edge, off the value scale
            ax.scatter(blank, [0.0] * len(blank), s=60, marker="v", color="tab:red", clip_on=False,
                       transform=transforms.blended_transform_factory(ax.transData, ax.transAxes),
                       zorder=3, label="failed before any result")
        if best is not None and best in trials and best.scored:
            ax.scatter([trials.index(best)], [best.value], s=260, marker="*", color="gold",
                       edgecolors="black", linewidths=0.6, zorder=4, label=f"best: {best.label}")
        ax.set_xlabel("trial number (start order; 0 = the first to start)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if trials:
            ax.set_xlim(-0.5, len(trials) - 0.5)
        ax.legend(**LEGEND_OUTSIDE)
        return _save(ax.figure, path)


def _known_importances(importances: dict[str, float]):
    """An Optuna importance evaluator that hands back ``importances``: the figure then shows
    exactly the numbers the report computed (and fANOVA is not fitted a second time)."""
    from optuna.importance import BaseImportanceEvaluator

    class KnownImportances(BaseImportanceEvaluator):
        def evaluate(self, study, params=None, *, target=None) -> dict[str, float]:
            return dict(importances)

    return KnownImportances()


def plot_importances(study, importances: dict[str, float], path: Path, metric: str = METRIC) -> Path:
    """Optuna's parameter-importance bars (most important on top) of ``importances``
    (``report_study.param_importances`` of ``study``, whose values are ``metric``)."""
    from optuna.visualization.matplotlib import plot_param_importances

    with _optuna_drawing((8.0, max(3.0, 1.2 + 0.38 * len(importances)))):
        ax = plot_param_importances(study, evaluator=_known_importances(importances),
                                    target_name=metric)
        ax.get_legend().remove()  # its one entry could sit on a bar; the axis label says it
        ax.set_xlabel(f"importance for {metric} (fANOVA, sums to 1)")
        return _save(ax.figure, path)


def plot_parallel(study, kinds: dict[str, str], path: Path, metric: str = METRIC) -> Path:
    """Optuna's parallel coordinates of ``study``'s finished trials over the parameters in
    ``kinds`` (log axes where the study's distribution is logarithmic), coloured by ``metric``
    (what the study's values are)."""
    from optuna.visualization.matplotlib import plot_parallel_coordinate

    axes = len(kinds) + 1  # the metric's axis comes first
    with _optuna_drawing((max(8.0, 1.25 * axes + 1.5), 6.0)):
        ax = plot_parallel_coordinate(study, params=list(kinds), target_name=target_name(metric))
        # optuna colours by "Blues", which draws the worst trials near white on white; the colour
        # bar follows the lines' colour map
        for lines in ax.collections:
            lines.set_cmap("viridis")
        # its slanted axis names are centred on their axes, so long ones run into the next name
        for name in ax.get_xticklabels():
            name.set(ha="left", rotation_mode="anchor", fontsize=9)
        for axis in ax.get_shared_x_axes().get_siblings(ax):  # its own and one twin per parameter
            axis.tick_params(axis="y", which="both", labelsize=8)
        finished = len(completed(study))
        ax.set_title(f"Parallel coordinates of the varying parameters ({finished} finished "
                     f"trial{'s' if finished != 1 else ''})", y=1.03)
        return _save(ax.figure, path)


# --------------------------------------------------------------------------- drawn here


def _curve_keys(curves: dict[str, dict[str, list[tuple[int, float]]]]) -> list[str]:
    """The metrics of the curves, in the order the first trial's history lists them."""
    return list(dict.fromkeys(key for history in curves.values() for key in history))


def plot_learning_curves(curves: dict[str, dict[str, list[tuple[int, float]]]], path: Path,
                         metric: str = METRIC) -> Path:
    """Each metric of ``curves`` (``tuning.report.data.top_curves``: the sweep's metric and
    val_loss, or one per task of a multitask sweep) per epoch of the top trials, one panel per
    metric (two per row), one colour per trial; ``metric`` is the one the trials are ranked by.

    Drawn here, not with optuna's plot_intermediate_values: that draws one value per step (the
    objective) for every trial, none named, while this shows val_loss (and each task's score)
    beside the objective for the top trials only, each named in the legend."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    keys = _curve_keys(curves) or [metric, "val_loss"]
    rows = math.ceil(len(keys) / 2)
    fig, grid = plt.subplots(rows, 2, figsize=(13, 4.5 if rows == 1 else 3.8 * rows), squeeze=False)
    panels = list(zip(grid.flat, keys))
    for ax in list(grid.flat)[len(keys):]:  # an odd number of metrics leaves one cell empty
        ax.set_visible(False)
    for (label, history), color in zip(curves.items(), plt.get_cmap("tab10").colors):
        for ax, key in panels:
            points = sorted(history.get(key, []))
            if points:
                ax.plot(*zip(*points), marker="o", ms=4, color=color, label=label)
    for ax, key in panels:
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.set_title(f"Top {len(curves)} trials: {key}")
    named = {}  # one legend entry per trial, from whichever panel drew it
    for ax, _ in panels:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            named.setdefault(label, handle)
    labels = [label for label in curves if label in named]
    fig.tight_layout(rect=(0, 0.1 / rows, 1, 1))  # the legend goes in the strip left below the axes
    fig.legend([named[label] for label in labels], labels, loc="lower center",
               ncol=max(1, min(len(labels), 3)), fontsize=8, title=f"trial (best-epoch {metric})",
               title_fontsize=8, frameon=False)
    return _save(fig, path)


def _objective_label(metric: str, mode: str) -> str:
    unit = getattr(REPORTED_METRICS.get(metric), "unit", "")
    name = "best-epoch " + metric if ranked_metric(metric) != metric else metric
    return f"{name} ({unit + ', ' if unit else ''}{'higher' if mode == 'max' else 'lower'} is better)"


def _front_window(front: list[tuple[float, float]], every: list[tuple[float, float]]
                  ) -> Optional[tuple[tuple[float, float], tuple[float, float]]]:
    """Axis limits ``((x0, x1), (y0, y1))`` around the front with a margin, or None when the front
    already spans most of the plot (no zoom needed) or has fewer than 2 points."""
    if len(front) < 2 or len(every) <= len(front):
        return None
    xs, ys = [p[0] for p in front], [p[1] for p in front]
    all_x, all_y = [p[0] for p in every], [p[1] for p in every]
    span_x, span_y = max(xs) - min(xs), max(ys) - min(ys)
    if span_x >= 0.5 * (max(all_x) - min(all_x)) and span_y >= 0.5 * (max(all_y) - min(all_y)):
        return None
    pad_x = 0.25 * span_x or 0.05 * abs(xs[0]) or 0.1
    pad_y = 0.35 * span_y or 0.05 * abs(ys[0]) or 0.01
    return (min(xs) - pad_x, max(xs) + pad_x), (min(ys) - pad_y, max(ys) + pad_y)


def plot_pareto(trials: list[TrialRecord], goal, front_ids: list[str], chosen_id: Optional[str],
                path: Path) -> Path:
    """The two objectives of every finished trial that reported both (grey; infeasible: crosses),
    the Pareto front (``tuning.tracking.best.front``) highlighted and joined, the point ``best`` hands back
    starred. Drawn here, not with optuna.visualization's plot_pareto_front: the front and the
    chosen point must be exactly `tunebert best --front`'s (constraints, best epochs, trials with
    a missing objective left out), which an Optuna study rebuilt from MLflow would not know."""

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
    # a front squeezed into a corner by a few poor trials gets a second panel, zoomed on it
    window = _front_window([point(t) for t in on_front], [point(t) for t in shown])
    if window:
        fig, (overview, ax) = plt.subplots(1, 2, figsize=(13, 5.2), gridspec_kw={"width_ratios": [1, 1.2]})
    else:
        fig, ax = plt.subplots(figsize=(8.5, 5.2))
    rest = [point(t) for t in feasible if t.trial_id not in front_ids]
    infeasible = [point(t) for t in shown if not goal.feasible(t.metrics)]
    for panel in ([overview, ax] if window else [ax]):
        labelled = panel is ax
        if rest:
            panel.scatter(*zip(*rest), s=36, color="0.65", zorder=2,
                          label="feasible, dominated" if labelled else None)
        if infeasible:
            panel.scatter(*zip(*infeasible), s=40, marker="x", color="0.55", zorder=2,
                          label=("infeasible (breaks " + ", ".join(str(c) for c in goal.constraints) + ")")
                          if labelled else None)
        if on_front:
            panel.plot(*zip(*map(point, on_front)), color="tab:blue", lw=1.2, ls="--", zorder=3)
            panel.scatter(*zip(*map(point, on_front)), s=60, color="tab:blue", edgecolors="black",
                          linewidths=0.5, zorder=4,
                          label=f"Pareto front ({len(on_front)} trials)" if labelled else None)
        if chosen_id in by_id:
            panel.scatter(*point(by_id[chosen_id]), s=320, marker="*", color="gold", edgecolors="black",
                          linewidths=0.6, zorder=6,
                          label=f"chosen (tunebert best): {by_id[chosen_id].label}" if labelled else None)
        panel.set_xlabel(_objective_label(x_obj.metric, x_obj.mode))
        panel.set_ylabel(_objective_label(y_obj.metric, y_obj.mode))
        panel.grid(alpha=0.3)
    # front labels alternate above and below the line, so neighbours do not overprint
    for i, t in enumerate(on_front):
        ax.annotate(t.label, point(t), xytext=(6, 7 if i % 2 == 0 else -13), textcoords="offset points",
                    fontsize=8, zorder=5)
    missing = len(finished) - len(shown)
    title = f"Pareto front: {y_obj} vs {x_obj}"
    if window:
        (x0, x1), (y0, y1) = window
        ax.set_xlim(x0, x1)
        ax.set_ylim(y0, y1)
        overview.set_title(f"all {len(shown)} trials", fontsize=10)
        overview.add_patch(_pyplot().Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ls=":",
                                               color="tab:blue", lw=1.0, zorder=1))
        title += "\nzoomed on the front (dotted box on the left)"
    ax.set_title(title + (f"\n{missing} finished trial(s) lacking an objective (e.g. stopped before "
                          f"their last epoch) not shown" if missing else ""), fontsize=10)
    ax.legend(**LEGEND_OUTSIDE)
    if window:
        fig.tight_layout()
    return _save(fig, path)


def _draw_confusion(counts: np.ndarray, names: list[str], *, title: str, rows: str, columns: str,
                    path: Path) -> Path:
    """Row-normalised ``counts`` (rows ``rows``, columns ``columns``); sized so that 60 names stay
    legible; each cell's share printed where there is room."""
    plt = _pyplot()
    from mpl_toolkits.axes_grid1 import make_axes_locatable

    n = len(names)
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    side = min(max(6.0, 0.3 * n + 3.0), 32.0)
    tick_size = 9 if n <= 20 else 7 if n <= 70 else 5
    shown = [name if len(name) <= 28 else name[:27] + "…" for name in names]
    fig, ax = plt.subplots(figsize=(side + 1.0, side))
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks(range(n), shown, rotation=90, fontsize=tick_size)
    ax.set_yticks(range(n), shown, fontsize=tick_size)
    ax.set_xlabel(columns, fontsize=10 if n <= 20 else 13)
    ax.set_ylabel(rows, fontsize=10 if n <= 20 else 13)
    if n <= 20:  # room to print each cell's share
        for (i, j), value in np.ndenumerate(share):
            if counts[i, j]:
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if value > 0.6 else "black")
    ax.set_xticks(np.arange(n + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(n + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="0.9", lw=0.4)
    ax.tick_params(which="minor", length=0)
    colorbar_axes = make_axes_locatable(ax).append_axes("right", size=0.25, pad=0.15)
    fig.colorbar(image, cax=colorbar_axes, label=f"share of the {rows}")
    ax.set_title(title, fontsize=12 if n <= 20 else 15)
    return _save(fig, path)


def plot_confusion(confusion: Confusion, path: Path) -> Path:
    """Row-normalised confusion matrix; sized so that 60 class names stay legible.

    Drawn here: Optuna draws studies, and a confusion matrix is not one."""
    return _draw_confusion(
        confusion.counts, confusion.names, rows="true class", columns="predicted class", path=path,
        title=(f"Confusion matrix of trial {confusion.trial_id}, validation split\n"
               f"{confusion.total} examples, accuracy {confusion.accuracy:.3f}; rows sum to 1"))


def plot_slot_confusion(slots: SlotConfusion, path: Path) -> Path:
    """The word-level slot confusion (``tuning.report.tagging``): the most frequent slot types,
    "O" and the other types pooled, rows normalised by the words of each gold type."""
    pooled = f", the rest as {OTHER_TYPES!r}" if OTHER_TYPES in slots.names else ""
    return _draw_confusion(
        slots.counts, slots.names, rows="gold slot type", columns="predicted slot type", path=path,
        title=(f"Slot confusion of trial {slots.trial_id}, validation split\n"
               f"{slots.total} tagged words; the {slots.types_shown} most frequent slot types"
               f"{pooled}; B-/I- merged; rows sum to 1"))
