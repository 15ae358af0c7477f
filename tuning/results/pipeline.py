"""``tunebert tune``: sweep → final selection → one test evaluation, under one time budget.

Phases, in order, each recorded in ``<storage>/ray/<name>/tunebert_pipeline.json`` (PIPELINE_FILE)
beside the sweep's own ``tunebert_sweep.json``:

1. **plan** (no Ray yet): everything the sweep would refuse is refused here (``runner.prepare``),
   then one tiny training (``measure_epoch_seconds``) measures how long a trial-epoch takes, and
   ``split_budget`` divides the budget between the phases. A budget that cannot hold one sweep
   trial plus one selection training is refused here, with exit status 2.
2. **sweep**: ``runner.run_sweep`` with ``time_budget_s`` = the sweep's share, and a
   ``runner.DeadlineStopper`` so that a resumed sweep gets only what is left of that share.
3. **select**: ``selection.final_selection`` (top-k × seeds, optional ensemble, test read once
   after the choice). Before it starts, the selection is planned again from the speed the sweep
   actually had (``time_this_iter_s`` of the top trials' Ray results) and the time really left:
   ``fit_selection`` shrinks top_k/seeds when they do not fit, and says so.
4. **done**: the sweep's parent MLflow run gets the summary (phase budgets and actual times, the
   handed-over model's folder, its validation and test scores, the config) and PIPELINE_FILE.

``tunebert resume NAME`` continues where a pipeline stopped: a killed sweep phase resumes through
``runner.resume_sweep``; a finished sweep is not re-run; the selection phase restarts (it keeps no
state of its own); a finished pipeline just prints its result. Time spent by a killed process
counts against the budget, up to its last heartbeat (ALIVE_FILE, touched every HEARTBEAT_S).

**The budget split** (``split_budget`` before the sweep, ``fit_selection`` after it). The
selection re-trains ``top_k × seeds`` configs for their full length, ``workers`` at a time, then
evaluates the chosen models; that cost can be computed from the time of one training::

    selection_s(k, s) = ceil(k·s / workers) · max(training_s of ranks 1..k) + eval_s

with ``training_s`` = epochs × seconds per trial-epoch and ``eval_s`` one trial-epoch (loading
the models and evaluating them on validation and test, which are smaller than train, costs less
than one training epoch), both divided by ``selection_speedup``: on CPU a sweep trial trains on
``cpus_per_trial`` threads beside other trials, a selection training on ``cpu_count // workers``. Whole waves of ``workers`` trainings are counted (``ceil``), and the
slowest candidate sets the wave's length, so the estimate errs long. Before the sweep, the
selection is reserved ``selection_s(top_k, seeds)``, but at most ``max_select_share`` (half) of
the budget: the selection can only choose among what the sweep found, so starving the search to
re-train more seeds is the worse trade. The sweep gets the rest. When the speed cannot be measured
on this machine (trials run on a remote cluster or on a GPU this machine lacks), the reserve is
``fallback_select_share`` (35 %) of the budget: on the reference run (MASSIVE, 2-core CPU,
4-epoch trials) 3 configs × 3 seeds are 36 trial-epochs of ~51 s, about 26 % of 2 hours, and
the 35 % leave room for evaluation and slower configs.

When top_k × seeds do not fit (before the sweep: in the share; after it: in the time left), they
shrink one step at a time, the larger of the two first and top_k on a tie — (3, 3) → (2, 3) →
(2, 2) → (1, 2) → (1, 1) — keeping breadth (configs) and depth (seeds) balanced, and seeds on a
tie because averaging over seeds is what makes the choice trustworthy and what an ensemble is
made of. One training of one config always runs, even when it does not fit, since a pipeline must
hand over a model: the total can then exceed the budget by at most that one training (and its
evaluation), never more — as far as the measured speed holds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import tuning.results.outputs as outputs
import tuning.results.selection as selection
from trainables import registry
from trainables.data import load_raw_splits
from trainables.errors import ConfigError, UserError
from tuning.arguments import add_objective_arguments, add_sweep_arguments, objective_settings, sweep_settings
from tuning.config import (DEFAULT_POPULATION, DEFAULT_ROOT, POPULATION_SCHEDULERS, SweepConfig,
                           check_sweep_name, resume_store)
from tuning.credentials import redact
from tuning.results.jobs import threads_per_worker
from tuning.sweep.lock import sweep_lock

log = logging.getLogger(__name__)

PIPELINE_FILE = "tunebert_pipeline.json"
DEADLINE_FILE = "tunebert_sweep_deadline"   # read by runner.DeadlineStopper
ALIVE_FILE = "tunebert_pipeline.alive"      # touched while a process works on the pipeline
HEARTBEAT_S = 10.0
# `tunebert tune` without --trials: the sweep phase's time share, not a count, ends the sweep
BUDGET_TRIALS = 1000
PROBE_TRAIN_EXAMPLES = 96                   # three batches of 32: enough for a steady rate
PROBE_VAL_EXAMPLES = 32
PHASES = ("sweep", "select", "done")
# what a selection writes into the output folder (tuning.results.selection)
_SELECTION_FOLDER = re.compile(r"model|seed-\d+")

HELP = "the whole job in one command: sweep, final selection, one test evaluation, one time budget"
DESCRIPTION = (
    "Run a sweep, then re-train its top configs over seeds (and their ensemble), choose on "
    "validation, evaluate the choice once on test, and hand over one model folder, all within "
    "--time-budget (default 2h), split between the phases from a measured training speed. "
    "Everything is logged to the sweep's MLflow experiment; `tunebert resume NAME` continues a "
    "stopped run.")


def say(message: str) -> None:
    log.info(f"tune: {message}")


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class PipelineConfig:
    """What ``tunebert tune`` adds to a sweep's settings. Phases: ``budget_s`` all of them;
    ``max_select_share``/``fallback_select_share`` the plan made before the sweep; the rest the
    selection phase."""

    budget_s: float = 2 * 3600.0           # the whole job: plan, sweep, selection, test
    top_k: int = 3                          # configs the selection re-trains (upper bound)
    seeds: int = 3                          # seeds per config (upper bound)
    ensemble: bool = True                   # also consider the ensemble of the chosen seed models
    select_workers: int = 1                 # selection trainings at a time
    max_select_share: float = 0.5           # before the sweep: selection gets at most this share
    fallback_select_share: float = 0.35     # before the sweep, when speed cannot be measured here
    output_dir: Optional[str] = None        # default: <storage>/models/<sweep name>
    select_epochs: Optional[int] = None     # override the configs' epochs in the selection
    max_train_examples: Optional[int] = None  # selection trains on a sample (smoke tests)

    def __post_init__(self) -> None:
        if isinstance(self.budget_s, bool) or not isinstance(self.budget_s, (int, float)) \
                or not math.isfinite(self.budget_s) or self.budget_s <= 0:
            raise ConfigError(f"`budget_s` (--time-budget) must be a positive number of seconds, "
                              f"but got {self.budget_s!r}")
        for name in ("top_k", "seeds", "select_workers"):
            _check_count(name, getattr(self, name), f"--{name.replace('_', '-')}")
        for name in ("select_epochs", "max_train_examples"):
            if getattr(self, name) is not None:
                _check_count(name, getattr(self, name), None)
        if not isinstance(self.ensemble, bool):
            raise ConfigError(f"`ensemble` must be true or false, but got {self.ensemble!r}")
        for name in ("max_select_share", "fallback_select_share"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
                raise ConfigError(f"`{name}` must lie strictly between 0 and 1, but got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PipelineConfig":
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ConfigError(f"unknown pipeline setting(s) {unknown}")
        return cls(**d)


def _check_count(name: str, value: Any, flag: Optional[str]) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        where = f" ({flag})" if flag else ""
        raise ConfigError(f"`{name}`{where} must be an integer >= 1, but got {value!r}")


# --------------------------------------------------------------------------- the budget split (pure)


@dataclass(frozen=True)
class SelectionPlan:
    top_k: int
    seeds: int
    seconds: float   # planned length of the selection phase
    fits: bool       # False: even one training does not fit the time given (it runs anyway)


@dataclass(frozen=True)
class BudgetSplit:
    budget_s: float
    sweep_s: float
    select_s: float
    selection: SelectionPlan
    basis: str       # "measured speed" or "fixed share"


def selection_seconds(top_k: int, seeds: int, workers: int, training_s: Sequence[float],
                      eval_s: float) -> float:
    """ceil(top_k·seeds / workers) waves, each as long as the slowest of the top_k configs'
    trainings, plus ``eval_s`` for evaluating the chosen models."""
    return math.ceil(top_k * seeds / workers) * max(training_s[:top_k]) + eval_s


def shrink_steps(top_k: int, seeds: int) -> list[tuple[int, int]]:
    """(top_k, seeds), then one step smaller at a time down to (1, 1): the larger of the two
    shrinks first, top_k on a tie. (3, 3) → (2, 3) → (2, 2) → (1, 2) → (1, 1)."""
    steps = [(top_k, seeds)]
    while steps[-1] != (1, 1):
        k, s = steps[-1]
        steps.append((k - 1, s) if k >= s and k > 1 else (k, s - 1))
    return steps


def fit_selection(available_s: float, training_s: Sequence[float], eval_s: float, top_k: int,
                  seeds: int, workers: int = 1) -> SelectionPlan:
    """The largest selection along ``shrink_steps`` that fits in ``available_s``.

    ``training_s[r]``: seconds to train the rank-(r+1) config once, best first; there may be
    fewer ranks than ``top_k`` (a sweep that finished fewer trials). When even (1, 1) does not
    fit, the plan is (1, 1) with ``fits=False``: one training always runs.
    """
    if not training_s:
        raise ValueError("fit_selection needs the training time of at least one config")
    for k, s in shrink_steps(min(top_k, len(training_s)), seeds):
        seconds = selection_seconds(k, s, workers, training_s, eval_s)
        if seconds <= available_s:
            return SelectionPlan(k, s, seconds, True)
    return SelectionPlan(1, 1, selection_seconds(1, 1, workers, training_s, eval_s), False)


def split_budget(budget_s: float, training_s: Optional[float], eval_s: float, top_k: int,
                 seeds: int, workers: int = 1, *, trial_s: Optional[float] = None,
                 max_select_share: float = 0.5, fallback_select_share: float = 0.35) -> BudgetSplit:
    """Before the sweep: the selection's reserve and the sweep's share of ``budget_s``.

    ``training_s``: the estimated seconds of one selection training (None: not measurable here,
    then the reserve is ``fallback_select_share`` of the budget). ``trial_s``: the longest sweep
    trial (default ``training_s``). The selection gets ``selection_s(top_k, seeds)``, shrunk until
    it fits ``max_select_share`` of the budget; the sweep gets the rest, which must hold one
    trial, else ``ConfigError``.
    """
    if training_s is None:
        select_s = fallback_select_share * budget_s
        return BudgetSplit(budget_s, budget_s - select_s, select_s,
                           SelectionPlan(top_k, seeds, select_s, True), "fixed share")
    trial_s = training_s if trial_s is None else trial_s
    plan = fit_selection(max_select_share * budget_s, [training_s] * top_k, eval_s, top_k, seeds,
                         workers)
    sweep_s = budget_s - plan.seconds
    if sweep_s < trial_s:
        need = trial_s + selection_seconds(1, 1, 1, [training_s], eval_s)
        raise ConfigError(
            f"--time-budget {_clock(budget_s)} is too small: at the measured speed one sweep trial "
            f"takes about {_clock(trial_s)} and the final selection needs at least "
            f"{_clock(plan.seconds)} (one training and its evaluation), so the budget must be at "
            f"least {_clock(need)}. Raise --time-budget, or lower --epochs or --max-length.")
    return BudgetSplit(budget_s, sweep_s, plan.seconds, plan, "measured speed")


def selection_speedup(cpus_per_trial: float, gpus_per_trial: float, select_workers: int,
                      address: Optional[str] = None) -> float:
    """How many times faster one selection training runs than one sweep trial of the same config.

    On CPU in embedded mode a sweep trial trains on ``cpus_per_trial`` threads beside the other
    trials, while a selection training gets ``cpu_count // select_workers`` threads
    (``tuning.results.jobs.threads_per_worker``): the ratio of the two. Training speed grows a little
    less than linearly with threads, so a plan made with it errs long. Measured on MASSIVE
    (2 cores): sweep trials at 1 thread took 1m26s per epoch, the selection's trainings 34 s;
    without this factor the 2-hour plan left 22 of its 30 selection minutes unused. 1.0 on GPUs
    and on a cluster, whose machines this one cannot see."""
    if gpus_per_trial > 0 or address not in (None, "", "local"):
        return 1.0
    return max(1.0, threads_per_worker(select_workers) / max(1, int(cpus_per_trial)))


def _clock(seconds: float) -> str:
    """600 -> '10m00s', 7200 -> '2h00m', 42.4 -> '42s'."""
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


# --------------------------------------------------------------------------- measuring speed


def measure_epoch_seconds(prep) -> Optional[float]:
    """Seconds one sweep trial needs per epoch, from one short training on this machine.

    Trains a default fine-tuning config of the sweep's model on ``PROBE_TRAIN_EXAMPLES`` training
    texts (a seeded sample) with the threads one trial gets, and scales its rate to the train
    split plus a forward pass over validation (a third of a training step per example). The
    first batches are the slowest (allocation, warm-up), so the estimate errs long. Returns None
    when the trials will not run on this machine's hardware (a remote cluster, or GPUs here
    missing): the caller then falls back to a fixed share.
    """
    import numpy as np
    import torch

    cfg = prep.config
    remote = cfg.address not in (None, "", "local")
    if remote or (cfg.gpus_per_trial > 0 and not torch.cuda.is_available()):
        return None
    device = torch.device("cuda", 0) if cfg.gpus_per_trial > 0 else torch.device("cpu")
    config = registry.config_class("finetune").from_dict(registry.resolve_config(
        {"trainable": "finetune", "model": cfg.model, "max_length": cfg.max_length, "epochs": 1,
         "seed": cfg.seed, "precision": cfg.precision}))
    train, val = prep.data.splits["train"], prep.data.splits["validation"]
    rng = np.random.default_rng(cfg.seed)

    def sample(split, n):
        keep = rng.permutation(len(split))[:n]
        return type(split)([split.input_ids[i] for i in keep], split.labels[keep])

    data = dataclasses.replace(prep.data, splits={"train": sample(train, PROBE_TRAIN_EXAMPLES),
                                                  "validation": sample(val, PROBE_VAL_EXAMPLES)})
    rates: list[float] = []
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(cfg.cpus_per_trial)))  # as runtime.set_threads in a trial
    def report(metrics: dict, write) -> None:
        rates.append(metrics["samples_per_s"])

    try:
        registry.fit_function("finetune")(config, data, device=device, report=report)
    finally:
        torch.set_num_threads(threads)
    rate = rates[-1] if rates and math.isfinite(rates[-1]) and rates[-1] > 0 else None
    if rate is None:
        return None
    return len(train) / rate + len(val) / (3 * rate)


def trial_epoch_seconds(sweep_dir: Path, trial_id: str) -> list[float]:
    """``time_this_iter_s`` of every epoch a trial reported (Ray's result.json; train, validation
    and checkpoint together)."""
    seconds = []
    for path in sorted(Path(sweep_dir).glob(f"*_{trial_id}/result.json")):
        for line in path.read_text(errors="replace").splitlines():
            try:
                value = json.loads(line).get("time_this_iter_s")
            except (json.JSONDecodeError, AttributeError):
                continue
            if isinstance(value, (int, float)) and math.isfinite(value) and value > 0:
                seconds.append(float(value))
    return seconds


def training_epochs(config: dict[str, Any], epochs: Optional[int] = None) -> int:
    """Epochs one training of ``config`` runs (both stages of a contrastive config), with the
    classifier epochs replaced by ``epochs`` when given (as the selection does)."""
    config = {**config, **({"epochs": epochs, "stop_epoch": None} if epochs else {})}
    cfg = registry.config_class(config.get("trainable", "finetune")).from_dict(config)
    return int(getattr(cfg, "total_epochs", cfg.last_epoch))  # a sweep's stop_epoch shortens it


# --------------------------------------------------------------------------- state on disk


@dataclass
class PipelineState:
    """Where a pipeline stands; rewritten after every step, so a killed one can be continued."""

    phase: str = "sweep"                    # sweep -> select -> done
    basis: str = "fixed share"              # how the split was planned
    epoch_s_estimate: Optional[float] = None
    plan_s: float = 0.0                     # validation and speed measurement, before the sweep
    sweep_planned_s: float = 0.0
    select_reserved_s: float = 0.0          # the selection's share, planned before the sweep
    select_planned_s: float = 0.0           # re-planned after the sweep from its measured speed
    sweep_actual_s: float = 0.0
    select_actual_s: float = 0.0
    top_k: int = 0                          # the selection's plan (shrunk if needed)
    seeds: int = 0
    notes: list[str] = field(default_factory=list)
    session: Optional[dict] = None          # {"phase", "started_at"} while a process works on it
    result: Optional[dict] = None           # the handed-over model, once done

    @property
    def total_s(self) -> float:
        return self.plan_s + self.sweep_actual_s + self.select_actual_s

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PipelineState":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class Pipeline:
    sweep: SweepConfig
    config: PipelineConfig
    state: PipelineState

    @property
    def folder(self) -> Path:
        return self.sweep.sweep_dir

    @property
    def path(self) -> Path:
        return self.folder / PIPELINE_FILE

    @property
    def owner(self) -> "outputs.Owner":
        """Who the output folder belongs to (``tuning.results.outputs.claim``)."""
        return outputs.Owner(self.sweep.name, str(self.path))

    @property
    def output_dir(self) -> Path:
        return Path(self.config.output_dir) if self.config.output_dir else \
            self.sweep.root / "models" / self.sweep.name

    def save(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"sweep": self.sweep.saved_dict(), "pipeline": self.config.to_dict(),
                           "state": self.state.to_dict()}, indent=2)
        partial = self.path.with_suffix(".json.partial")
        partial.write_text(text)
        partial.replace(self.path)  # atomic: a kill never leaves half a file

    def write_deadline(self, seconds_from_now: float) -> None:
        (self.folder / DEADLINE_FILE).write_text(f"{time.time() + max(0.0, seconds_from_now):.3f}\n")


def pipeline_path(name: str, storage: str = DEFAULT_ROOT) -> Path:
    return Path(storage).expanduser().resolve() / "ray" / check_sweep_name(name) / PIPELINE_FILE


def exists(name: str, storage: str = DEFAULT_ROOT) -> bool:
    """Whether ``name`` was started by ``tunebert tune`` (``tunebert resume`` asks)."""
    try:
        return pipeline_path(name, storage).is_file()
    except ConfigError:
        return False


def load_pipeline(name: str, storage: str = DEFAULT_ROOT) -> Pipeline:
    path = pipeline_path(name, storage)
    if not path.is_file():
        raise ConfigError(f"no `tunebert tune` pipeline named {name!r} under "
                          f"{path.parent.parent.parent}; pass the --storage it used")
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        return Pipeline(SweepConfig.from_dict(saved["sweep"]),
                        PipelineConfig.from_dict(saved["pipeline"]),
                        PipelineState.from_dict(saved["state"]))
    except (ValueError, KeyError, TypeError) as exc:  # JSONDecodeError and UnicodeDecodeError too
        raise ConfigError(f"the saved state of pipeline {name!r}, {path}, is damaged and cannot be "
                          f"read ({type(exc).__name__}: {exc}); it is written by `tunebert tune`: "
                          f"restore it from a backup, or start a new pipeline with another --name"
                          ) from None


class _Heartbeat:
    """Touches ALIVE_FILE every HEARTBEAT_S while a phase runs, so that a resume can tell how
    long a killed process worked."""

    def __init__(self, path: Path):
        self.path = path
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="tunebert-heartbeat", daemon=True)

    def _beat(self) -> None:
        while True:
            try:
                self.path.touch()
            except OSError:
                pass
            if self._stop.wait(HEARTBEAT_S):
                return

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class _Session:
    """One process working on one phase: its time is added to the phase however it ends."""

    def __init__(self, pipeline: Pipeline, phase: str):
        self.pipeline, self.phase = pipeline, phase

    def __enter__(self):
        self.start = time.time()
        self.pipeline.state.session = {"phase": self.phase, "started_at": self.start}
        self.pipeline.save()
        self.heartbeat = _Heartbeat(self.pipeline.folder / ALIVE_FILE).__enter__()
        return self

    def __exit__(self, kind, exc, tb) -> None:
        self.heartbeat.__exit__()
        state = self.pipeline.state
        attr = f"{self.phase}_actual_s"
        setattr(state, attr, getattr(state, attr) + time.time() - self.start)
        state.session = None
        self.pipeline.save()
        # Ctrl-C or SIGTERM (interrupt.Interrupted); a stopped sweep names its resume command itself
        if kind is not None and issubclass(kind, KeyboardInterrupt) and not getattr(exc, "resume_hint", None):
            say(f"interrupted in the {self.phase} phase; continue with: tunebert resume "
                f"{self.pipeline.sweep.name}" + _storage_flag(self.pipeline.sweep.storage))


def _count_killed_session(pipeline: Pipeline) -> None:
    """A process that was killed left its session open: count its time up to its last heartbeat."""
    session = pipeline.state.session
    if not session:
        return
    alive = pipeline.folder / ALIVE_FILE
    last = alive.stat().st_mtime if alive.is_file() else session["started_at"]
    lost = max(0.0, last - session["started_at"])
    attr = f"{session['phase']}_actual_s"
    setattr(pipeline.state, attr, getattr(pipeline.state, attr) + lost)
    pipeline.state.notes.append(f"a process stopped during the {session['phase']} phase after "
                                f"about {_clock(lost)} (counted up to its last heartbeat)")
    pipeline.state.session = None
    pipeline.save()


# --------------------------------------------------------------------------- the phases


def start_pipeline(sweep: SweepConfig, config: PipelineConfig) -> Pipeline:
    """Validate, measure speed, split the budget and write the pipeline's state. No Ray yet:
    every refusal happens here, before anything is written."""
    import tuning.sweep.runner as runner  # local: keeps torch, mlflow and ray off --help

    started = time.time()
    sweep = sweep.anchored()  # absolute paths and the MLflow store, as the sweep will save them
    for path in (sweep.sweep_dir / "tuner.pkl", sweep.sweep_dir / PIPELINE_FILE):
        if path.exists():
            raise ConfigError(f"a sweep named {sweep.name!r} already exists in {sweep.sweep_dir}; "
                              f"continue it with `tunebert resume {sweep.name}` or choose another "
                              f"--name")
    pipeline = Pipeline(sweep, config, PipelineState())
    out = pipeline.output_dir
    outputs.check_owner(out, sweep.sweep_dir)  # another pipeline's: named in the refusal
    if out.exists() and (not out.is_dir() or any(e.name != outputs.OWNER_FILE
                                                 for e in out.iterdir())):
        raise ConfigError(f"--output-dir {out} is not an empty folder; the handed-over model goes "
                          f"there. Choose a new or empty folder.")
    prep = runner.prepare(sweep)
    runner.claim_name(prep, resume=False)  # before the speed is measured: a reused name is refused
    trial_epochs = runner.max_epochs(prep.space, sweep.epochs)
    epoch_s = measure_epoch_seconds(prep)
    if epoch_s is None:
        split = split_budget(config.budget_s, None, 0.0, config.top_k, config.seeds,
                             config.select_workers, fallback_select_share=config.fallback_select_share)
    else:
        share = 1.0
        if config.max_train_examples:
            share = min(1.0, config.max_train_examples / len(prep.data.splits["train"]))
        speedup = selection_speedup(sweep.cpus_per_trial, sweep.gpus_per_trial,
                                    config.select_workers, sweep.address)
        training_s = (config.select_epochs or trial_epochs) * epoch_s * share / speedup
        split = split_budget(config.budget_s, training_s, epoch_s / speedup, config.top_k,
                             config.seeds,
                             config.select_workers, trial_s=trial_epochs * epoch_s,
                             max_select_share=config.max_select_share)
    plan_s = time.time() - started
    sweep_s = split.sweep_s - plan_s
    if sweep_s <= 0:
        raise ConfigError(f"--time-budget {_clock(config.budget_s)} is too small: checking the inputs "
                          f"and measuring speed used {_clock(plan_s)} of it, and the sweep needs time "
                          f"after that. Raise --time-budget.")
    pipeline.sweep = dataclasses.replace(sweep, time_budget_s=sweep_s)
    state = pipeline.state
    state.basis, state.epoch_s_estimate, state.plan_s = split.basis, epoch_s, plan_s
    state.sweep_planned_s = sweep_s
    state.select_reserved_s = state.select_planned_s = split.select_s
    state.top_k, state.seeds = split.selection.top_k, split.selection.seeds
    speed = f"{_clock(epoch_s)} per trial-epoch measured here" if epoch_s else \
        "speed not measurable on this machine"
    say(f"budget {_clock(config.budget_s)} ({speed}): sweep {_clock(sweep_s)}, selection "
        f"{_clock(split.select_s)} for top {split.selection.top_k} x {split.selection.seeds} "
        f"seed(s), planning took {_clock(plan_s)}")
    if (split.selection.top_k, split.selection.seeds) != (config.top_k, config.seeds):
        note = (f"planned top {config.top_k} x {config.seeds} seeds do not fit "
                f"{config.max_select_share:.0%} of the budget at the measured speed; planning "
                f"top {split.selection.top_k} x {split.selection.seeds}")
        state.notes.append(note)
        say(f"note: {note}")
    # the output folder is this pipeline's from now on; of two pipelines claiming it at once, one
    # is refused here (claim is atomic), before Ray starts
    outputs.claim(out, pipeline.owner)
    pipeline.save()
    return pipeline


def advance(pipeline: Pipeline, until: str = "done") -> Pipeline:
    """Run the pipeline's remaining phases, stopping once it reaches phase ``until``."""
    if until not in PHASES:
        raise ValueError(f"`until` must be one of {PHASES}, but got {until!r}")
    _count_killed_session(pipeline)
    for phase, step in (("sweep", _sweep_phase), ("select", _select_phase)):
        if pipeline.state.phase == until:
            break
        if pipeline.state.phase == phase:
            step(pipeline)
    return pipeline


