"""Sweep settings: one frozen, validated dataclass, saved beside the sweep so resume can rebuild it."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from search_spaces.presets import PRESETS, get_preset
from trainables.aliases import MODEL_ALIASES
from trainables import streamed
from trainables.data import DataConfig
from trainables.errors import ConfigError, UserError
from trainables.hparams import ALL_FAMILIES, default_of
from trainables.registry import reported_metric
from trainables.trial_resources import WorkerGroup, checked_workers
from trainables.rounds import check_sweep_setting
from tuning.credentials import MASK, has_password, redact, reveal

DEFAULT_ROOT = "tunebert-runs"
SWEEP_FILE = "tunebert_sweep.json"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
SEARCHERS = ("tpe", "random")
SCHEDULERS = ("asha", "none", "pbt", "pb2")
POPULATION_SCHEDULERS = ("pbt", "pb2")  # mutate hyperparameters of running trials (tuning/sweep/pbt.py)
# `tunebert tune --scheduler pbt` without --trials: synchronous PBT ranks and clones only once the
# whole population has reached an epoch, so a population far beyond what runs at once (the budget's
# 1,000 queued trials) would never be perturbed; 8 is the size of Ray's own PBT examples
DEFAULT_POPULATION = 8
# `tunebert tune`'s warm start for fine-tuning: the careful hand-written preset, so the search starts from it
DEFAULT_WARM_START = "hand"
# ... and for a multitask sweep (joint intent + slot data): the hand joint baseline
MULTITASK_WARM_START = "joint-hand"
# `tunebert tune`'s whole time budget and its final selection's size (tuning.results PipelineConfig)
TUNE_BUDGET_S = 2 * 3600.0
TUNE_TOP_K = 3
TUNE_SEEDS = 3
# `tunebert ui`: where the local MLflow server listens (MLflow's own port; taken, a free one unless
# --port was given) and how long a cold `mlflow server`, which imports a lot, may take to answer
UI_HOST = "127.0.0.1"
UI_PORT = 5000
UI_START_TIMEOUT_S = 180.0
# `tunebert evaluate`: the splits it scores, and the optional file in a model folder that names its data
EVALUATE_SPLITS = ("test", "validation")
MODEL_DATA_FILE = "data.json"
# what PBT/PB2 mutate unless --mutate says otherwise: settings a trial can change mid-training
PBT_MUTATIONS = ("lr", "classifier_dropout", "weight_decay", "label_smoothing")
TRAINABLE_CHOICES = ALL_FAMILIES + ("any",)  # any: one of the text classifiers (FAMILIES), the family searched too


CONSTRAINT_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=)\s*(\S+)\s*$")


@dataclass(frozen=True)
class Objective:
    """One metric a sweep optimises, written ``METRIC:MODE`` (``val_accuracy:max``)."""

    metric: str
    mode: str

    @classmethod
    def parse(cls, text: str) -> "Objective":
        metric, sep, mode = str(text).strip().rpartition(":")
        if not sep or not metric or mode not in ("max", "min"):
            raise ConfigError(f"an objective is METRIC:max or METRIC:min (e.g. val_accuracy:max, "
                              f"latency_ms_p50:min), but got {text!r}")
        return cls(metric.strip(), mode)

    def __str__(self) -> str:
        return f"{self.metric}:{self.mode}"


@dataclass(frozen=True)
class Constraint:
    """A bound a trial's metric must meet to be feasible, written ``METRIC<=BOUND`` or
    ``METRIC>=BOUND`` (``latency_ms_p50<=5``). A trial that did not report the metric is not
    known to meet it, so it is infeasible too (``holds``)."""

    metric: str
    op: str  # "<=" or ">="
    bound: float

    @classmethod
    def parse(cls, text: str) -> "Constraint":
        match = CONSTRAINT_RE.match(str(text))
        try:
            bound = float(match.group(3)) if match else math.nan
        except ValueError:
            bound = math.nan
        if not match or not math.isfinite(bound):
            raise ConfigError(f"a constraint is METRIC<=NUMBER or METRIC>=NUMBER (e.g. "
                              f"latency_ms_p50<=5, size_mb<=100), but got {text!r}")
        return cls(match.group(1), match.group(2), bound)

    def violation(self, value: float) -> float:
        """How far ``value`` lies beyond the bound: <= 0 when it holds (Optuna's convention for
        constraint values)."""
        return value - self.bound if self.op == "<=" else self.bound - value

    def holds(self, metrics: dict) -> bool:
        value = metrics.get(self.metric)
        return isinstance(value, (int, float)) and math.isfinite(value) and self.violation(value) <= 0

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.bound:g}"


def default_sweep_name() -> str:
    return time.strftime("sweep-%Y%m%d-%H%M%S")


def check_sweep_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ConfigError(
            f"sweep name {name!r} is not allowed: use 1-100 letters, digits, '.', '_' or '-', "
            f"starting with a letter or digit")
    return name


@dataclass(frozen=True)
class SweepConfig:
    """Everything that defines a sweep besides its search space file's contents."""

    name: str = field(default_factory=default_sweep_name)
    trainable: str = "finetune"
    data: DataConfig = field(default_factory=DataConfig)
    model: str = default_of("model")
    max_length: int = default_of("max_length")
    epochs: int = default_of("epochs")
    eval_every: Optional[str] = None  # rounds of N steps/'Nex' examples, not epochs (trainables.rounds)
    num_trials: int = 20
    time_budget_s: Optional[float] = None
    max_concurrent: Optional[int] = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    workers_per_trial: int = 1  # Ray Train workers, cpus_per_trial CPUs each (trainables.trial_resources)
    storage: str = DEFAULT_ROOT
    tracking_uri: Optional[str] = None
    address: Optional[str] = None
    max_failures: int = 2
    keep_checkpoints: int = 1
    seed: int = default_of("seed")
    precision: str = default_of("precision")
    space_file: Optional[str] = None
    warm_start: tuple[str, ...] = ()
    searcher: str = "tpe"
    scheduler: str = "asha"
    grace_period: int = 1
    reduction_factor: int = 3
    # PBT/PB2 only: perturb every `perturbation_interval` epochs; the worst `quantile_fraction`
    # of the population clones the best fraction and mutates the `mutate` parameters.
    # `synchronous`: all members reach the same epoch before they are ranked (fair with few epochs,
    # a clone goes on from its own epoch; idle workers wait for the slowest member); otherwise
    # each trial is ranked on arrival against the others' latest scores, whatever their epoch.
    perturbation_interval: int = 1
    quantile_fraction: float = 0.25
    mutate: tuple[str, ...] = PBT_MUTATIONS
    synchronous: bool = True
    metric: str = "val_accuracy"
    mode: str = "max"
    # Several objectives (``METRIC:MODE`` each; empty: the single ``metric``/``mode``): Optuna
    # samples for all of them (its multi-objective TPE), ASHA stops on the first, which must be
    # ``metric:mode``, and ``tunebert best`` returns their Pareto front (tuning/tracking/best.py).
    objectives: tuple[str, ...] = ()
    # ``METRIC<=BOUND`` / ``METRIC>=BOUND``: a trial that breaks one (or never reported its
    # metric) is infeasible: never best, not on the front; the sampler is told too.
    constraints: tuple[str, ...] = ()
    # on a cluster (--address), queue trials even when no node has the resources one trial
    # needs yet, because an autoscaler will add such nodes (otherwise refused: they would wait
    # forever)
    wait_for_nodes: bool = False
    # Set when the sweep starts (``anchored`` and ``runner.run_sweep``), not by the user:
    # ``uid`` names this sweep apart from any other sweep of the same name (it is tagged on the
    # MLflow experiment, so a reused name cannot merge two sweeps); ``data_fingerprint`` is
    # ``trainables.data.data_fingerprint`` of the data it trains on (resume refuses other data).
    uid: Optional[str] = None
    data_fingerprint: Optional[str] = None

    def __post_init__(self) -> None:
        check_sweep_name(self.name)
        self._remember_address()
        if self.trainable not in TRAINABLE_CHOICES:
            raise ConfigError(f"`trainable` must be one of {list(TRAINABLE_CHOICES)}, but got {self.trainable!r}")
        for name, low in (("max_length", 8), ("epochs", 1), ("grace_period", 1),
                          ("reduction_factor", 2), ("keep_checkpoints", 1), ("perturbation_interval", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"`{name}` must be an integer >= {low}, but got {value!r}")
        if isinstance(self.num_trials, bool) or not isinstance(self.num_trials, int) or self.num_trials < 1:
            raise ConfigError(f"`num_trials` must be an integer >= 1, but got {self.num_trials!r} "
                              f"(use --time-budget to stop by time instead)")
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise ConfigError(f"`time_budget_s` must be > 0 seconds, but got {self.time_budget_s!r}")
        if self.max_concurrent is not None and (not isinstance(self.max_concurrent, int) or self.max_concurrent < 1):
            raise ConfigError(f"`max_concurrent` must be an integer >= 1, but got {self.max_concurrent!r}")
        self._check_trial_resources()
        if not isinstance(self.max_failures, int) or self.max_failures < 0:
            raise ConfigError(f"`max_failures` must be an integer >= 0, but got {self.max_failures!r}")
        if self.searcher not in SEARCHERS:
            raise ConfigError(f"`searcher` must be one of {list(SEARCHERS)}, but got {self.searcher!r}")
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(f"`scheduler` must be one of {list(SCHEDULERS)}, but got {self.scheduler!r}")
        if self.mode not in ("max", "min"):
            raise ConfigError(f"`mode` must be 'max' or 'min', but got {self.mode!r}")
        if not isinstance(self.wait_for_nodes, bool):
            raise ConfigError(f"`wait_for_nodes` must be true or false, but got {self.wait_for_nodes!r}")
        object.__setattr__(self, "eval_every", check_sweep_setting(self.eval_every, trainable=self.trainable,
                           mutate=self.mutate, population_based=self.scheduler in POPULATION_SCHEDULERS))
        if self.grace_period > self.epochs and self.eval_every is None:  # rounds: known with the data
            raise ConfigError(f"`grace_period` ({self.grace_period}) cannot exceed `epochs` ({self.epochs})")
        self._check_objectives()
        if self.scheduler in POPULATION_SCHEDULERS:
            self._check_population()

    def _remember_address(self) -> None:
        """``ray://user:PASSWORD@host`` connects with its password, but ``to_dict`` (saved
        state, MLflow params) masks it; a masked address read back in the process that was
        given the full one gets its password again (``credentials.reveal``), else it stays
        masked and resume needs --address once more."""
        if isinstance(self.address, str) and self.address:
            object.__setattr__(self, "address", reveal(self.address))

    def _check_trial_resources(self) -> None:
        object.__setattr__(self, "workers_per_trial", checked_workers(
            self.cpus_per_trial, self.gpus_per_trial, self.workers_per_trial, self.trainable,
            population_based=self.scheduler in POPULATION_SCHEDULERS))

    def _check_objectives(self) -> None:
        """Objectives and constraints name metrics trials report, before anything starts."""
        objectives = self.objective_list
        names = [o.metric for o in objectives]
        if self.objectives and (objectives[0].metric, objectives[0].mode) != (self.metric, self.mode):
            raise ConfigError(f"the first objective must be `metric`:`mode` "
                              f"({self.metric}:{self.mode}), but got {self.objectives[0]!r}")
        if len(set(names)) < len(names):
            raise ConfigError(f"each metric can be one objective only, but got {list(self.objectives)}")
        for objective in objectives:
            what = f"objective {str(objective)!r}" if self.objectives else "`metric` (--metric)"
            reported_metric(objective.metric, what, self.trainable)
        first = reported_metric(self.metric, "`metric`", self.trainable)
        if not first.every_epoch:
            raise ConfigError(
                f"the first objective, {self.metric!r}, must be a metric trials report every epoch "
                f"(Ray Tune requires it in every result, and ASHA stops trials on it), but trials "
                f"report it at their last epoch only. Put such a metric first, e.g. --objective "
                f"val_accuracy:max --objective {self.metric}:{self.mode}, or make it a --constraint")
        for constraint in self.constraint_list:
            reported_metric(constraint.metric, f"constraint {str(constraint)!r}", self.trainable)
        if len(objectives) > 1 and self.scheduler in POPULATION_SCHEDULERS:
            raise ConfigError(f"--scheduler {self.scheduler} ranks a population on one metric and "
                              f"has no Optuna searcher, so it cannot take several objectives "
                              f"{list(self.objectives)}; use --scheduler asha or none")

    @property
    def objective_list(self) -> tuple[Objective, ...]:
        """The objectives, the first one ASHA's: ``objectives`` parsed, else (metric:mode)."""
        if not isinstance(self.objectives, (tuple, list)) or not isinstance(self.constraints, (tuple, list)):
            raise ConfigError(f"`objectives` and `constraints` must be lists of strings, but got "
                              f"{self.objectives!r} and {self.constraints!r}")
        if not self.objectives:
            return (Objective(self.metric, self.mode),)
        return tuple(Objective.parse(text) for text in self.objectives)

    @property
    def worker_group(self) -> WorkerGroup:
        return WorkerGroup.for_trial(self.workers_per_trial, self.cpus_per_trial, self.gpus_per_trial)

    @property
    def constraint_list(self) -> tuple[Constraint, ...]:
        return tuple(Constraint.parse(text) for text in self.constraints)

    def _check_population(self) -> None:
        """PBT/PB2 settings that can be checked without the search space (tuning/sweep/pbt.py checks
        the mutated parameters against the space)."""
        flag = f"--scheduler {self.scheduler}"
        if self.num_trials < 2:
            raise ConfigError(f"{flag} needs a population: `num_trials` (--trials) must be >= 2, "
                              f"but got {self.num_trials}")
        if self.trainable != "finetune":
            raise ConfigError(
                f"{flag} works with --trainable finetune only, but got {self.trainable!r}: "
                f"contrastive trials report a k-NN proxy during their first stage and have "
                f"stage-specific learning rates, so they cannot be ranked against and cloned into "
                f"each other mid-training; population-based training of multitask trials is not "
                f"built yet. Use --scheduler asha for {self.trainable} sweeps.")
        if self.max_concurrent is not None:
            raise ConfigError(
                f"{flag} cannot take --max-concurrent ({self.max_concurrent}): every member of "
                f"the population must exist from the start; Ray runs as many as the resources "
                f"allow and takes turns with the rest. Limit parallelism with --cpus-per-trial "
                f"or --gpus-per-trial instead.")
        if self.perturbation_interval >= self.epochs and self.eval_every is None:
            raise ConfigError(
                f"`perturbation_interval` ({self.perturbation_interval}) must be smaller than "
                f"`epochs` ({self.epochs}): trials are perturbed every --perturbation-interval "
                f"epochs and never after their last one, so nothing would ever be perturbed")
        if isinstance(self.quantile_fraction, bool) or not isinstance(self.quantile_fraction, (int, float)) \
                or not 0 < self.quantile_fraction <= 0.5:
            raise ConfigError(f"`quantile_fraction` must lie in (0, 0.5], but got {self.quantile_fraction!r}")
        if not isinstance(self.synchronous, bool):
            raise ConfigError(f"`synchronous` must be true or false, but got {self.synchronous!r}")
        if not self.mutate or not all(isinstance(name, str) and name for name in self.mutate):
            raise ConfigError(f"`mutate` (--mutate) must name at least one parameter, "
                              f"but got {list(self.mutate)!r}")

    # ------------------------------------------------------------------ places
    @property
    def root(self) -> Path:
        return Path(self.storage).expanduser().resolve()

    @property
    def ray_storage(self) -> Path:
        return self.root / "ray"

    @property
    def sweep_dir(self) -> Path:
        return self.ray_storage / self.name

    def resolved_tracking_uri(self) -> str:
        return resolve_tracking_uri(self.tracking_uri, self.root)

    def anchored(self) -> "SweepConfig":
        """These settings as a new sweep saves them: storage, data folder, a local model folder,
        space file and warm-start files as absolute paths and the MLflow store resolved (--tracking-uri, else
        $MLFLOW_TRACKING_URI, else the SQLite file under the storage), so that resume finds the
        same things from any working directory and in any environment. A validation split carved
        from train is pinned (``DataConfig.pinned``: its row numbers are saved, and resume,
        select and train --from-sweep refuse a train file that no longer gives the same rows)."""
        def absolute(path: str) -> str:
            candidate = Path(path).expanduser()
            return str(candidate.resolve()) if candidate.exists() else path

        return dataclasses.replace(
            self, storage=str(self.root), data=self._anchored_data(),
            # a local model folder (an alias or a hub id stays as it is: an alias wins over a
            # folder of the same name when the model is loaded, and a hub id is no folder)
            model=self.model if self.model in MODEL_ALIASES else absolute(self.model),
            space_file=absolute(self.space_file) if self.space_file else None,
            warm_start=tuple(w if w in PRESETS else absolute(w) for w in self.warm_start),
            tracking_uri=anchor_store_uri(self.resolved_tracking_uri()))

    def _anchored_data(self) -> DataConfig:
        """The data as ``anchored`` saves it; data through the token cache keeps the cache under
        the sweep's storage (shared by its trials, selection and train --from-sweep)."""
        data = self.data.anchored()
        if not streamed.is_streamed(data):
            return data.pinned()
        return dataclasses.replace(data, cache_dir=data.cache_dir or str(self.root / "token-cache"))

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["data"] = self.data.to_dict()
        d["warm_start"] = list(self.warm_start)
        d["mutate"] = list(self.mutate)
        d["objectives"] = list(self.objectives)
        d["constraints"] = list(self.constraints)
        if self.address:  # what is saved or logged never holds a ray:// password

            d["address"] = redact(self.address)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SweepConfig":
        d = dict(d)
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ConfigError(f"unknown sweep setting(s) {unknown}")
        if isinstance(d.get("data"), dict):
            d["data"] = DataConfig.from_dict(d["data"])
        for key in ("warm_start", "mutate", "objectives", "constraints"):  # absent in older sweeps
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)

    def saved_dict(self) -> dict[str, Any]:
        """``to_dict`` as written to disk: a password in the tracking URI is masked (resume takes
        it from --tracking-uri or $MLFLOW_TRACKING_URI again, see ``resume_store``)."""
        d = self.to_dict()
        if d.get("tracking_uri"):
            d["tracking_uri"] = redact(d["tracking_uri"])
        return d

    def save(self) -> Path:
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        path = self.sweep_dir / SWEEP_FILE
        partial = path.with_suffix(".json.partial")
        partial.write_text(json.dumps(self.saved_dict(), indent=2))
        partial.replace(path)  # atomic: a kill never leaves half a file
        return path


