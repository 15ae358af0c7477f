"""Which model a final selection hands over, chosen on validation only, among its candidates:
the chosen config's best seed model, the ensemble of its seed models, a cross-config ensemble
(the best seed model of each top config) and a student distilled from the better ensemble.

Every candidate is scored on validation by the same evaluation, on its saved folder, and timed
(batch-1 CPU latency, ``trainables.deploy.latency_ms``) and weighed (bytes on disk). The rule
(``pick``):

- ``prefer="accuracy"`` (default): the most accurate. The best seed model's own score is the
  maximum of several noisy draws, so it is no fair bar: a single model of the config counts with
  the seed models' mean, and another candidate wins over it unless it scores below that mean
  (``ensemble_wins``); among those that win, the best score (ties: the faster).
- ``prefer="latency"``: the fastest candidate whose fair score lies within ``within`` points
  (hundredths of the metric: 0.3 = 0.3 accuracy points) of the most accurate one's.
"""

from __future__ import annotations

import logging
import math
import statistics
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Optional, Sequence

from trainables.data import DataConfig
from trainables.errors import ConfigError
from tuning.results.candidates import Candidate, best_seed, better
from tuning.results.evaluation import evaluate_folders
from tuning.results.selection_result import fmt

log = logging.getLogger(__name__)

# how a refusal names a model folder inside --output-dir (``tuning.results.outputs``)
IN_OUTPUT_DIR = "in --output-dir, the folder"
PREFER = ("accuracy", "latency")
KINDS = ("single", "ensemble", "cross", "student")


def ensemble_wins(ensemble_score: float, member_scores: Sequence[float], mode: str) -> bool:
    """Whether a candidate is handed over rather than the best seed model: unless it scores below
    the seed models' mean (``mode`` max) or above it (min). A non-finite score never wins."""
    if not math.isfinite(ensemble_score):
        return False
    finite = [s for s in member_scores if math.isfinite(s)]
    if not finite:
        return True
    return not better(statistics.fmean(finite), ensemble_score, mode)


def check_rule(prefer: str, within: float) -> None:
    if prefer not in PREFER:
        raise ConfigError(f"`prefer` must be one of {', '.join(PREFER)}, but got {prefer!r}")
    if not (math.isfinite(within) and within >= 0):
        raise ConfigError(f"`within` (points below the most accurate candidate that the fastest "
                          f"may score) must be a number >= 0, but got {within!r}")


def check_distillation(temperature: float, alpha: float) -> None:
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ConfigError(f"`distill_temperature` must be a number > 0, but got {temperature!r}")
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and 0.0 <= alpha <= 1.0):
        raise ConfigError(f"`distill_alpha` (the weight of the teacher's term) must lie in [0, 1], "
                          f"but got {alpha!r}")


@dataclass(frozen=True)
class HandoverRule:
    """Which candidates a selection builds besides the best seed model (and, with ``ensemble``,
    the seed ensemble), and how it picks one."""

    cross: bool = False          # the cross-config ensemble (needs top_k >= 2)
    distill: bool = False        # the student distilled from the better ensemble
    temperature: float = 2.0     # distillation temperature
    alpha: float = 0.5           # weight of the teacher's term
    prefer: str = "accuracy"     # or "latency"
    within: float = 0.3          # with "latency": points below the most accurate
    timed: bool = False          # time and weigh even a choice of two

    def __post_init__(self) -> None:
        check_rule(self.prefer, self.within)
        check_distillation(self.temperature, self.alpha)


@dataclass(frozen=True)
class Option:
    """One hand-over candidate, scored on validation."""

    kind: str              # one of KINDS
    label: str             # what the summary calls it
    folder: str
    val: float             # its own validation score
    fair: float            # the score the rule compares (a single model: the seed models' mean)
    members: int
    latency_ms: float = math.nan   # batch-1 CPU latency, median
    size_mb: float = math.nan      # bytes on disk / 1e6
    handed_over: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def pick(options: Sequence[Option], seed_scores: Sequence[float], *, mode: str,
         prefer: str = "accuracy", within: float = 0.3) -> Option:
    """The option to hand over (``options[0]`` is the best seed model), by the module's rule."""
    check_rule(prefer, within)
    single, others = options[0], list(options[1:])
    winners = [o for o in others if ensemble_wins(o.val, seed_scores, mode)]
    accurate = single
    for option in winners:
        if accurate is single or better(option.val, accurate.val, mode) or (
                round(option.val, 12) == round(accurate.val, 12)
                and option.latency_ms < accurate.latency_ms):
            accurate = option
    if prefer == "accuracy":
        return accurate
    sign = 1.0 if mode == "max" else -1.0
    bar = accurate.fair - sign * within / 100.0
    close = [o for o in options if math.isfinite(o.fair) and sign * (o.fair - bar) >= -1e-12]
    timed = [o for o in close if math.isfinite(o.latency_ms)]
    return min(timed, key=lambda o: o.latency_ms) if timed else accurate


def folder_size_mb(folder: str | Path) -> float:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()) / 1e6