def run_pipeline(sweep: SweepConfig, config: PipelineConfig) -> Pipeline:
    """The whole job: plan, sweep, select, test. Returns the finished pipeline. One driver at a
    time (``sweep_lock``)."""
    with sweep_lock(sweep.sweep_dir, sweep.name):
        return advance(start_pipeline(sweep, config))


def resume_pipeline(name: str, storage: str = DEFAULT_ROOT, **changes: Any) -> Pipeline:
    """Continue a stopped pipeline; ``changes`` (tracking_uri, address) apply to its sweep. The
    MLflow store must be the one it started with (``config.resume_store``). One driver at a time
    (``sweep_lock``)."""
    import tuning.tracking as tracking  # local: keeps mlflow and ray off --help

    with sweep_lock(pipeline_path(name, storage).parent, name):
        pipeline = load_pipeline(name, storage)
        changes["tracking_uri"] = resume_store(name, pipeline.sweep.tracking_uri,
                                               changes.get("tracking_uri"))
        pipeline.sweep = SweepConfig.from_dict({**pipeline.sweep.to_dict(), **changes})
        # refused within seconds when it cannot be reached, whatever the phase (the selection
        # reads MLflow before anything else and would wait MLflow's own minutes of retries)
        tracking.bound_http_waits()
        tracking.check_store(pipeline.sweep.resolved_tracking_uri())
        if pipeline.state.phase != "done":
            say(f"continuing {name!r} in its {pipeline.state.phase} phase "
                f"({_clock(pipeline.state.total_s)} of {_clock(pipeline.config.budget_s)} used)")
        return advance(pipeline)


