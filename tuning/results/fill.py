"""A selection that fills the time it reserved: once the configs are compared (top_k × seeds, the
choice made on equal seeds), the time left before ``until`` trains more seeds of the chosen config,
a wave of ``workers`` trainings at a time, while a wave and the rest of the selection (``reserve_s``:
evaluating the hand-over candidates, the student, the test split) still fit. More seeds make a
larger seed ensemble, a better teacher and a surer estimate of the config's score (up to twice the
seeds it was compared with, ``MAX_EXTRA_SEEDS`` more at most); the choice among configs is not
made again (it was made on equal terms).

A wave's length is measured on this selection's own trainings (the slowest job of each wave so
far), so a plan that erred long is corrected here (the last 2-hour MASSIVE run before this used
16 of its 32 reserved minutes).

Loaded only once a selection runs: it brings torch and MLflow."""

from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional

import tuning.results.jobs as training_jobs
from trainables.data import DataConfig
from tuning.results.candidates import Candidate, candidate_metrics, mean_std
from tuning.results.seed_training import train_seed

log = logging.getLogger(__name__)

MAX_EXTRA_SEEDS = 8   # at most this many more (and at most as many again as it had)


def _say(message: str) -> None:
    log.info(f"select: {message}")


def waves_that_fit(left_s: float, wave_s: float) -> int:
    """How many waves of ``wave_s`` seconds fit in ``left_s`` (0 when a wave's length is unknown)."""
    if not (math.isfinite(wave_s) and wave_s > 0) or left_s <= 0:
        return 0
    return int(left_s // wave_s)


def more_seeds(chosen: Candidate, data: DataConfig, run, *, until: float, reserve_s: float,
               wave_s: float, workers: int, uri: str, sweep: str, metric: str, workdir: Path,
               max_train_examples: Optional[int]) -> Candidate:
    """``chosen`` with as many more seeds as fit before ``until`` (seconds since the epoch) less
    ``reserve_s``; their models are kept beside the first ones (``workdir/rank<r>/seed-<s>``)."""
    seeds, scores, run_ids = list(chosen.seeds), list(chosen.scores), list(chosen.run_ids)
    trained, tried, most = 0, [], min(MAX_EXTRA_SEEDS, len(chosen.seeds))
    while trained < most:
        left = until - reserve_s - time.time()
        if waves_that_fit(left, wave_s) < 1:
            break
        batch = min(workers, most - trained)
        new = [max(seeds + tried) + 1 + j for j in range(batch)]
        tried += new
        _say(f"{left / 60:.0f} min of the selection's time left: {batch} more seed(s) of the chosen "
             f"config (rank {chosen.rank}): {', '.join(map(str, new))}")
        jobs = [dict(config=chosen.config, data=data, uri=uri, sweep=sweep,
                     parent_run_id=run.run_id, rank=chosen.rank, trial_id=chosen.trial_id,
                     seed=seed, offset=seed - int(chosen.config.get("seed", 0)),
                     checkpoint=workdir / f"rank{chosen.rank}" / f"seed-{seed}", metric=metric,
                     max_train_examples=max_train_examples) for seed in new]
        start = time.time()
        results = training_jobs.run_jobs(train_seed, jobs, workers)
        try:
            for seed in new:
                score, run_id = next(results)
                if not math.isfinite(score):  # diverged: its run ended FAILED; not a member
                    shutil.rmtree(workdir / f"rank{chosen.rank}" / f"seed-{seed}", ignore_errors=True)
                    continue
                seeds.append(seed)
                scores.append(score)
                run_ids.append(run_id)
        finally:
            results.close()
        wave_s = max(wave_s, time.time() - start)
        trained += batch
    if len(seeds) == len(chosen.seeds):
        return chosen
    mean, std = mean_std(scores)
    extended = replace(chosen, seeds=tuple(seeds), scores=tuple(scores), run_ids=tuple(run_ids),
                       mean=mean, std=std)
    run.log_metrics({**candidate_metrics(extended, metric), "extra_seeds": float(trained)})
    _say(f"rank {chosen.rank} over {len(seeds)} seeds: {metric} mean {mean:.4f} ± {std:.4f}")
    return extended

