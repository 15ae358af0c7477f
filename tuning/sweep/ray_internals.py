"""Every use tunebert makes of Ray's private API, in one module, checked when it is imported.

Ray has no public API for these, so each is reached here and nowhere else (a test fails if any
other module of ``tuning/``, ``trainables/`` or ``search_spaces/`` names a private Ray attribute):

- ASHA's rung state (``AsyncHyperBandScheduler._brackets``, ``._trial_info``, ``._time_attr``,
  ``_Bracket._rungs``): ``tuning.sweep.asha`` saves and restores it across a driver restart.
- PBT's exploit step (``PopulationBasedTraining._exploit``, ``._get_new_config``,
  ``._trial_state``): ``tuning.sweep.pbt`` bounds perturbed values and records every clone.
- ``OptunaSearch``'s study and trials (``._ot_study``, ``._ot_trials``, ``._completed_trials``,
  ``._metric``, ``._mode``): ``tuning.sweep.search`` tells Optuna several objectives and constraints.
- A trial's saved checkpoint (``ray.tune.trainable.metadata._TrainingRunMetadata``):
  ``tuning.sweep.pruning`` reads which checkpoint Ray's saved experiment state would resume from.
- The autoscaler's resource ceiling (``ray._private.state``) and single-node mode
  (``ray._private.ray_constants.ENABLE_RAY_CLUSTER``): ``tuning.sweep.runner``.

Importing this module checks that Ray is a version these were tested with and that each one is
still there, so a Ray upgrade stops tunebert at start-up with a message naming the version that
works, not deep inside a sweep. ``tests/tuning/sweep/test_ray_internals.py`` checks each one's behaviour.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import logging
from typing import Any, Optional

import ray
from ray.tune.schedulers import AsyncHyperBandScheduler, PopulationBasedTraining
from ray.tune.search.optuna import OptunaSearch

from trainables.errors import ConfigError

log = logging.getLogger(__name__)

# The Ray releases whose internals the test suite ran against; pyproject pins ray[tune]>=2.60,<2.61.
TESTED_RAY_SERIES = "2.60"
TESTED_RAY_VERSIONS = ("2.60.0",)


def _tunebert_version() -> str:
    try:
        return importlib.metadata.version("tunebert")
    except Exception:  # running from a checkout that was never installed
        return "(not installed)"


def check_ray_version(version: str) -> None:
    """Refuse a Ray outside the tested series: its internals may have moved."""
    if version.split(".")[:2] == TESTED_RAY_SERIES.split("."):
        return
    raise ConfigError(
        f"tunebert {_tunebert_version()} uses Ray internals tested with Ray {TESTED_RAY_SERIES}.x "
        f"({', '.join(TESTED_RAY_VERSIONS)}); this environment has Ray {version}. Install "
        f"ray[tune]=={TESTED_RAY_SERIES}.* (pip install 'ray[tune]=={TESTED_RAY_SERIES}.*'); on a "
        f"Ray cluster the driver must run the cluster's Ray, so run a cluster on Ray "
        f"{TESTED_RAY_SERIES}.x as well.")


def _missing(what: str) -> ConfigError:
    return ConfigError(
        f"Ray {ray.__version__} lacks {what}, a Ray internal tunebert {_tunebert_version()} relies on "
        f"(tested with Ray {TESTED_RAY_SERIES}.x); install ray[tune]=={TESTED_RAY_SERIES}.*")


def _require(owner: Any, name: str, what: str) -> Any:
    if not hasattr(owner, name):
        raise _missing(f"{what}.{name}")
    return getattr(owner, name)


def _require_params(function: Any, params: tuple[str, ...], what: str) -> None:
    found = tuple(inspect.signature(function).parameters)
    if found[:len(params)] != params:
        raise _missing(f"{what}{params} (it has {found})")


def check_internals() -> None:
    """Each internal this module relies on is there, with the shape assumed; else a
    ``ConfigError`` naming the missing one."""
    asha = AsyncHyperBandScheduler(time_attr="training_iteration", max_t=4, grace_period=1)
    for name in ("_brackets", "_trial_info", "_time_attr"):
        _require(asha, name, "AsyncHyperBandScheduler")
    rungs = _require(asha._brackets[0], "_rungs", "ray.tune.schedulers.async_hyperband._Bracket")
    if not (isinstance(rungs, list) and all(isinstance(r, tuple) and isinstance(r[1], dict) for r in rungs)):
        raise _missing("_Bracket._rungs as a list of (milestone, {trial_id: score})")
    _require_params(_require(PopulationBasedTraining, "_exploit", "PopulationBasedTraining"),
                    ("self", "tune_controller", "trial", "trial_to_clone"), "PopulationBasedTraining._exploit")
    _require_params(_require(PopulationBasedTraining, "_get_new_config", "PopulationBasedTraining"),
                    ("self", "trial", "trial_to_clone"), "PopulationBasedTraining._get_new_config")
    _require(PopulationBasedTraining(hyperparam_mutations={"x": [0, 1]}), "_trial_state",
             "PopulationBasedTraining")
    from ray.tune.schedulers import pbt as pbt_module

    state_cls = _require(pbt_module, "_PBTTrialState", "ray.tune.schedulers.pbt")
    if "self.last_result" not in inspect.getsource(state_cls.__init__):
        raise _missing("_PBTTrialState.last_result")
    for name in ("_ot_study", "_ot_trials", "_completed_trials", "_metric", "_mode"):
        if f"self.{name}" not in inspect.getsource(OptunaSearch):
            raise _missing(f"OptunaSearch.{name}")
    from ray.tune.trainable import metadata

    run_metadata = _require(metadata, "_TrainingRunMetadata", "ray.tune.trainable.metadata")
    _require(run_metadata, "from_json_state", "_TrainingRunMetadata")
    from ray._private import ray_constants
    from ray._private.state import state

    _require(ray_constants, "ENABLE_RAY_CLUSTER", "ray._private.ray_constants")
    _require(state, "get_max_resources_from_cluster_config", "ray._private.state.state")


# -- ASHA's rungs (tuning.sweep.asha)

def asha_time_attr(scheduler: AsyncHyperBandScheduler) -> str:
    """The result key ASHA measures time in (``time_attr``)."""
    return scheduler._time_attr


def asha_brackets(scheduler: AsyncHyperBandScheduler) -> list:
    """ASHA's brackets, in Ray's order (a bracket's index is stable for a given configuration)."""
    return scheduler._brackets


def asha_bracket_of(scheduler: AsyncHyperBandScheduler, trial_id: str):
    """The bracket ASHA placed ``trial_id`` in, or None if it has not seen it (or forgot it)."""
    return scheduler._trial_info.get(trial_id)


def set_asha_bracket_of(scheduler: AsyncHyperBandScheduler, trial_id: str, bracket) -> None:
    """Place ``trial_id`` in ``bracket`` (one of ``asha_brackets``)."""
    scheduler._trial_info[trial_id] = bracket


def asha_rungs(bracket) -> list[tuple[Any, dict]]:
    """A bracket's rungs: ``[(milestone, {trial_id: score})]``, the dicts ASHA itself reads."""
    return bracket._rungs


def set_asha_rung_score(bracket, milestone, trial_id: str, score: float) -> None:
    """Record ``score`` for ``trial_id`` at the rung ``milestone`` of ``bracket``."""
    for rung_milestone, recorded in bracket._rungs:
        if rung_milestone == milestone:
            recorded[trial_id] = score
            return
    raise KeyError(f"bracket has no rung at milestone {milestone!r}")


# -- PBT's exploit step (tuning.sweep.pbt)

class PBTHooks:
    """Mixin placed before Ray's ``PopulationBasedTraining`` (or ``PB2``) in a class's bases: turns
    PBT's private exploit steps into two named hooks a subclass overrides.

    ``explored(config, operations)``: the config Ray's explore step made for a clone and how each
    value was changed; returns the (config, operations) to use. ``exploited(trial, donor, before=,
    own_result=, donor_result=)``: called after ``trial`` took ``donor``'s checkpoint and config;
    ``before`` is its config until then, the results are PBT's last seen for each trial (the
    trial's ``last_result`` lags one result behind PBT's)."""

    def explored(self, config: dict, operations: dict) -> tuple[dict, dict]:
        return config, operations

    def exploited(self, trial, donor, *, before: dict, own_result: dict, donor_result: dict) -> None:
        pass

    def _get_new_config(self, trial, trial_to_clone):
        config, operations = super()._get_new_config(trial, trial_to_clone)
        return self.explored(config, operations)

    def _exploit(self, tune_controller, trial, trial_to_clone):
        before = dict(trial.config)
        own = self._trial_state[trial].last_result or {}
        donor = self._trial_state[trial_to_clone].last_result or {}
        super()._exploit(tune_controller, trial, trial_to_clone)
        self.exploited(trial, trial_to_clone, before=before, own_result=own, donor_result=donor)


# -- OptunaSearch's study (tuning.sweep.search)

def searcher_metric(searcher: OptunaSearch):
    """The metric(s) as given to ``OptunaSearch``: one name or a list (several objectives)."""
    return searcher._metric


def searcher_mode(searcher: OptunaSearch):
    """The mode(s) as given to ``OptunaSearch``: 'min'/'max' or a list of them."""
    return searcher._mode


def optuna_study(searcher: OptunaSearch):
    """The ``optuna.Study`` behind the searcher."""
    return searcher._ot_study


def optuna_trials(searcher: OptunaSearch) -> dict:
    """Ray trial id -> the live ``optuna.Trial`` asked for it (not yet told)."""
    return searcher._ot_trials


def completed_trial_ids(searcher: OptunaSearch) -> set:
    """Ray trial ids the searcher has already told Optuna about (add to it after telling)."""
    return searcher._completed_trials


# -- Ray's saved experiment state (tuning.sweep.pruning)

def saved_checkpoint_path(run_metadata_json: str) -> Optional[str]:
    """The latest checkpoint's path in one trial's saved run metadata (the second item of a
    ``trial_data`` entry of ``experiment_state-*.json``), None if it records none. Ray
    cloudpickles its checkpoint manager inside that JSON; Ray's own loader reads it."""
    from ray.tune.trainable.metadata import _TrainingRunMetadata

    manager = _TrainingRunMetadata.from_json_state(run_metadata_json).checkpoint_manager
    latest = manager.latest_checkpoint_result if manager is not None else None
    return latest.checkpoint.path if latest is not None and latest.checkpoint is not None else None


# -- the cluster (tuning.sweep.runner)

def autoscaler_max_resources() -> dict:
    """The most of each resource the autoscaler may add (autoscaler v2, e.g. KubeRay, publishes
    it); {} where the cluster publishes none. Needs ``ray.init``."""
    from ray._private.state import state

    return state.get_max_resources_from_cluster_config() or {}


def set_multi_node(enabled: bool) -> None:
    """Ray's switch between single-node mode (servers on the loopback interface only) and cluster
    mode. Ray reads it from $RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER when first imported; this sets it
    for the ``ray.init`` still to come in this process."""
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = enabled


check_ray_version(ray.__version__)
check_internals()