def _sweep_phase(pipeline: Pipeline) -> None:
    import tuning.sweep.runner as runner  # local: keeps torch, mlflow and ray off --help

    sweep, state = pipeline.sweep, pipeline.state
    left = state.sweep_planned_s - state.sweep_actual_s
    with _Session(pipeline, "sweep"):
        pipeline.write_deadline(left)
        if (sweep.sweep_dir / "tuner.pkl").exists():
            say(f"resuming the sweep with {_clock(max(0.0, left))} of its share left")
            changes = {k: getattr(sweep, k) for k in ("tracking_uri", "address")}
            outcome = runner.resume_sweep(sweep.name, sweep.storage, **changes)
        else:
            outcome = runner.run_sweep(
                sweep, stop=runner.DeadlineStopper(str(pipeline.folder / DEADLINE_FILE)))
    counts = outcome.counts
    say(f"sweep done in {_clock(state.sweep_actual_s)} (planned {_clock(state.sweep_planned_s)}): "
        f"{counts['FINISHED']} finished, {counts['FAILED']} failed, {counts['KILLED']} killed")
    if outcome.best is None:
        raise UserError(f"the sweep phase of {sweep.name!r} finished no trial with a finite "
                        f"{sweep.metric!r}, so there is nothing to select. Check the failed "
                        f"trials in MLflow, or raise --time-budget.")
    state.phase = "select"
    pipeline.save()