def folder_latency_ms(folder: str | Path) -> float:
    """Batch-1 CPU latency (median, ms) of a model folder, on ``trainables.deploy``'s probe texts
    padded to the folder's ``max_length``; NaN when it cannot be timed."""
    import torch  # local: keeps torch off --help

    from trainables.deploy import latency_ms, probe_batch
    from trainables.export import load_model

    try:
        loaded = load_model(folder)
        length = int(loaded.config.get("max_length", 128))
        ids, mask = probe_batch(loaded.tokenizer, length, batch_size=8)
        with torch.inference_mode():
            return latency_ms(loaded.model.cpu(), ids, mask, runs=20, warmup=3)["latency_ms_p50"]
    except Exception as exc:  # a timing is a courtesy: never the reason a selection fails
        log.info(f"select: could not time {folder} ({type(exc).__name__}: {exc})")
        return math.nan


def with_costs(option: Option) -> Option:
    return replace(option, latency_ms=folder_latency_ms(option.folder),
                   size_mb=folder_size_mb(option.folder))


@dataclass(frozen=True)
class Handover:
    kind: str                       # the handed-over option's kind (KINDS)
    folder: str                     # the handed-over model's folder (in the work folder)
    seed: int                       # the best seed model's seed
    single_val: float
    ensemble_val: Optional[float]   # the seed ensemble's, when one was built
    members: int
    options: tuple[Option, ...] = ()
    prefer: str = "accuracy"
    within: float = 0.3

    def rule_text(self) -> str:
        if self.prefer == "latency":
            return f"fastest within {self.within:g} points of the most accurate"
        return "most accurate"

    def describe(self, metric: str) -> str:
        if len(self.options) <= 1:
            return f"the best seed model (seed {self.seed}) {metric} {fmt(self.single_val)}"
        chosen = next(o for o in self.options if o.handed_over)
        rest = "; ".join(f"{o.label} {fmt(o.val)}" for o in self.options if not o.handed_over)
        return f"the {chosen.kind} ({chosen.label} {metric} {fmt(chosen.val)}; {rest})"


def seed_options(chosen: Candidate, checkpoints: list[str], data: DataConfig, *, metric: str,
                 mode: str, ensemble: bool, ensemble_dir: Path,
                 rescore: bool = False) -> tuple[list[Option], list[float]]:
    """The best seed model and, with ``ensemble``, the seed ensemble (saved in ``ensemble_dir``);
    (the options, the seed models' scores the rule compares with). Without ``ensemble`` the seed
    models' scores are those their training runs reported (unless ``rescore``: other candidates
    will be compared with them); with it every seed model and the ensemble are scored again, on
    the saved models by the same evaluation."""
    if not ensemble and rescore:
        scores = [m[metric] for m in evaluate_folders(checkpoints, data, chosen.config, "validation")]
        seed, single_val = best_seed(chosen.seeds, scores, mode)
        finite = [s for s in scores if math.isfinite(s)]
        return [Option("single", f"best seed model (seed {seed})",
                       checkpoints[chosen.seeds.index(seed)], single_val,
                       statistics.fmean(finite) if finite else math.nan, 1)], scores
    if not ensemble:
        seed, score = best_seed(chosen.seeds, chosen.scores, mode)
        single = Option("single", f"best seed model (seed {seed})",
                        checkpoints[chosen.seeds.index(seed)], score, chosen.mean, 1)
        return [single], list(chosen.scores)
    from trainables.export import save_ensemble_model  # local: keeps torch off --help

    save_ensemble_model(ensemble_dir, checkpoints)
    scores = [m[metric] for m in evaluate_folders(checkpoints + [str(ensemble_dir)], data,
                                                  chosen.config, "validation")]
    seed, single_val = best_seed(chosen.seeds, scores[:-1], mode)
    finite = [s for s in scores[:-1] if math.isfinite(s)]
    fair = statistics.fmean(finite) if finite else math.nan
    return [Option("single", f"best seed model (seed {seed})", checkpoints[chosen.seeds.index(seed)],
                   single_val, fair, 1),
            Option("ensemble", f"ensemble of the {len(checkpoints)} seed models", str(ensemble_dir),
                   scores[-1], scores[-1], len(checkpoints))], scores[:-1]


def cross_option(chosen: Candidate, rank_models: dict[int, str], data: DataConfig, *, metric: str,
                 folder: Path) -> Optional[Option]:
    """The ensemble of the best seed model of each top config (``rank_models``: rank -> folder), or
    None when fewer than two configs have a model or their models cannot form one ensemble
    (another tokenizer or max_length: said in the log)."""
    from trainables.export import save_ensemble_model  # local: keeps torch off --help

    members = [rank_models[r] for r in sorted(rank_models)]
    if len(members) < 2:
        return None
    try:
        save_ensemble_model(folder, members)
    except (ConfigError, ValueError, OSError) as exc:
        log.info(f"select: no cross-config ensemble: {exc}")
        return None
    score = evaluate_folders([str(folder)], data, chosen.config, "validation")[0][metric]
    return Option("cross", f"ensemble of the top {len(members)} configs' best models", str(folder),
                  score, score, len(members))


def decide(options: list[Option], seed_scores: Sequence[float], *, mode: str, prefer: str,
           within: float, seed: int, timed: bool = True) -> Handover:
    """Time and weigh the options (when there is a choice), pick one, and say which."""
    if timed and len(options) > 1:
        options = [with_costs(o) for o in options]
    chosen = pick(options, seed_scores, mode=mode, prefer=prefer, within=within)
    options = [replace(o, handed_over=o is chosen) for o in options]
    ensemble = next((o.val for o in options if o.kind == "ensemble"), None)
    return Handover(chosen.kind, chosen.folder, seed, options[0].val, ensemble, chosen.members,
                    tuple(options), prefer, within)