def resolve_tracking_uri(explicit: Optional[str], root: Path) -> str:
    """``--tracking-uri`` wins, then ``MLFLOW_TRACKING_URI``, then a SQLite file under the root."""
    if explicit:
        return explicit
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{root / 'mlflow.db'}"


def anchor_store_uri(uri: str) -> str:
    """``uri`` with a relative SQLite or folder store made absolute (servers are unchanged)."""
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///"):]
        if path and not path.startswith("/") and not path.startswith(":memory:"):
            return f"sqlite:///{Path(path).expanduser().resolve()}"
        return uri
    if "://" not in uri and not uri.startswith(("sqlite:", "file:")):
        return str(Path(uri).expanduser().resolve())
    return uri


def resume_store(name: str, saved: Optional[str], given: Optional[str]) -> Optional[str]:
    """The MLflow store a resumed sweep logs to: the one it started with (``saved``, with a
    password masked), never another. A restored sweep's trials keep logging where they started
    (Ray brings back the logger saved with the experiment), so another store would split the
    sweep's record in two.

    ``given``: --tracking-uri at resume (None if not given); it must name the saved store, and
    is what supplies its password. Without it the saved store is used, its password taken from
    $MLFLOW_TRACKING_URI when that names the same store (``credentials.reveal``). ``saved`` None
    (a sweep saved before stores were recorded): ``given`` as before."""
    if saved is None:
        return given
    if given is not None:
        given = anchor_store_uri(given)
        if redact(given) == saved:
            return given
        raise ConfigError(
            f"sweep {name!r} logs to the MLflow store {saved}, but --tracking-uri names "
            f"{redact(given)}: its trials would keep logging to the first store while a second "
            f"parent run opened in the other. Resume without --tracking-uri (the sweep remembers "
            f"its store), or start a new sweep with another --name to log elsewhere.")
    if MASK not in saved:
        return saved
    if has_password(reveal(saved)):
        return reveal(saved)
    raise ConfigError(
        f"sweep {name!r} logs to the MLflow store {saved}, whose password is not saved (secrets "
        f"stay out of saved state). Pass the store with its password to resume: set "
        f"MLFLOW_TRACKING_URI to that URI with the password filled in.")