def _measured_training_s(pipeline: Pipeline, leaders) -> tuple[list[float], float, str]:
    """Seconds to train each leader once (best first) and one trial-epoch (for evaluation),
    from the sweep's Ray results; the pre-sweep estimate where a trial left none."""
    config = pipeline.config
    per_trial = {t.trial_id: trial_epoch_seconds(pipeline.folder, t.trial_id) for t in leaders}
    everything = [s for values in per_trial.values() for s in values]
    fallback = (sum(everything) / len(everything)) if everything else pipeline.state.epoch_s_estimate
    if fallback is None:
        return [], 0.0, "no speed known"
    share = 1.0
    if config.max_train_examples:
        train_size = _train_size(pipeline)
        share = min(1.0, config.max_train_examples / train_size) if train_size else 1.0
    epoch_s, training_s = [], []
    for trial in leaders:
        values = per_trial[trial.trial_id]
        seconds = sum(values) / len(values) if values else fallback
        epoch_s.append(seconds)
        training_s.append(training_epochs(trial.config, config.select_epochs) * seconds * share)
    basis = "the sweep's Ray results" if everything else "the speed measured before the sweep"
    speedup = selection_speedup(pipeline.sweep.cpus_per_trial, pipeline.sweep.gpus_per_trial,
                                config.select_workers, pipeline.sweep.address)
    if speedup > 1:
        basis += f", x{speedup:g} for the selection's threads"
    return [s / speedup for s in training_s], max(epoch_s) / speedup, basis


