"""A sweep's trials rebuilt as an in-memory Optuna study, and the fANOVA importances computed
from it.

Ray keeps its own study inside the searcher's state; the report rebuilds one from MLflow instead,
so it works for any sweep MLflow knows (also one run elsewhere, or with a searcher other than
Optuna's). The study feeds ``optuna.importance`` and ``optuna.visualization.matplotlib``.
"""

from __future__ import annotations

import math
from typing import Optional

from tuning.report_data import METRIC, TrialRecord, categorical_choices

MIN_IMPORTANCE_TRIALS = 3  # fANOVA fits a random forest; fewer points give no meaningful split


def _state(trial: TrialRecord):
    """The Optuna state a trial gets: only a scored trial is COMPLETE (a value is what Optuna's
    COMPLETE means); a failed, killed or never-scored one is FAIL, a running one RUNNING."""
    from optuna.trial import TrialState

    if trial.scored:
        return TrialState.COMPLETE
    return TrialState.RUNNING if trial.status == "RUNNING" else TrialState.FAIL


def build_study(trials: list[TrialRecord], kinds: dict[str, str], log_names: set[str],
                mode: str = "max"):
    """An Optuna study holding ``trials`` in the order given (Optuna's trial number = position),
    with the parameters in ``kinds`` and distributions inferred from what the trials used
    (numeric: observed min..max, log scale for ``log_names``; categorical: the values as strings).

    Scored trials are COMPLETE with their best-epoch val_accuracy; every other trial is kept
    (FAIL, or RUNNING) so that trial numbers stay the trials' start order.
    """
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
        params = {name: float(trial.config[name]) if kind == "numeric" else str(trial.config[name])
                  for name, kind in kinds.items()}
        state = _state(trial)
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions=distributions, state=state,
            value=trial.value if state == optuna.trial.TrialState.COMPLETE else None))
    return study


def completed(study) -> list:
    """The study's COMPLETE trials (the ones with a value)."""
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def param_importances(study, seed: int = 0) -> tuple[Optional[dict[str, float]], Optional[str]]:
    """fANOVA importances (normalised to sum 1, most important first), or (None, why not)."""
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    done = completed(study)
    finished = len(done)
    if finished < MIN_IMPORTANCE_TRIALS:
        return None, (f"Parameter importances need ≥ {MIN_IMPORTANCE_TRIALS} finished trials with a "
                      f"finite {METRIC}; this sweep has {finished}.")
    if len({t.value for t in done}) < 2:
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
