"""Population Based Training for sweeps: Ray Tune's PBT (Jaderberg et al. 2017,
arXiv:1711.09846) and PB2 (Parker-Holder et al. 2020, arXiv:2002.02518), fed from our search space.

What this module adds to Ray's schedulers, and why:

- The mutated parameters and their ranges come from the sweep's ``SearchSpace`` (checked before
  Ray starts), and a perturbed value is kept inside the space's range (Ray multiplies by 0.8 or
  1.2 without bounds, so repeated perturbations could leave any valid config).
- The initial population is sampled from the space offline: Ray refuses a searcher (Optuna)
  next to PBT, so the population is the first ``--trials`` random draws of the space, warm-start
  presets first, handed to Ray's basic variant generator as fixed, complete configs.
- Every exploit is reported, from inside the scheduler's decision, to an ``on_clone`` callback:
  which trial was cloned, from which epoch's checkpoint, and what each mutated value was and
  became. ``tuning.tracking`` records it on the clone's MLflow run.
- No perturbation at a trial's last epoch: that checkpoint holds no optimizer state (nothing
  resumes from it), and a clone restored from it would have nothing left to train.
- With ``eval_every`` (budgets in steps) every "epoch" here is a reporting round: trials report
  the round number as ``epoch`` (Ray's ``training_iteration`` counts the same), so
  ``--perturbation-interval`` counts rounds, and a clone resumes its donor's checkpoint at the
  batch, mid-epoch included, where the donor's round ended.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Optional

from ray.tune.schedulers import PopulationBasedTraining, TrialScheduler
from ray.tune.schedulers.pb2 import PB2

from search_spaces.space import Categorical, FloatRange, IntRange, Param, SearchSpace
from trainables import registry
from trainables.errors import ConfigError
from tuning.sweep.ray_internals import PBTHooks

log = logging.getLogger(__name__)

# Called with (the cloning trial, the donor trial, the clone event; see ``clone_event``).
OnClone = Callable[[Any, Any, dict], None]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def mutable_params(space: SearchSpace, names: tuple[str, ...], scheduler: str) -> dict[str, Param]:
    """The space's parameters that ``scheduler`` ('pbt' or 'pb2') may mutate, by name.

    Each must be searched (not fixed or dropped), present in every trial (no ``when``) and
    numeric: a float or int range, or, for PBT only, a categorical of numbers.
    """
    params = {}
    for name in names:
        param = space.get(name)
        fix = f"leave it out of --mutate (now {','.join(names)})"
        if param is None:
            raise ConfigError(f"--mutate names {name!r}, which is not a parameter of the search "
                              f"space (parameters: {list(space.names())}); {fix}")
        if name not in space.searched():
            raise ConfigError(f"--mutate names {name!r}, but the search space fixes it to "
                              f"{param.dist.value!r}; give it a range in --space or {fix}")
        if param.when:
            raise ConfigError(f"--mutate names {name!r}, which exists only when "
                              f"{dict(param.when)}, so not every member of the population has it; {fix}")
        numeric_choices = isinstance(param.dist, Categorical) and all(map(_is_number, param.dist.choices))
        if not isinstance(param.dist, (FloatRange, IntRange)) and not (scheduler == "pbt" and numeric_choices):
            what = "a numeric range" if scheduler == "pb2" else "a numeric range or numeric choices"
            raise ConfigError(f"--mutate names {name!r}, but --scheduler {scheduler} mutates {what} "
                              f"and the space has {param.describe()!r}; {fix}")
        params[name] = param
    return params


def check_available(scheduler: str) -> None:
    """PB2 needs scikit-learn (Ray releases before late 2025 also need GPy): say so before Ray
    starts rather than fail when the scheduler is built."""
    if scheduler != "pb2":
        return
    try:
        PB2(hyperparam_bounds={"x": [0.0, 1.0]})
    except (RuntimeError, ImportError) as exc:
        raise ConfigError(f"--scheduler pb2 cannot run here: {exc} Install what it names, or use "
                          f"--scheduler pbt (no extra packages).") from None


def ray_mutations(params: dict[str, Param], scheduler: str) -> dict[str, Any]:
    """Ray's ``hyperparam_mutations`` (PBT: where a resample draws from; choices are shifted to a
    neighbour) or ``hyperparam_bounds`` (PB2: ``[low, high]``), from the space's distributions."""
    from ray import tune

    out: dict[str, Any] = {}
    for name, param in params.items():
        dist = param.dist
        if scheduler == "pb2":
            out[name] = [dist.low, dist.high]
        elif isinstance(dist, Categorical):
            out[name] = sorted(dist.choices)  # "shift left/right" moves to the next smaller/larger
        elif isinstance(dist, IntRange):
            out[name] = (tune.lograndint if dist.log else tune.randint)(dist.low, dist.high + 1)
        elif dist.log:
            out[name] = tune.loguniform(dist.low, dist.high)
        elif dist.step is not None:
            out[name] = tune.quniform(dist.low, dist.high, dist.step)
        else:
            out[name] = tune.uniform(dist.low, dist.high)
    return out