def load_saved_sweep(name: str, storage: str = DEFAULT_ROOT) -> SweepConfig:
    """The settings a sweep was started with (for resume). Clear error if there is no such sweep."""
    check_sweep_name(name)
    root = Path(storage).expanduser().resolve()
    path = root / "ray" / name / SWEEP_FILE
    if not path.is_file():
        known = sorted(p.parent.name for p in (root / "ray").glob(f"*/{SWEEP_FILE}"))
        raise ConfigError(
            f"no sweep named {name!r} under {root}; known sweeps there: {known or 'none'}. "
            f"Pass --storage if the sweep lives elsewhere.")
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(saved, dict):
            raise TypeError(f"it holds a {type(saved).__name__}, not a mapping of settings")
        return SweepConfig.from_dict(saved)
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError, AttributeError) as exc:
        # a UserError, not a ConfigError: callers that fall back when a sweep has no saved
        # settings (``selection.resolve_data``) must not fall back past damaged ones
        raise UserError(
            f"the saved settings of sweep {name!r}, {path}, are damaged and cannot be read "
            f"({(str(exc).splitlines() or [type(exc).__name__])[0][:200]}): the file was cut short, "
            f"edited, or written by another tunebert version. Restore it from a backup, or "
            f"start a new sweep with another --name.") from None


def load_config_file(path: str, what: str = "--config") -> dict[str, Any]:
    """A trial config from a YAML or JSON file (JSON is YAML too), e.g. from `tunebert best -o`."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} {path!r}: no such file")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what} {path!r}: not valid YAML/JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path!r}: expected a mapping of parameters")
    return data


def warm_start_config(entry: str) -> dict[str, Any]:
    """A warm-start entry: a preset name, or a YAML/JSON config file (say, an earlier best)."""
    if entry in PRESETS:
        return get_preset(entry)
    if Path(entry).suffix in (".yaml", ".yml", ".json") or Path(entry).is_file():
        return load_config_file(entry, "--warm-start")
    raise ConfigError(f"unknown preset {entry!r}; available presets: {sorted(PRESETS)} "
                      f"(or pass a .yaml/.json config file)")
