"""`tuning.report.study`: a sweep's trials as an Optuna study (numbered in start order, only scored
trials COMPLETE), and fANOVA importances or the reason there are none. No Ray, no MLflow."""

import math

import pytest

from tuning.report.data import TrialRecord, log_scaled, varying_params
from tuning.report.study import (MIN_IMPORTANCE_TRIALS, build_study, completed, param_importances,
                                  unassessed_note)


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


# A sweep with conditional parameters: head_hidden is used only by an mlp head, momentum only by
# sgd. Every trial's config still holds a value for both (the trainable fills in the registry's
# default, 256 and 0.9), as MLflow records it.
def _conditional(number, accuracy, lr, head, optimizer, head_hidden=256, momentum=0.9):
    return _trial(number, "FINISHED", accuracy, lr=lr, head=head, head_hidden=head_hidden,
                  optimizer=optimizer, momentum=momentum, nesterov=False)


# the score follows head_hidden's default closely (the linear trials, 256, score well), so a report
# that took the linear trials' 256 as a value of head_hidden credits head_hidden with importance
CONDITIONAL = [_conditional(0, 0.80, 1e-4, "linear", "adamw"),
               _conditional(1, 0.81, 3e-5, "linear", "adamw"),
               _conditional(2, 0.40, 2e-4, "mlp", "sgd", head_hidden=16, momentum=0.5),
               _conditional(3, 0.79, 5e-5, "linear", "adamw"),
               _conditional(4, 0.45, 1e-5, "mlp", "adamw", head_hidden=32),
               _conditional(5, 0.50, 2e-5, "mlp", "sgd", head_hidden=64, momentum=0.8),
               _conditional(6, 0.82, 8e-5, "linear", "adamw")]


def test_a_trial_has_no_value_for_a_parameter_it_did_not_use():
    kinds = varying_params(CONDITIONAL)
    assert {"head_hidden", "momentum"} <= set(kinds)
    study = build_study(CONDITIONAL, kinds, log_scaled(kinds, CONDITIONAL, {}))
    linear_adamw, mlp_sgd = study.trials[0], study.trials[2]
    assert "head_hidden" not in linear_adamw.params and "momentum" not in linear_adamw.params
    assert mlp_sgd.params["head_hidden"] == 16 and mlp_sgd.params["momentum"] == 0.5
    # the range is the used values' only, not stretched to the unused default 256 (or 0.9)
    assert (mlp_sgd.distributions["head_hidden"].low, mlp_sgd.distributions["head_hidden"].high) == (16, 64)
    assert mlp_sgd.distributions["momentum"].high == 0.8


def test_a_parameter_varies_only_between_trials_that_used_it():
    # one sgd trial: momentum took one value among the trials that used it, whatever the
    # adamw trials' configs say
    one_sgd = [t for t in CONDITIONAL if t.trial_id != "t5"]
    assert "momentum" not in varying_params(one_sgd)
    assert "head_hidden" in varying_params(one_sgd)


def test_importances_do_not_credit_parameters_some_finished_trials_did_not_use():
    kinds = varying_params(CONDITIONAL)
    study = build_study(CONDITIONAL, kinds, log_scaled(kinds, CONDITIONAL, {}))
    importances, why = param_importances(study)
    assert why is None
    # Optuna's evaluators assess only parameters every finished trial has
    assert set(importances) == {"lr", "head", "optimizer"}
    assert math.fsum(importances.values()) == pytest.approx(1.0)
    note = unassessed_note(CONDITIONAL, kinds, importances)
    assert "head_hidden (used by 3 of 7 finished trials; not used: head=linear in the others)" in note
    assert "momentum (used by 2 of 7 finished trials; not used: optimizer=adamw in the others)" in note
    # when every finished trial used the mlp head, head_hidden gets its importance
    mlp = [t for t in CONDITIONAL if t.config["head"] == "mlp"] + [_trial(7, "FAILED", None, lr=1e-4,
                                                                          head="linear", head_hidden=256)]
    kinds = varying_params(mlp)
    importances, why = param_importances(build_study(mlp, kinds, set()))
    assert why is None and "head_hidden" in importances and unassessed_note(mlp, kinds, importances) is None


def test_the_sweeps_own_conditions_and_chains_of_them_count_too():
    from tuning.report.data import with_search_conditions

    # search_space.yaml as SearchSpace.describe writes it: label_smoothing sampled only when
    # head_hidden is 64, which itself exists only with an mlp head
    space = {"head": {"choices": ["linear", "mlp"]},
             "head_hidden": {"low": 16, "high": 512, "log": True, "when": {"head": ["mlp"]}},
             "label_smoothing": {"low": 0.0, "high": 0.2, "when": {"head_hidden": [64]}}}
    linear, mlp64, mlp16 = with_search_conditions(
        [_trial(0, "FINISHED", 0.5, head="linear", head_hidden=64, label_smoothing=0.0),
         _trial(1, "FINISHED", 0.6, head="mlp", head_hidden=64, label_smoothing=0.1),
         _trial(2, "FINISHED", 0.7, head="mlp", head_hidden=16, label_smoothing=0.0)], space)
    assert linear.inactive == {"head_hidden": "not used: head=linear",
                               "label_smoothing": "not used: head=linear"}
    assert mlp64.inactive == {}
    assert mlp16.inactive == {"label_smoothing": "not searched: head_hidden=16"}
    assert varying_params([linear, mlp64, mlp16]) == {"head": "categorical", "head_hidden": "numeric"}
