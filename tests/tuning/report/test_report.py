"""`tunebert report`: a real tiny sweep (Ray, Optuna, SQLite MLflow), then its HTML + PNG report."""


import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from trainables.errors import UserError
from tuning.config import SweepConfig
from tuning.cli import build_parser
from tuning.report import FIGURES, Confusion, build_report, confusion_counts, most_confused, run
from tuning.sweep.runner import run_sweep


def _args(*argv):
    """``tunebert report ARGV`` as the CLI parses it."""
    return build_parser().parse_args(["report", *argv])


@pytest.mark.slow
def test_report_of_a_tiny_sweep(ray_local, tiny_model_dir, tmp_path, fail_marker):
    fail_marker.write_text("2")  # the first trial to start epoch 2 raises: one FAILED trial
    cfg = SweepConfig(name="rep", model=tiny_model_dir, max_length=64, epochs=2, num_trials=4,
                      storage=str(tmp_path), scheduler="none", warm_start=("llrd_warmup",),
                      max_failures=0, max_concurrent=2, seed=1)
    outcome = run_sweep(cfg)
    assert outcome.counts["FAILED"] == 1 and outcome.counts["FINISHED"] == 3

    report = build_report("rep", storage=str(tmp_path))

    # every figure is a real picture of a sensible size, written to the default folder
    assert report.output_dir == tmp_path / "reports" / "rep"
    assert set(report.figures) == set(FIGURES) - {"pareto"}, report.notes  # one objective: no front
    for key, png in report.figures.items():
        assert png.parent == report.output_dir and png.stat().st_size > 15_000, key
        with Image.open(png) as image:
            image.verify()
        with Image.open(png) as image:
            width, height = image.size
        assert 500 <= width <= 4000 and 250 <= height <= 4000, (key, image.size)

    # the page references each PNG by relative path and embeds it, and names the best trial
    page = report.html.read_text(encoding="utf-8")
    for png in report.figures.values():
        assert f'href="{png.name}"' in page
    assert page.count("data:image/png;base64,") == len(report.figures)
    assert outcome.best.trial_id in page and "failed" in page.lower()
    assert "most confused pairs" in page
    assert "Pareto front" not in page  # a section only for a sweep with two objectives

    # fANOVA ran over the varying parameters (the preset differs from the sampled trials in lr)
    assert report.importances and "lr" in report.importances
    assert sum(report.importances.values()) == pytest.approx(1.0)

    # the confusion matrix is the best trial's, on the whole validation split
    val_size = sum(1 for line in open(_demo("validation.jsonl")) if line.strip())
    assert report.confusion.trial_id == outcome.best.trial_id
    assert report.confusion.total == val_size
    assert report.confusion.counts.shape == (12, 12)
    assert report.confusion.accuracy == pytest.approx(outcome.best.score("val_accuracy"), abs=1e-6)

    # the same files are artifacts of the parent run, under report/
    client = MlflowClient(cfg.resolved_tracking_uri())
    assert report.mlflow_run_id
    logged = {a.path for a in client.list_artifacts(report.mlflow_run_id, "report")}
    assert logged == {f"report/{p.name}" for p in [report.html, *report.figures.values()]}

    # the CLI entry point writes to --output and can leave MLflow alone
    out = tmp_path / "elsewhere"
    assert run(_args("rep", "--storage", str(tmp_path), "--output", str(out), "--no-mlflow")) == 0
    assert (out / "report.html").is_file() and (out / "confusion.png").is_file()

    # unknown sweep in an existing store: the error names the sweeps that exist
    with pytest.raises(UserError, match=r"no sweep named 'nope'.*\['rep'\]"):
        run(_args("nope", "--storage", str(tmp_path)))


def _demo(name):
    from trainables.data import DEMO_DIR

    return DEMO_DIR / name


def test_unknown_sweep_is_a_clear_user_error(tmp_path):
    with pytest.raises(UserError, match=r"no MLflow store at .* \(so no sweep 'never-ran'\)"):
        run(_args("never-ran", "--storage", str(tmp_path)))
    with pytest.raises(UserError, match="sweep name 'bad name!' is not allowed"):
        build_report("bad name!", storage=str(tmp_path))


def test_confusion_counts_and_most_confused_pairs():
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    predictions = np.array([0, 1, 1, 1, 0, 2, 2, 1])
    counts = confusion_counts(labels, predictions, 3)
    assert counts.tolist() == [[1, 2, 0], [1, 1, 0], [0, 1, 2]]
    pairs = most_confused(Confusion("t", counts, ["a", "b", "c"], 0.5), k=2)
    assert pairs[0] == ("a", "b", 2, pytest.approx(2 / 3))
    assert pairs[1][2] == 1 and len(pairs) == 2


def test_the_best_trial_config_shows_parameters_it_did_not_use_as_not_used():
    from tuning.report.data import TrialRecord, varying_params
    from tuning.report.page import render_html

    def trial(number, accuracy, head, head_hidden, optimizer, momentum):
        return TrialRecord(run_id=f"run{number}", trial_id=f"t{number}", status="FINISHED",
                           end_reason="completed", metrics={"val_accuracy": accuracy},
                           config={"lr": 1e-4 * (number + 1), "head": head, "head_hidden": head_hidden,
                                   "optimizer": optimizer, "momentum": momentum},
                           start_ms=number, end_ms=number + 1)

    # the linear adamw trial's config holds the defaults head_hidden 256 and momentum 0.9
    best = trial(0, 0.9, "linear", 256, "adamw", 0.9)
    trials = [best, trial(1, 0.5, "mlp", 64, "sgd", 0.5), trial(2, 0.6, "mlp", 128, "sgd", 0.7)]
    kinds = varying_params(trials)
    page = render_html("cond", store="sqlite:///x", parent_run_id=None, trials=trials, best=best,
                       kinds=kinds, wall_s=None, figures={}, notes={}, confusion=None)
    config = page[page.index("Its config"):]
    assert "<b>lr</b>" in config and "<b>head</b>" in config and "<b>optimizer</b>" in config
    assert "<b>head_hidden</b>" not in config and "<b>momentum</b>" not in config
    assert "<td>head_hidden</td><td>— (not used: head=linear)</td>" in config
    assert "<td>momentum</td><td>— (not used: optimizer=adamw)</td>" in config
    assert ">256<" not in config and ">0.9<" not in config


def test_the_importance_section_names_the_conditional_parameters_it_left_out(tmp_path):
    from tuning.report import _importance_step
    from tuning.report.data import TrialRecord, varying_params
    from tuning.report.study import build_study

    def trial(number, accuracy, head, head_hidden):
        return TrialRecord(run_id=f"run{number}", trial_id=f"t{number}", status="FINISHED",
                           end_reason="completed", metrics={"val_accuracy": accuracy},
                           config={"lr": 1e-5 * (number + 1), "head": head, "head_hidden": head_hidden},
                           start_ms=number, end_ms=number + 1)

    trials = [trial(0, 0.8, "linear", 256), trial(1, 0.4, "mlp", 16), trial(2, 0.7, "linear", 256),
              trial(3, 0.5, "mlp", 64), trial(4, 0.6, "mlp", 32)]
    kinds = varying_params(trials)
    figures, notes = {}, {}
    importances = _importance_step(trials, kinds, build_study(trials, kinds, set()), tmp_path,
                                   figures, notes)
    assert set(importances) == {"lr", "head"} and figures["importance"].is_file()
    assert notes["importance"].startswith("No importance for head_hidden (used by 3 of 5 finished "
                                          "trials; not used: head=linear in the others).")
