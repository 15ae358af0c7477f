"""Which model a final selection hands over, chosen on validation only: the chosen config's best
seed model, or the ensemble of its seed models unless that scores below their mean."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from trainables.data import DataConfig
from tuning.results.candidates import Candidate, best_seed, better
from tuning.results.evaluation import evaluate_folders
from tuning.results.selection_result import fmt

# how a refusal names a model folder inside --output-dir (``tuning.results.outputs``)
IN_OUTPUT_DIR = "in --output-dir, the folder"


def ensemble_wins(ensemble_score: float, member_scores: Sequence[float], mode: str) -> bool:
    """Whether an ensemble is handed over rather than its best member: unless it scores below
    the members' mean (``mode`` max) or above it (min). A non-finite ensemble score never wins."""
    if not math.isfinite(ensemble_score):
        return False
    finite = [s for s in member_scores if math.isfinite(s)]
    if not finite:
        return True
    return not better(statistics.fmean(finite), ensemble_score, mode)


@dataclass(frozen=True)
class Handover:
    kind: str                       # "single" or "ensemble"
    folder: str                     # the handed-over model's folder (in the work folder)
    seed: int                       # the best seed model's seed
    single_val: float
    ensemble_val: Optional[float]
    members: int

    def describe(self, metric: str) -> str:
        single = f"best seed model (seed {self.seed}) {metric} {fmt(self.single_val)}"
        if self.ensemble_val is None:
            return f"the {single}"
        ensemble = f"ensemble of {self.members} seed models {fmt(self.ensemble_val)}"
        return f"the {self.kind} ({single}; {ensemble})"


def hand_over(chosen: Candidate, checkpoints: list[str], data: DataConfig, *, metric: str,
               mode: str, ensemble: bool, ensemble_dir: Path) -> Handover:
    """The model to hand over, chosen on validation only: the best seed model, or the ensemble
    of all seed models unless it scores below their mean (the best seed's score is the maximum of
    several noisy draws, so it is no fair bar). Without ``ensemble`` the seed models' scores are
    those their training runs reported; with it, every seed model and the ensemble are scored
    again, on the saved models and by the same evaluation, so they compare like for like."""
    if not ensemble:
        seed, score = best_seed(chosen.seeds, chosen.scores, mode)
        return Handover("single", checkpoints[chosen.seeds.index(seed)], seed, score, None, 1)
    from trainables.export import save_ensemble_model  # local: keeps torch off --help

    save_ensemble_model(ensemble_dir, checkpoints)
    scores = [m[metric] for m in evaluate_folders(checkpoints + [str(ensemble_dir)], data,
                                                  chosen.config, "validation")]
    seed, single_val = best_seed(chosen.seeds, scores[:-1], mode)
    wins = ensemble_wins(scores[-1], scores[:-1], mode)
    folder = str(ensemble_dir) if wins else checkpoints[chosen.seeds.index(seed)]
    return Handover("ensemble" if wins else "single", folder, seed, single_val, scores[-1],
                     len(checkpoints))