def _train_size(pipeline: Pipeline) -> int:
    return len(load_raw_splits(pipeline.sweep.data)["train"].texts)


def _select_phase(pipeline: Pipeline) -> None:
    # local: keeps mlflow and ray off --help
    import tuning.tracking.best as best
    import tuning.tracking as tracking

    sweep, config, state = pipeline.sweep, pipeline.config, pipeline.state
    # refuses a folder another pipeline claimed meanwhile (one started before claims existed, or
    # whose claim was removed) before anything runs; claims it again if it was removed
    outputs.claim(pipeline.output_dir, pipeline.owner)
    uri = sweep.resolved_tracking_uri()
    leaders = best.top_k(sweep.name, config.top_k, sweep.metric, sweep.mode,
                         tracking_uri=sweep.tracking_uri, storage=sweep.storage)
    left = config.budget_s - state.total_s
    training_s, eval_s, basis = _measured_training_s(pipeline, leaders) if leaders else ([], 0.0, "")
    if training_s:
        plan = fit_selection(left, training_s, eval_s, config.top_k, config.seeds, config.select_workers)
        state.top_k, state.seeds, state.select_planned_s = plan.top_k, plan.seeds, plan.seconds
        asked = min(config.top_k, len(leaders))  # a sweep may have finished fewer trials
        if (plan.top_k, plan.seeds) != (asked, config.seeds):
            need = selection_seconds(asked, config.seeds, config.select_workers, training_s, eval_s)
            _note(pipeline, f"top {asked} x {config.seeds} seeds need {_clock(need)} at the speed "
                            f"in {basis}, but {_clock(max(0.0, left))} of the budget are left: "
                            f"selecting top {plan.top_k} x {plan.seeds} instead")
        if not plan.fits:
            _note(pipeline, f"even one training ({_clock(plan.seconds)} with its evaluation) does "
                            f"not fit the {_clock(max(0.0, left))} left; running it anyway, so the "
                            f"pipeline ends up to that much over its budget")
    parent = tracking.sweep_run(uri, sweep.name)
    if parent is not None:
        tracking.annotate_run(uri, parent.info.run_id, metrics={
            "pipeline.budget_s": config.budget_s, "pipeline.sweep_planned_s": state.sweep_planned_s,
            "pipeline.sweep_actual_s": state.sweep_actual_s,
            "pipeline.select_reserved_s": state.select_reserved_s,
            "pipeline.select_planned_s": state.select_planned_s,
            "pipeline.top_k": state.top_k, "pipeline.seeds": state.seeds},
            tags={"tunebert.pipeline.phase": "select",
                  "tunebert.pipeline.notes": "\n".join(state.notes) or "none"})
    say(f"selection: top {state.top_k} x {state.seeds} seed(s), planned "
        f"{_clock(state.select_planned_s)}, {_clock(max(0.0, left))} of the budget left")
    out = pipeline.output_dir
    _clear_stopped_selection(pipeline)
    ensemble = config.ensemble and state.seeds >= 2
    if config.ensemble and not ensemble:
        _note(pipeline, "no ensemble: it needs at least 2 seeds (an ensemble of one model is "
                        "that model)")
    with _Session(pipeline, "select"):
        result = selection.final_selection(
            sweep.name, state.top_k, state.seeds, sweep.metric, sweep.tracking_uri, sweep.storage,
            mode=sweep.mode, epochs=config.select_epochs,
            max_train_examples=config.max_train_examples, output_dir=str(out),
            ensemble=ensemble, workers=config.select_workers)
    state.result = _result_summary(result, sweep.metric)
    state.phase = "done"
    pipeline.save()
    _log_summary(pipeline, uri, parent.info.run_id if parent is not None else None)


