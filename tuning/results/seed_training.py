"""Training a final selection's candidates: every top config once per fresh seed, validation only,
``workers`` at a time (``tuning.results.jobs``), keeping the models of the best candidate so far.

Loaded only once a selection runs (``tuning.results.selection_run``): it brings torch and MLflow."""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path
from typing import Optional

import tuning.results.jobs as training_jobs
from trainables.data import DataConfig
from trainables.errors import ConfigError, NonFiniteLossError
from tuning.results.candidates import (FIRST_SEED_OFFSET, Candidate, best_seed, candidate_metrics,
                                       choose, mean_std, selection_seeds)
from tuning.results.train import train_config

log = logging.getLogger(__name__)


def _say(message: str) -> None:
    log.info(f"select: {message}")


def train_seed(config: dict, data: DataConfig, *, uri: str, sweep: str, parent_run_id: str,
               rank: int, trial_id: str, seed: int, offset: int, checkpoint: Path, metric: str,
               max_train_examples: Optional[int], announce: str = "") -> tuple[float, str]:
    """Train one seed of one candidate, validation only; (its metric, its run id). Runs in a
    worker process when selection trains several at a time (``tuning.results.jobs.run_jobs``)."""
    if announce:
        _say(announce)

    try:
        outcome = train_config(
            {**config, "seed": seed}, data, tracking_uri=uri, experiment=sweep,
            run_name=f"select-rank{rank}-seed{seed}", output_dir=str(checkpoint),
            tags={"tunebert.sweep": sweep, "tunebert.from_sweep": sweep,
                  "tunebert.selection.rank": str(rank), "tunebert.selection.trial_id": trial_id,
                  "tunebert.selection.seed": str(seed), "tunebert.selection.seed_offset": str(offset)},
            max_train_examples=max_train_examples, evaluate_test=False,
            parent_run_id=parent_run_id, log_model=False)
    except NonFiniteLossError as exc:  # its run ended FAILED; the candidate cannot be chosen
        _say(f"rank {rank} seed {seed} diverged ({exc}); this config cannot be chosen")
        return math.nan, ""
    if metric not in outcome.val:
        raise ConfigError(f"`metric` {metric!r} was not reported when training trial {trial_id}'s "
                          f"config; validation metrics there: {sorted(outcome.val)}")
    return float(outcome.val[metric]), outcome.run_id


def train_candidates(leaders, configs: list[dict], data: DataConfig, run, *, uri: str, sweep: str,
                     seeds: int, metric: str, mode: str, max_train_examples: Optional[int],
                     workdir: Path, workers: int = 1,
                     keep_best: bool = False) -> tuple[list[Candidate], Optional[Candidate]]:
    """Train each leader's config (``configs``, rank-major) with ``seeds`` fresh seeds into
    ``workdir/rank<r>/seed-<s>``; (the candidates, best first by sweep rank, and the best of them by
    ``choose``, whose models alone are kept, and with ``keep_best`` each other candidate's best
    seed model, for a cross-config ensemble: ``best_seed_models``)."""
    jobs = []  # (candidate, seed) trainings, rank-major
    for rank, (trial, config) in enumerate(zip(leaders, configs), start=1):
        for offset, seed in enumerate(selection_seeds(config, seeds), start=FIRST_SEED_OFFSET):
            jobs.append(dict(
                config=config, data=data, uri=uri, sweep=sweep, parent_run_id=run.run_id,
                rank=rank, trial_id=trial.trial_id, seed=seed, offset=offset,
                checkpoint=workdir / f"rank{rank}" / f"seed-{seed}", metric=metric,
                max_train_examples=max_train_examples,
                announce=f"rank {rank}/{len(leaders)} trial {trial.trial_id} (sweep {metric} "
                         f"{trial.score(metric):.4f}): seed {offset}/{seeds} = {seed}"))
    # the store and the sweep's experiment exist already (the selection run is in it), so
    # workers never race to create them
    if workers > 1:
        _say(f"training {len(jobs)} models, {workers} at a time")
    results = training_jobs.run_jobs(train_seed, jobs, workers)
    candidates: list[Candidate] = []
    leader: Optional[Candidate] = None
    try:
        for rank, (trial, config) in enumerate(zip(leaders, configs), start=1):
            scores, run_ids = zip(*(next(results) for _ in range(seeds)))
            mean, std = mean_std(scores)
            candidate = Candidate(rank, trial.trial_id, trial.run_id, float(trial.score(metric)),
                                  config, selection_seeds(config, seeds), tuple(scores),
                                  tuple(run_ids), mean, std)
            candidates.append(candidate)
            run.log_metrics(candidate_metrics(candidate, metric))
            _say(f"rank {rank} trial {trial.trial_id}: {metric} "
                 f"{', '.join(f'{s:.4f}' for s in scores)} -> mean {mean:.4f} ± {std:.4f}")
            # keep only the checkpoints of the best candidate so far (disk: two candidates at
            # most, plus those the workers are writing ahead)
            previous = leader
            if math.isfinite(candidate.mean):
                leader = choose([c for c in (leader, candidate) if c is not None], mode)
            for loser in (previous, candidate):
                if loser is not None and loser is not leader:
                    _drop_models(workdir / f"rank{loser.rank}", loser, mode, keep_best=keep_best)
    finally:
        results.close()  # on an error: cancel the trainings not started yet
    return candidates, leader


def _drop_models(folder: Path, candidate: Candidate, mode: str, *, keep_best: bool) -> None:
    """Remove a candidate's models, or with ``keep_best`` all but its best seed's."""
    if not keep_best or candidate.diverged:
        shutil.rmtree(folder, ignore_errors=True)
        return
    seed, _ = best_seed(candidate.seeds, candidate.scores, mode)
    for other in candidate.seeds:
        if other != seed:
            shutil.rmtree(folder / f"seed-{other}", ignore_errors=True)


def best_seed_models(candidates: list[Candidate], workdir: Path, mode: str) -> dict[int, str]:
    """rank -> the folder of each candidate's best seed model still on disk (finite scores only)."""
    kept = {}
    for c in candidates:
        if c.diverged:
            continue
        seed, _ = best_seed(c.seeds, c.scores, mode)
        folder = workdir / f"rank{c.rank}" / f"seed-{seed}"
        if folder.is_dir():
            kept[c.rank] = str(folder)
    return kept