def clone_event(*, before: dict, donor: dict, after: dict, mutated: tuple[str, ...],
                operations: dict, epoch: Optional[int], donor_trial_id: str,
                donor_epoch: Optional[int]) -> dict:
    """What one exploit did to a trial, as plain JSON-able data.

    ``changes``: each mutated parameter's value in this trial before (``old``), in the donor
    (``donor``), after exploring (``new``) and how Ray got there (``op``: ``* 1.2``,
    ``resample``, ``shift left``, ``gp-bandit`` for PB2). ``inherited``: every other setting that
    changed because the trial took the donor's config. The trial goes on from ``donor_epoch + 1``.
    """
    changes = {name: {"old": before.get(name), "donor": donor.get(name), "new": after.get(name),
                      "op": operations.get(name, "")} for name in mutated}
    inherited = {key: {"old": before.get(key), "new": after[key]} for key in sorted(after)
                 if key not in mutated and before.get(key) != after[key]}
    return {"time": time.time(), "epoch": epoch, "donor_trial_id": donor_trial_id,
            "donor_epoch": donor_epoch, "changes": changes, "inherited": inherited,
            "config": dict(after)}


class _RecordsLineage(PBTHooks):
    """Mixin for Ray's PBT and PB2: bounds perturbed values, skips last epochs, reports clones
    (through ``PBTHooks``, which reaches PBT's private exploit steps)."""

    def __init__(self, *, params: dict[str, Param], on_clone: Optional[OnClone], **kwargs):
        super().__init__(**kwargs)
        self._params = params
        self._on_clone = on_clone
        self._last_operations: dict = {}

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        # `epochs`, or `stop_epoch` when a config sets one; with `eval_every` the trial counts
        # rounds, and reports the round it stops after (`rounds`, which depends on the data)
        last_epoch = result.get("rounds") or registry.config_class(
            trial.config.get("trainable", "finetune")).from_dict(trial.config).last_epoch
        if result.get("epoch", 0) >= last_epoch:
            return TrialScheduler.CONTINUE  # nothing left to perturb
        return super().on_trial_result(tune_controller, trial, result)

    def explored(self, config: dict, operations: dict) -> tuple[dict, dict]:
        # PB2 picks all values at once with its GP bandit and names no operation
        operations = {name: "gp-bandit" for name in self._params} if isinstance(self, PB2) \
            else dict(operations)
        for name, param in self._params.items():
            dist = param.dist
            if isinstance(dist, (FloatRange, IntRange)) and _is_number(config.get(name)):
                bounded = min(max(config[name], dist.low), dist.high)
                if bounded != config[name]:
                    operations[name] = f"{operations.get(name, '')} then clipped to the space's " \
                                       f"[{dist.low}, {dist.high}]".strip()
                    config[name] = type(config[name])(bounded)
        self._last_operations = operations
        return config, operations

    def exploited(self, trial, donor, *, before: dict, own_result: dict, donor_result: dict) -> None:
        # own_result: this result (trial.last_result lags); donor_result: the checkpoint's result
        if self._on_clone is None:
            return
        event = clone_event(before=before, donor=dict(donor.config), after=dict(trial.config),
                            mutated=tuple(self._params), operations=self._last_operations,
                            epoch=own_result.get("epoch"), donor_trial_id=donor.trial_id,
                            donor_epoch=donor_result.get("epoch"))
        try:
            self._on_clone(trial, donor, event)
        except Exception as exc:  # recording must never stop the sweep
            log.warning("could not record that trial %s cloned %s: %s", trial.trial_id,
                        donor.trial_id, exc)


class LineagePBT(_RecordsLineage, PopulationBasedTraining):
    """Ray's ``PopulationBasedTraining`` that reports its clones (see the module docstring)."""


class LineagePB2(_RecordsLineage, PB2):
    """Ray's ``PB2`` that reports its clones (see the module docstring)."""


def build_scheduler(cfg, space: SearchSpace, on_clone: Optional[OnClone] = None):
    """The sweep's PBT or PB2 scheduler: time in epochs (``training_iteration``), mutations from
    the space. ``cfg`` is a ``SweepConfig`` with ``scheduler`` 'pbt' or 'pb2'."""
    params = mutable_params(space, cfg.mutate, cfg.scheduler)
    common = dict(params=params, on_clone=on_clone, time_attr="training_iteration",
                  perturbation_interval=cfg.perturbation_interval,
                  quantile_fraction=cfg.quantile_fraction, synch=cfg.synchronous)
    if cfg.scheduler == "pb2":
        return LineagePB2(hyperparam_bounds=ray_mutations(params, "pb2"), **common)
    return LineagePBT(hyperparam_mutations=ray_mutations(params, "pbt"), **common)


def population_search(population: list[dict]) -> tuple[Any, dict]:
    """(search algorithm, param space) that run exactly the given configs, one trial each.

    Ray's basic variant generator takes fixed points only for keys of the param space, so the
    configs must be complete (``registry.resolve_config``: every field, defaults included; the
    same dict MLflow records) and the param space names those keys with no value of its own.
    """
    from ray.tune.search import BasicVariantGenerator

    keys = sorted({key for config in population for key in config})
    missing = [sorted(set(keys) - set(c)) for c in population if set(c) != set(keys)]
    if missing:
        raise ValueError(f"the population's configs must be complete; some lack {missing[0]}")
    return BasicVariantGenerator(points_to_evaluate=[dict(c) for c in population]), dict.fromkeys(keys)


def checkpoints_to_keep(cfg) -> int:
    """Checkpoints kept per trial under PBT/PB2. A donor's checkpoint is read by its clone after
    the exploit decision; the donor may report up to ``perturbation_interval`` more checkpoints
    before the clone restarts, and Ray deletes the oldest beyond ``num_to_keep`` (Ray's own
    warning asks for more than 2), so keep that many plus two."""
    return max(cfg.keep_checkpoints, cfg.perturbation_interval + 2)