def _clear_stopped_selection(pipeline: Pipeline) -> None:
    """Remove what a stopped selection of this pipeline wrote to its output folder: swaps left
    half-done and the ``seed-<seed>/`` and ``model/`` model folders that hold only what tunebert
    wrote. Anything else there stays (``tuning.results.outputs``)."""
    out = pipeline.output_dir
    outputs.recover_all(out)
    for entry in sorted(out.iterdir()) if out.is_dir() else []:
        if _SELECTION_FOLDER.fullmatch(entry.name) and outputs.remove_own_model(entry):
            log.info(f"removed {entry}, written by a selection of this pipeline that was stopped")


def _note(pipeline: Pipeline, note: str) -> None:
    pipeline.state.notes.append(note)
    say(f"note: {note}")


def _result_summary(result, metric: str) -> dict[str, Any]:
    """What the pipeline hands over, from a ``selection.SelectionResult``."""
    kind = result.handed_over
    val = result.ensemble_val if kind == "ensemble" else result.single_val
    return {"handed_over": kind, "model_dir": str(result.model_dir), "metric": metric,
            "val": None if val is None else float(val),
            "single_val": None if result.single_val is None else float(result.single_val),
            "ensemble_val": None if result.ensemble_val is None else float(result.ensemble_val),
            "test_accuracy": float(result.handed_over_test["test_accuracy"]),
            "test_macro_f1": float(result.handed_over_test["test_macro_f1"]),
            # the chosen config's seed models one by one (mean ± std): what one training gives
            "config_test_accuracy_mean": float(result.test_accuracy_mean),
            "config_test_accuracy_std": float(result.test_accuracy_std),
            "config": result.chosen.config, "trial_id": result.chosen.trial_id,
            "rank": result.chosen.rank, "seeds": list(result.chosen.seeds),
            "selection_run_id": result.run_id}


