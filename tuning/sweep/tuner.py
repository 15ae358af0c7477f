"""The Ray Tune ``Tuner`` of a sweep, new or restored from its folder: the trainable with its
resources and the tokenized data, the searcher and scheduler (Optuna + ASHA or FIFO, or PBT's
population), callbacks, checkpoints kept; and ``DeadlineStopper``, a deadline that survives a resume.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Optional

from ray.tune.stopper import Stopper

from trainables import registry
from trainables.entry import recycled
import tuning.console as console
import tuning.sweep.pbt as pbt
import tuning.tracking as tracking
from tuning.config import POPULATION_SCHEDULERS
from tuning.sweep.asha import RUNGS_FILE, ResumableASHA, max_rounds
from tuning.sweep.cluster import trials_at_once
from tuning.sweep.prepare import Prepared, max_epochs, say
from tuning.sweep.progress import SweepProgress
from tuning.sweep.pruning import CheckpointPruner
from tuning.sweep.search import build_searcher


def trial_dirname(trial) -> str:
    """Short trial folders (Ray's default packs the whole config into the name)."""
    return f"{trial.trainable_name}_{trial.trial_id}"


class DeadlineStopper(Stopper):
    """A Ray Tune stopper that stops every trial once the wall-clock time written in ``path``
    (seconds since the epoch) has passed. Unlike ``time_budget_s``, which restarts in full when a
    sweep is restored, the deadline lives in a file that can be rewritten before a resume (the
    ``tune`` pipeline gives a resumed sweep phase only what is left of its share). Ray saves the
    stopper with the experiment, so a restored sweep reads the same file."""

    def __init__(self, path: str):
        self.path = str(path)
        self._deadline: Optional[float] = None
        self._read_at = 0.0

    def __call__(self, trial_id, result) -> bool:
        return False

    def stop_all(self) -> bool:
        now = time.time()
        if now - self._read_at >= 1.0:  # Ray asks every loop step; the file is read once a second
            self._read_at = now
            try:
                self._deadline = float(Path(self.path).read_text().strip())
            except (OSError, ValueError):
                self._deadline = None  # no deadline (yet): nothing to stop for
        return self._deadline is not None and now >= self._deadline

    def __getstate__(self):
        return {"path": self.path}

    def __setstate__(self, state):
        self.__init__(state["path"])


def _tuner(prep: Prepared, callback, *, restore: bool, stop=None):
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler

    cfg = prep.config
    group = cfg.worker_group  # a trial over several workers reserves them itself (Ray Train)
    trainable = tune.with_resources(
        recycled(tune.with_parameters(registry.ray_entry_point(), data=prep.data, workers=group)),
        group.trial_resources())
    if restore:
        if any(cfg.sweep_dir.glob("experiment_state-*.json")):
            # MLflow runs ahead of Ray's saved state: the logger Ray restores reconciles the two
            tracking.MlflowTrialLogger.expect_restore(cfg.name)
            return tune.Tuner.restore(str(cfg.sweep_dir), trainable=trainable, resume_unfinished=True,
                                      resume_errored=False, restart_errored=False)
        # stopped between writing tuner.pkl and Ray's first snapshot: nothing to restore, and the
        # runs its trials opened in MLflow belong to trials Ray never recorded
        orphans = callback.orphan_earlier_runs()
        say(f"note: sweep {cfg.name!r} stopped before Ray saved any state; starting its trials again"
            + (f" ({orphans} earlier trial run(s) ended and deleted as orphans)" if orphans else ""))
    keep, param_space = cfg.keep_checkpoints, None
    tune_metric = cfg.metric  # population schedulers exploit the current epoch's score
    if cfg.scheduler in POPULATION_SCHEDULERS:
        scheduler = pbt.build_scheduler(cfg, prep.space,
                                        on_clone=functools.partial(tracking.record_clone, cfg.name))
        searcher, param_space = pbt.population_search(prep.population)
        keep = pbt.checkpoints_to_keep(cfg)
    else:
        if cfg.scheduler == "asha":
            longest = max_rounds(prep.space, prep.presets, epochs=cfg.epochs, eval_every=cfg.eval_every,
                                 train_size=len(prep.data.splits["train"])) if cfg.eval_every else \
                max([max_epochs(prep.space, cfg.epochs)] + [
                    cfg.epochs + int({**overrides, **enqueued}.get("contrastive_epochs", 0))
                    for enqueued, overrides in prep.presets])
            scheduler = ResumableASHA(cfg.sweep_dir / RUNGS_FILE, time_attr="training_iteration",
                                      max_t=longest, grace_period=cfg.grace_period,
                                      reduction_factor=cfg.reduction_factor)
        else:
            scheduler = FIFOScheduler()
        # ASHA and the searcher see each trial's best epoch so far: the score it is ranked by.
        # With several objectives ASHA stops on the first (cfg.metric); Optuna samples for all.
        tune_metric = registry.ranked_metric(cfg.metric)
        objectives = cfg.objective_list
        searcher = build_searcher(prep.space, kind=cfg.searcher, seed=cfg.seed,
                                  metric=[registry.ranked_metric(o.metric) for o in objectives],
                                  mode=[o.mode for o in objectives], num_trials=cfg.num_trials,
                                  presets=prep.presets, constraints=cfg.constraint_list)
    return tune.Tuner(
        trainable, param_space=param_space,
        tune_config=tune.TuneConfig(
            search_alg=searcher, scheduler=scheduler, num_samples=cfg.num_trials,
            time_budget_s=cfg.time_budget_s, max_concurrent_trials=trials_at_once(cfg),
            metric=tune_metric, mode=cfg.mode, trial_dirname_creator=trial_dirname,
            # a finished trial's worker process runs the next trial (no new process, no
            # re-import: seconds per trial) until its memory has grown: on MASSIVE with
            # MiniLM-L6 two always-reused workers grew to 10.8 and 7.1 GB after ~8 trials each
            # and Ray's OOM killer ended a 2-hour `tunebert tune` after 18 minutes on a 24 GB
            # machine, so a grown worker is replaced (trainables.entry.recycled)
            reuse_actors=True),
        run_config=tune.RunConfig(
            name=cfg.name, storage_path=str(cfg.ray_storage), stop=stop,
            callbacks=[callback, CheckpointPruner(cfg.name, str(cfg.sweep_dir),
                                                  population_based=cfg.scheduler in POPULATION_SCHEDULERS),
                       SweepProgress(prep.space.searched(), tune_metric, cfg.mode, cfg.num_trials,
                                     cfg.time_budget_s)],
            failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=keep),
            verbose=console.ray_settings()["tune_verbose"]),
    )

