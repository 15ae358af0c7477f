"""Building the hand-over candidates of a final selection (``tuning.results.handover`` holds
them and the rule): saving and scoring the seed and cross-config ensembles on validation, timing
and weighing each candidate's folder, and picking one.

Loaded only once a selection runs (``tuning.results.selection_run``): it brings torch."""

from __future__ import annotations

import logging
import math
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Optional, Sequence

import torch

from trainables.data import DataConfig
from trainables.deploy import latency_ms, probe_batch
from trainables.errors import ConfigError
from trainables.export import load_model, save_ensemble_model
from tuning.results.candidates import Candidate, best_seed
from tuning.results.evaluation import evaluate_folders
from tuning.results.handover import Handover, Option, pick

log = logging.getLogger(__name__)


def folder_size_mb(folder: str | Path) -> float:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()) / 1e6


def folder_latency_ms(folder: str | Path) -> float:
    """Batch-1 CPU latency (median, ms) of a model folder, on ``trainables.deploy``'s probe texts
    padded to the folder's ``max_length``; NaN when it cannot be timed."""
    try:
        loaded = load_model(folder)
        length = int(loaded.config.get("max_length", 128))
        ids, mask = probe_batch(loaded.tokenizer, length, batch_size=8)
        with torch.inference_mode():
            return latency_ms(loaded.model.cpu(), ids, mask)["latency_ms_p50"]
    except Exception as exc:  # a timing is a courtesy: never the reason a selection fails
        log.info(f"select: could not time {folder} ({type(exc).__name__}: {exc})")
        return math.nan


def with_costs(option: Option) -> Option:
    return replace(option, latency_ms=folder_latency_ms(option.folder),
                   size_mb=folder_size_mb(option.folder))


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
    members = [rank_models[r] for r in sorted(rank_models)]
    if len(members) < 2:
        log.info(f"select: no cross-config ensemble: it needs two top configs with a model, and "
                 f"{len(members)} has one")
        return None
    try:  # the top configs may not form one ensemble (another tokenizer, family or length)
        save_ensemble_model(folder, members)
        score = evaluate_folders([str(folder)], data, chosen.config, "validation")[0][metric]
    except (ConfigError, ValueError, OSError) as exc:
        log.info(f"select: no cross-config ensemble: {exc}")
        return None
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