def _log_summary(pipeline: Pipeline, uri: str, parent_run_id: Optional[str]) -> None:
    """The pipeline's summary on the sweep's parent run: metrics, tags and PIPELINE_FILE."""
    import tuning.tracking as tracking  # local: keeps mlflow and ray off --help

    if parent_run_id is None:
        return
    state, result = pipeline.state, pipeline.state.result
    metric = result["metric"]
    metrics = {"pipeline.budget_s": pipeline.config.budget_s, "pipeline.plan_s": state.plan_s,
               "pipeline.sweep_planned_s": state.sweep_planned_s,
               "pipeline.sweep_actual_s": state.sweep_actual_s,
               "pipeline.select_reserved_s": state.select_reserved_s,
               "pipeline.select_planned_s": state.select_planned_s,
               "pipeline.select_actual_s": state.select_actual_s, "pipeline.total_s": state.total_s,
               "pipeline.top_k": state.top_k, "pipeline.seeds": state.seeds,
               "pipeline.test_accuracy": result["test_accuracy"],
               "pipeline.test_macro_f1": result["test_macro_f1"]}
    if result["val"] is not None:
        metrics[f"pipeline.{metric}"] = result["val"]
    tags = {"tunebert.pipeline.phase": "done", "tunebert.pipeline.handed_over": result["handed_over"],
            "tunebert.pipeline.model_dir": result["model_dir"],
            "tunebert.pipeline.best_config": json.dumps(result["config"], sort_keys=True),
            "tunebert.pipeline.selection_run_id": result["selection_run_id"],
            "tunebert.pipeline.predict": predict_command(result["model_dir"]),
            "tunebert.pipeline.notes": "\n".join(state.notes) or "none"}
    tracking.annotate_run(uri, parent_run_id, metrics=metrics, tags=tags)
    with tempfile.TemporaryDirectory() as folder:
        shutil.copy(pipeline.path, Path(folder) / PIPELINE_FILE)
        (Path(folder) / "pipeline.md").write_text(render_summary(pipeline))
        tracking.log_artifacts_to(uri, parent_run_id, folder, "pipeline")


# --------------------------------------------------------------------------- output


def predict_command(model_dir: str) -> str:
    """How to use the handed-over model (``tuning.serve.predict``)."""
    import shlex

    return f"tunebert predict {shlex.quote(str(model_dir))} \"text to classify\""


def _storage_flag(storage: str) -> str:
    return "" if storage == DEFAULT_ROOT else f" --storage {storage}"


def render_summary(pipeline: Pipeline) -> str:
    """The finished pipeline as Markdown: phases (planned vs actual), the handed-over model, its
    scores and config, and how to use it."""
    import yaml

    state, config, result = pipeline.state, pipeline.config, pipeline.state.result
    metric = result["metric"]
    val = "n/a" if result["val"] is None else f"{result['val']:.4f}"
    lines = [f"# `tunebert tune` {pipeline.sweep.name}", "",
             f"Budget {_clock(config.budget_s)}, used {_clock(state.total_s)}; split planned "
             f"from {state.basis}.", "",
             "| phase | planned | actual |", "|---|---:|---:|",
             f"| plan (checks, speed) | — | {_clock(state.plan_s)} |",
             f"| sweep | {_clock(state.sweep_planned_s)} | {_clock(state.sweep_actual_s)} |",
             f"| selection + test (top {state.top_k} x {state.seeds} seeds) | "
             f"{_clock(state.select_planned_s)} (reserved before the sweep: "
             f"{_clock(state.select_reserved_s)}) | {_clock(state.select_actual_s)} |",
             f"| total | {_clock(config.budget_s)} | {_clock(state.total_s)} |", ""]
    lines += [f"- note: {note}" for note in state.notes] + ([""] if state.notes else [])
    scores = [f"{name} {result[key]:.4f}" for name, key in (("best seed model", "single_val"),
                                                             ("ensemble", "ensemble_val"))
              if result[key] is not None]
    lines += [f"Handed over: **{result['handed_over']}** of trial {result['trial_id']} (rank "
              f"{result['rank']}, seeds {', '.join(map(str, result['seeds']))})", "",
              f"- model: `{result['model_dir']}`",
              f"- validation {metric}: **{val}**" + (f" ({'; '.join(scores)})" if scores else ""),
              f"- test accuracy: **{result['test_accuracy']:.4f}**, test macro-F1 "
              f"{result['test_macro_f1']:.4f} (read once, after the choice)",
              *([f"- the chosen config's seed models one by one: test accuracy "
                 f"{result['config_test_accuracy_mean']:.4f} ± {result['config_test_accuracy_std']:.4f}"]
                if result.get("config_test_accuracy_mean") is not None else []),
              f"- use it: `{predict_command(result['model_dir'])}`", "",
              "Config:", "", "```yaml", yaml.safe_dump(result["config"], sort_keys=True).rstrip(),
              "```", ""]
    return "\n".join(lines)


