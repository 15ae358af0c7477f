"""A sweep's trials rebuilt as an in-memory Optuna study, and the fANOVA importances computed
from it.

Ray keeps its own study inside the searcher's state; the report rebuilds one from MLflow instead,
so it works for any sweep MLflow knows (also one run elsewhere, or with a searcher other than
Optuna's). The study feeds ``optuna.importance`` and ``optuna.visualization.matplotlib``.

Conditional parameters (``head_hidden`` only with an mlp head, ``momentum`` only with sgd) are
rebuilt as the searcher's own define-by-run study holds them: a trial has a parameter only if it
used it, although its MLflow config holds a default for every parameter. Optuna's importance
evaluators then treat them as they treat any define-by-run study: they assess only the
parameters every finished trial has (``optuna.importance._base``: the intersection search space
of the COMPLETE trials), so a parameter some finished trials did not use gets no importance and
the page says which and why (``unassessed_note``).
"""

from __future__ import annotations

import math
from typing import Optional

from tuning.report.data import METRIC, TrialRecord, categorical_choices, used_values

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
    A trial has only the parameters it used (``TrialRecord.inactive``), as in the searcher's own
    define-by-run study.

    Scored trials are COMPLETE with their score (``TrialRecord.value``: the sweep's metric at
    the best epoch; ``mode`` says which way is better); every other trial is kept
    (FAIL, or RUNNING) so that trial numbers stay the trials' start order.
    """
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    distributions = {}
    for name, kind in kinds.items():
        if kind == "numeric":
            values = [float(v) for v in used_values(trials, name)]
            distributions[name] = FloatDistribution(min(values), max(values), log=name in log_names)
        else:
            distributions[name] = CategoricalDistribution(categorical_choices(trials, name))
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    for trial in trials:
        inactive = trial.inactive
        params = {name: float(trial.config[name]) if kind == "numeric" else str(trial.config[name])
                  for name, kind in kinds.items() if name not in inactive}
        state = _state(trial)
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions={name: distributions[name] for name in params}, state=state,
            value=trial.value if state == optuna.trial.TrialState.COMPLETE else None))
    return study


def completed(study) -> list:
    """The study's COMPLETE trials (the ones with a value)."""
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def param_importances(study, seed: int = 0, metric: str = METRIC
                      ) -> tuple[Optional[dict[str, float]], Optional[str]]:
    """fANOVA importances (normalised to sum 1, most important first) of the parameters every
    finished trial has, or (None, why not, naming ``metric``: what the study's values are).
    Empty when no varying parameter was used by every finished trial (``unassessed_note`` says
    which were not)."""
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    done = completed(study)
    finished = len(done)
    if finished < MIN_IMPORTANCE_TRIALS:
        return None, (f"Parameter importances need ≥ {MIN_IMPORTANCE_TRIALS} finished trials with a "
                      f"finite {metric}; this sweep has {finished}.")
    if len({t.value for t in done}) < 2:
        return None, (f"All {finished} finished trials reached the same {metric}, so there is "
                      f"no variation for fANOVA to attribute to parameters.")
    try:
        importances = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=seed))
    except (ValueError, RuntimeError, ZeroDivisionError) as exc:
        return None, (f"Parameter importances could not be computed from {finished} finished trials "
                      f"({exc}); they need ≥ {MIN_IMPORTANCE_TRIALS} finished trials that differ.")
    if not all(math.isfinite(v) for v in importances.values()):
        return None, f"fANOVA gave no finite importances from {finished} finished trials."
    return dict(importances), None


def unassessed_note(trials: list[TrialRecord], kinds: dict[str, str],
                    importances: dict[str, float]) -> Optional[str]:
    """Which varying parameters got no importance because some finished trials did not use them,
    with how many did and why the others did not; None when every one was assessed."""
    finished = [t for t in trials if t.scored]
    parts = []
    for name in kinds:
        if name in importances:
            continue
        reasons = sorted({t.inactive[name] for t in finished if name in t.inactive})
        if reasons:
            parts.append(f"{name} (used by {len(finished) - sum(name in t.inactive for t in finished)} "
                         f"of {len(finished)} finished trials; {', '.join(reasons)} in the others)")
    if not parts:
        return None
    return ("No importance for " + ", ".join(parts) + ". A trial has no value for a parameter it "
            "did not use, and Optuna's importance evaluators assess only the parameters every "
            "finished trial has, so a conditional parameter is left out rather than credited with "
            "the defaults of the trials that never used it.")
