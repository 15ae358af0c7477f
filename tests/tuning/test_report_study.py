"""`tuning.report_study`: a sweep's trials as an Optuna study (numbered in start order, only scored
trials COMPLETE), and fANOVA importances or the reason there are none. No Ray, no MLflow."""

import math

import pytest

from tuning.report_data import TrialRecord, log_scaled, varying_params
from tuning.report_study import MIN_IMPORTANCE_TRIALS, build_study, completed, param_importances


def _trial(number, status, accuracy, **config):
    metrics = {} if accuracy is None else {"val_accuracy": accuracy, "best_val_accuracy": accuracy}
    return TrialRecord(run_id=f"run{number}", trial_id=f"t{number}", status=status,
                       end_reason="completed", config={"epochs": 2, **config}, metrics=metrics,
                       start_ms=number, end_ms=number + 1)


TRIALS = [_trial(0, "FAILED", None, lr=2e-5, pooling="cls"),
          _trial(1, "FINISHED", 0.61, lr=1e-4, pooling="cls"),
          _trial(2, "FINISHED", 0.42, lr=1e-5, pooling="mean"),
          _trial(3, "KILLED", 0.30, lr=5e-4, pooling="cls"),
          _trial(4, "FINISHED", 0.73, lr=2e-4, pooling="max"),
          _trial(5, "RUNNING", None, lr=1e-3, pooling="max"),
          _trial(6, "FINISHED", 0.66, lr=5e-5, pooling="mean")]


def test_study_numbers_trials_in_start_order_and_completes_only_scored_ones():
    kinds = varying_params(TRIALS)
    assert kinds == {"lr": "numeric", "pooling": "categorical"}
    study = build_study(TRIALS, kinds, log_scaled(kinds, TRIALS, {}))
    states = [t.state.name for t in study.trials]
    assert states == ["FAIL", "COMPLETE", "COMPLETE", "FAIL", "COMPLETE", "RUNNING", "COMPLETE"]
    assert [t.value for t in completed(study)] == [0.61, 0.42, 0.73, 0.66]
    lr = study.trials[0].distributions["lr"]
    assert lr.log and (lr.low, lr.high) == (1e-5, 1e-3)  # every trial's value, failed ones too
    assert study.trials[2].params == {"lr": 1e-5, "pooling": "mean"}


def test_importances_sum_to_one_and_are_reproducible():
    kinds = varying_params(TRIALS)
    study = build_study(TRIALS, kinds, log_scaled(kinds, TRIALS, {}))
    importances, why = param_importances(study)
    assert why is None and set(importances) == {"lr", "pooling"}
    assert math.fsum(importances.values()) == pytest.approx(1.0)
    assert param_importances(build_study(TRIALS, kinds, set()))[0].keys() == importances.keys()
    assert param_importances(study) == (importances, None)  # seeded


def test_importances_say_why_they_are_missing():
    few = TRIALS[:3]  # two finished trials
    kinds = varying_params(few)
    importances, why = param_importances(build_study(few, kinds, set()))
    assert importances is None and f"≥ {MIN_IMPORTANCE_TRIALS} finished trials" in why and "has 2" in why
    same = [_trial(i, "FINISHED", 0.5, lr=10.0 ** -i) for i in range(1, 5)]
    importances, why = param_importances(build_study(same, varying_params(same), set()))
    assert importances is None and "same val_accuracy" in why