def print_summary(pipeline: Pipeline) -> None:
    print()
    print(render_summary(pipeline), flush=True)
    sweep = pipeline.sweep
    say(f"MLflow: {redact(sweep.resolved_tracking_uri())} (experiment {sweep.name!r}; the sweep's "
        f"parent run holds the summary under pipeline/)")


# --------------------------------------------------------------------------- the CLI subcommand


# what `tunebert tune` tries first unless --warm-start says otherwise (search_spaces.presets)
DEFAULT_WARM_START = "hand"


def _default(name: str) -> Any:
    return next(f.default for f in dataclasses.fields(PipelineConfig) if f.name == name)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``tunebert tune``: the sweep's options (``--time-budget`` is the whole job's) and the
    selection's."""
    add_sweep_arguments(p, time_budget_default=_default("budget_s"), time_budget_help=(
        "the whole job's time: sweep, final selection and test (default: 2h); e.g. 45m, 1h30m"))
    add_objective_arguments(p)
    p.set_defaults(trials=None, warm_start=None)  # `tune` fills its budget: see BUDGET_TRIALS
    for action in p._actions:
        if action.dest == "trials":
            action.help = ("number of trials (default: as many as the sweep's share of the time "
                           "budget allows)")
        if action.dest == "warm_start":
            action.help = (f"comma-separated presets or config files to try first (default for "
                           f"fine-tuning: {DEFAULT_WARM_START}, the careful hand-written config, "
                           f"so the search starts from it; '' for none; see `tunebert presets`)")
    g = p.add_argument_group("final selection")
    g.add_argument("--top-k", type=int, default=_default("top_k"),
                   help="re-train this many of the sweep's best configs (default: %(default)s; "
                        "fewer if the budget left after the sweep cannot fit them)")
    g.add_argument("--seeds", type=int, default=_default("seeds"),
                   help="seeds per config (default: %(default)s; fewer if they do not fit)")
    g.add_argument("--no-ensemble", dest="ensemble", action="store_false",
                   help="hand over the best single model; by default the ensemble of the chosen "
                        "config's seed models is handed over when it scores better on validation")
    g.add_argument("--select-workers", type=int, default=None,
                   help="selection trainings at a time (default: as many as the sweep runs trials "
                        "at once on this machine's CPUs, i.e. cores // --cpus-per-trial; 1 with GPUs)")
    g.add_argument("--output-dir", default=None,
                   help="new or empty folder for the handed-over model (default: "
                        "<storage>/models/<name>)")
    p.add_argument("--smoke-test", action="store_true",
                   help="2 trials x 1 epoch, then top 2 x 2 seeds x 1 epoch on 64 examples")


def default_select_workers(cpus_per_trial: float, gpus_per_trial: float, cores: Optional[int] = None) -> int:
    """Selection trainings at a time: the sweep's own parallelism on a CPU-only machine (two
    one-thread trainings get through ~1.8x the work of one two-thread training on 2 cores,
    `tunebert bench` part d); one at a time when trials use GPUs."""
    import os

    if gpus_per_trial > 0:
        return 1
    return max(1, int((cores or os.cpu_count() or 1) // max(cpus_per_trial, 1e-9)))


def run(args) -> int:
    if args.trials is None and args.scheduler in POPULATION_SCHEDULERS:  # a population, not a queue
        args.trials = DEFAULT_POPULATION
        say(f"--scheduler {args.scheduler} without --trials: a population of {args.trials} trials "
            f"(the budget decides how far they train; pass --trials N for another size)")
    if args.trials is None:  # the budget decides how many trials the sweep gets
        args.trials = BUDGET_TRIALS
    if args.warm_start is None:  # the hand config first, so the search starts from it
        args.warm_start = DEFAULT_WARM_START if args.trainable in ("finetune", "any") else ""
    if args.select_workers is None:
        args.select_workers = default_select_workers(args.cpus_per_trial, args.gpus_per_trial)
    settings = {**sweep_settings(args), **objective_settings(args)}
    if settings["constraints"] and args.ensemble:
        # an ensemble of N models is N times slower and larger than the trials whose latency
        # and size the constraints were checked on
        say("note: with --constraint the chosen single model is handed over, not an ensemble")
        args.ensemble = False
    pipeline_settings: dict[str, Any] = dict(
        budget_s=args.time_budget, top_k=args.top_k, seeds=args.seeds, ensemble=args.ensemble,
        select_workers=args.select_workers,
        output_dir=str(Path(args.output_dir).expanduser().resolve()) if args.output_dir else None)
    if args.smoke_test:  # as `tunebert sweep --smoke-test`: PBT needs a second epoch to perturb before
        population = settings["scheduler"] in POPULATION_SCHEDULERS
        settings.update(num_trials=2, epochs=2 if population else 1, grace_period=1,
                        perturbation_interval=1)
        pipeline_settings.update(top_k=min(args.top_k, 2), seeds=min(args.seeds, 2),
                                 select_epochs=1, max_train_examples=64)
    config = PipelineConfig(**pipeline_settings)  # refuses bad counts before the sweep's checks
    pipeline = run_pipeline(SweepConfig(**settings), config)
    print_summary(pipeline)
    return 0


def resume(args) -> int:
    """``tunebert resume NAME`` for a pipeline started by ``tunebert tune``."""
    changes = {k: v for k, v in (("tracking_uri", args.tracking_uri), ("address", args.address)) if v}
    pipeline = resume_pipeline(args.name, args.storage, **changes)
    print_summary(pipeline)
    return 0
