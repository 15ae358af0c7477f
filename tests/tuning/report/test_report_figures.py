"""`tuning.report.figures`: each figure of the report drawn from a stand-in sweep (no Ray, no
MLflow), written as a real PNG, its legend clear of every plot area, matplotlib's global style
left as it was (Optuna's figures switch it to ggplot)."""

import numpy as np
import pytest
from PIL import Image

from tuning.report import figures as report_figures
from tuning.tracking.best import Goal
from tuning.config import Constraint, Objective
from tuning.report.checkpoint import Confusion
from tuning.report.data import TrialRecord, log_scaled, varying_params
from tuning.report.study import build_study, param_importances


def _trial(number, status, accuracy, reason="completed", **config):
    metrics = {} if accuracy is None else {"val_accuracy": accuracy, "best_val_accuracy": accuracy,
                                           "latency_ms_p50": 2.0 + number, "size_mb": 40.0 * number}
    return TrialRecord(run_id=f"run{number}", trial_id=f"t{number}", status=status, end_reason=reason,
                       config={"epochs": 3, **config}, metrics=metrics, start_ms=number,
                       end_ms=number + 1)


# a failed first trial (no value at all), one failed with a value, two stopped early, a killed
# and a running one: every kind of point the history draws
TRIALS = [_trial(0, "FAILED", None, "error", lr=2e-5, weight_decay=0.0, pooling="cls"),
          _trial(1, "FINISHED", 0.61, lr=1e-4, weight_decay=0.0, pooling="cls"),
          _trial(2, "FINISHED", 0.42, "stopped early (ASHA)", lr=1e-5, weight_decay=0.1, pooling="mean"),
          _trial(3, "FAILED", 0.55, "error", lr=3e-4, weight_decay=0.01, pooling="cls"),
          _trial(4, "KILLED", 0.30, "killed", lr=5e-4, weight_decay=0.01, pooling="cls"),
          _trial(5, "FINISHED", 0.73, lr=2e-4, weight_decay=0.05, pooling="max"),
          _trial(6, "FINISHED", 0.70, "stopped early (time budget)", lr=7e-4, weight_decay=0.02,
                 pooling="cls"),
          _trial(7, "RUNNING", None, "", lr=1e-3, weight_decay=0.0, pooling="max"),
          _trial(8, "FINISHED", 0.66, lr=5e-5, weight_decay=0.08, pooling="mean")]
SCORED = [t for t in TRIALS if t.scored]
BEST = TRIALS[5]


@pytest.fixture
def drawn(monkeypatch):
    """Every figure a plot function saves, as {file name: [(legend labels, overlaps a plot area)]},
    taken just before it is written and closed."""
    seen = {}
    save = report_figures._save

    def looking(fig, path):
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        areas = [ax.get_window_extent(renderer) for ax in fig.axes]
        legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
        seen[path.name] = [([t.get_text() for t in legend.get_texts()],
                            any(legend.get_window_extent(renderer).overlaps(area) for area in areas))
                           for legend in legends]
        return save(fig, path)

    monkeypatch.setattr(report_figures, "_save", looking)
    return seen


def _is_picture(path):
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        width, height = image.size
    assert path.stat().st_size > 10_000 and 500 <= width <= 4000 and 250 <= height <= 4000, image.size


def test_optuna_figures(drawn, tmp_path):
    import matplotlib

    def style():
        return {k: v for k, v in matplotlib.rcParams.items() if not k.startswith("backend")}

    style_before = style()
    kinds = varying_params(TRIALS)
    study = build_study(TRIALS, kinds, log_scaled(kinds, TRIALS, {}))
    importances, _ = param_importances(study)
    parallel_kinds = varying_params(SCORED)
    paths = [report_figures.plot_history(study, TRIALS, BEST, tmp_path / "history.png"),
             report_figures.plot_importances(study, importances, tmp_path / "importance.png"),
             report_figures.plot_parallel(build_study(SCORED, parallel_kinds, {"lr"}), parallel_kinds,
                                          tmp_path / "parallel.png")]
    for path in paths:
        _is_picture(path)
    assert style() == style_before  # Optuna's ggplot did not leak
    ((labels, covers),) = drawn["history.png"]
    assert labels == ["finished", "best so far", "stopped early (ASHA or time budget)",
                      "failed (last value before the error)", "failed before any result", "best: t5"]
    assert not covers
    assert drawn["importance.png"] == [] and drawn["parallel.png"] == []  # nothing to hide bars or lines


def test_figures_drawn_here(drawn, tmp_path):
    curves = {f"{t.label} ({t.value:.3f})": {"val_accuracy": [(1, t.value - 0.1), (2, t.value)],
                                             "val_loss": [(1, 2.0 - t.value), (2, 1.5 - t.value)]}
              for t in SCORED}
    goal = Goal((Objective("val_accuracy", "max"), Objective("latency_ms_p50", "min")),
                (Constraint.parse("size_mb<=250"),))
    counts = np.array([[5, 1, 0], [2, 6, 0], [0, 1, 7]])
    confusion = Confusion("t5", counts, ["alarm_set", "alarm_query", "play_music"], 18 / 22)
    paths = [report_figures.plot_learning_curves(curves, tmp_path / "curves.png"),
             report_figures.plot_pareto(TRIALS, goal, ["t1", "t5"], "t5", tmp_path / "pareto.png"),
             report_figures.plot_confusion(confusion, tmp_path / "confusion.png")]
    for path in paths:
        _is_picture(path)
    ((labels, covers),) = drawn["curves.png"]
    assert labels == list(curves) and not covers
    ((labels, covers),) = drawn["pareto.png"]
    assert "chosen (tunebert best): t5" in labels and not covers
    assert drawn["confusion.png"] == []


def test_the_pareto_figure_zooms_only_on_a_front_squeezed_into_a_corner():
    from tuning.report.figures import _front_window

    front = [(1.0, 0.88), (2.0, 0.90)]
    # one poor trial far away: the front spans a sliver of the plot, so a window around it
    (x0, x1), (y0, y1) = _front_window(front, front + [(40.0, 0.10)])
    assert x0 < 1.0 and x1 > 2.0 and x1 < 40.0 and y0 < 0.88 and y1 > 0.90 and y0 > 0.10
    # the front spans most of the plot already, or is a single point: no zoom
    assert _front_window(front, front + [(1.5, 0.87)]) is None
    assert _front_window(front[:1], front + [(40.0, 0.10)]) is None


def test_parallel_coordinates_put_an_unused_parameter_at_none(monkeypatch, tmp_path):
    ticks = set()
    save = report_figures._save

    def reading_ticks(fig, path):
        fig.canvas.draw()
        ticks.update(label.get_text() for ax in fig.axes for label in ax.get_yticklabels())
        return save(fig, path)

    monkeypatch.setattr(report_figures, "_save", reading_ticks)
    # head_hidden is used only with an mlp head; the linear trials' configs hold the default 256
    trials = [_trial(i, "FINISHED", accuracy, lr=10.0 ** -(i + 3), head=head, head_hidden=hidden)
              for i, (accuracy, head, hidden) in enumerate([(0.8, "linear", 256), (0.4, "mlp", 16),
                                                            (0.6, "mlp", 64), (0.7, "linear", 256)])]
    kinds = varying_params(trials)
    _is_picture(report_figures.plot_parallel(build_study(trials, kinds, {"lr"}), kinds,
                                             tmp_path / "parallel.png"))
    assert "None" in ticks and "64" in ticks and "256" not in ticks
