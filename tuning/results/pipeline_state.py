"""What ``tunebert tune`` keeps on disk: its settings (``PipelineConfig``), where it stands
(``PipelineState`` in PIPELINE_FILE), and the bookkeeping of the processes that work on it (a
``Session`` per phase, its heartbeat, the time a killed one used)."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import tuning.results.outputs as outputs
from trainables.errors import ConfigError
from tuning.config import DEFAULT_ROOT, TUNE_BUDGET_S, TUNE_SEEDS, TUNE_TOP_K, SweepConfig, check_sweep_name
from tuning.results.budget import clock
from tuning.results.handover import HandoverRule

log = logging.getLogger(__name__)

PIPELINE_FILE = "tunebert_pipeline.json"
DEADLINE_FILE = "tunebert_sweep_deadline"   # read by runner.DeadlineStopper
ALIVE_FILE = "tunebert_pipeline.alive"      # touched while a process works on the pipeline
HEARTBEAT_S = 10.0
PHASES = ("sweep", "select", "done")


@dataclass(frozen=True)
class PipelineConfig:
    """What ``tunebert tune`` adds to a sweep's settings. Phases: ``budget_s`` all of them;
    ``max_select_share``/``fallback_select_share`` the plan made before the sweep; the rest the
    selection phase."""

    budget_s: float = TUNE_BUDGET_S         # the whole job: plan, sweep, selection, test
    top_k: int = TUNE_TOP_K                 # configs the selection re-trains (upper bound)
    seeds: int = TUNE_SEEDS                 # seeds per config (upper bound)
    ensemble: bool = True                   # also consider the ensemble of the chosen seed models
    select_workers: int = 1                 # selection trainings at a time
    max_select_share: float = 0.5           # before the sweep: selection gets at most this share
    fallback_select_share: float = 0.35     # before the sweep, when speed cannot be measured here
    output_dir: Optional[str] = None        # default: <storage>/models/<sweep name>
    select_epochs: Optional[int] = None     # override the configs' epochs in the selection
    max_train_examples: Optional[int] = None  # selection trains on a sample (smoke tests)
    cross_config: bool = True               # also the ensemble of the top configs' best models
    distill: bool = True                    # also a student distilled from the better ensemble
    distill_temperature: float = 2.0
    distill_alpha: float = 0.5
    prefer: str = "accuracy"                # the hand-over rule: or "latency" (within `within`)
    within: float = 0.3
    keep_candidates: bool = False           # every candidate's folder in <output>/candidates/
    student_layers: int = 0                 # a smaller student (the encoder's bottom k layers)

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
        for name in ("cross_config", "distill", "keep_candidates"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"`{name}` must be true or false, but got {getattr(self, name)!r}")
        self.rule()  # refuses a bad rule or distillation setting now, before the sweep

        for name in ("max_select_share", "fallback_select_share"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
                raise ConfigError(f"`{name}` must lie strictly between 0 and 1, but got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def rule(self, *, ensemble: Optional[bool] = None, top_k: Optional[int] = None) -> HandoverRule:
        """The selection's ``HandoverRule`` (for ``top_k`` configs: a cross-config ensemble needs
        two; a student needs an ensemble, of seeds (``ensemble``) or of configs)."""
        cross = self.cross_config and (top_k is None or top_k >= 2)
        ensemble = self.ensemble if ensemble is None else ensemble
        return HandoverRule(cross=cross, distill=self.distill and (ensemble or cross),
                            temperature=self.distill_temperature, alpha=self.distill_alpha,
                            prefer=self.prefer, within=self.within, keep=self.keep_candidates,
                            student_layers=self.student_layers)

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


class Heartbeat:
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


class Session:
    """One process working on one phase: its time is added to the phase however it ends."""

    def __init__(self, pipeline: Pipeline, phase: str):
        self.pipeline, self.phase = pipeline, phase

    def __enter__(self):
        self.start = time.time()
        self.pipeline.state.session = {"phase": self.phase, "started_at": self.start}
        self.pipeline.save()
        self.heartbeat = Heartbeat(self.pipeline.folder / ALIVE_FILE).__enter__()
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
            log.info(f"tune: interrupted in the {self.phase} phase; continue with: tunebert resume "
                f"{self.pipeline.sweep.name}" + storage_flag(self.pipeline.sweep.storage))


def count_killed_session(pipeline: Pipeline) -> None:
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
                                f"about {clock(lost)} (counted up to its last heartbeat)")
    pipeline.state.session = None
    pipeline.save()


def storage_flag(storage: str) -> str:
    return "" if storage == DEFAULT_ROOT else f" --storage {storage}"
