"""What one trial holds: its CPUs and GPUs, in its own process or spread over Ray Train workers
(``WorkerGroup``), and the rules a sweep's --cpus-per-trial, --gpus-per-trial and
--workers-per-trial must meet (``checked_workers``). Light to import: no torch, no ray.

A trial of one worker trains in its Ray Tune process, which holds --cpus-per-trial CPUs and
--gpus-per-trial GPUs (a fraction shares a GPU with other trials). A trial of several workers
trains data-parallel on Ray Train workers (``trainables.train_workers``): each worker holds
--cpus-per-trial CPUs (Ray Train's reading: per worker) and, on GPUs, one whole GPU, so
--gpus-per-trial is the trial's GPUs and equals the number of workers.
"""

from __future__ import annotations

import dataclasses
import math

from trainables.errors import ConfigError

# at most 10 trials share a CPU (Ray itself would pack 10,000: it counts resources in 1e-4 steps)
MIN_CPUS_PER_TRIAL = 0.1
# the families whose fit trains data-parallel in a process group (trainables.data_parallel)
DATA_PARALLEL_FAMILIES = ("finetune",)
# what a spread trial's own process reserves: a token amount of Ray's ``memory`` resource (bytes),
# which every node has; its workers reserve the CPUs and GPUs
RELAY_MEMORY = 2**20


@dataclasses.dataclass(frozen=True)
class WorkerGroup:
    """The workers one trial trains on: ``count`` of them, holding ``cpus`` CPUs and ``gpus``
    GPUs each (for several workers 0 or 1: two DDP workers cannot share a GPU)."""

    count: int = 1
    cpus: float = 1.0
    gpus: float = 0.0

    @classmethod
    def for_trial(cls, workers: int, cpus_per_trial: float, gpus_per_trial: float) -> "WorkerGroup":
        return cls(workers, cpus_per_trial, gpus_per_trial / workers if gpus_per_trial > 0 else 0.0)

    @property
    def spread(self) -> bool:
        """Whether the trial trains on Ray Train workers rather than in its own process."""
        return self.count > 1

    def worker_bundle(self) -> dict[str, float]:
        """What each worker asks Ray for (``CPU``, ``GPU``: Ray's resource names)."""
        return {"CPU": self.cpus, **({"GPU": self.gpus} if self.gpus > 0 else {})}

    def total(self) -> dict[str, float]:
        """All the trial's workers hold together."""
        return {key: value * self.count for key, value in self.worker_bundle().items()}

    def trial_resources(self) -> dict[str, float]:
        """What the Tune trial itself reserves (``tune.with_resources``): everything for a trial
        in one process; for a spread one no CPU or GPU, since its trial only relays results while
        its workers hold those (Ray Train V2 places them in a placement group of their own,
        outside the trial's), only ``RELAY_MEMORY`` (Ray refuses a trial that asks for nothing).
        The sweep caps trials at once to what the cluster can place instead
        (``tuning.sweep.cluster.trials_at_once``)."""
        if self.spread:
            return {"cpu": 0, "gpu": 0, "memory": RELAY_MEMORY}
        return {"cpu": self.cpus, "gpu": self.gpus}


def check_family(name: str) -> None:
    """Only ``DATA_PARALLEL_FAMILIES`` can train a trial over several workers."""
    if name not in DATA_PARALLEL_FAMILIES:
        raise ConfigError(
            f"a trial over several workers (--workers-per-trial, or --gpus-per-trial above 1) "
            f"trains data-parallel, which only {' and '.join(DATA_PARALLEL_FAMILIES)} trials can "
            f"do, but the sweep's trainable is {name!r} (data-parallel contrastive and multitask "
            f"training is not built): use --trainable finetune, or one worker and at most one GPU "
            f"per trial")


def checked_workers(cpus: float, gpus: float, workers: int, trainable: str, *,
                    population_based: bool = False) -> int:
    """The number of workers per trial for --cpus-per-trial ``cpus``, --gpus-per-trial ``gpus``
    and --workers-per-trial ``workers`` (left at 1, a whole ``gpus`` above 1 sets it), or a
    ConfigError. NaN passes every comparison (``nan < 0`` is false) and infinity no machine has,
    so both are refused by name."""
    for name, value in (("cpus_per_trial", cpus), ("gpus_per_trial", gpus)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"`{name}` (--{name.replace('_', '-')}) must be a finite number, "
                              f"but got {value!r}")
    if cpus < MIN_CPUS_PER_TRIAL:
        raise ConfigError(
            f"`cpus_per_trial` (--cpus-per-trial) must be at least {MIN_CPUS_PER_TRIAL:g}, but got "
            f"{cpus!r}: each trial trains on at least one thread and holds a model in memory, so "
            f"more than {round(1 / MIN_CPUS_PER_TRIAL)} trials per CPU only thrash. Pass e.g. "
            f"--cpus-per-trial 1 (or 0.5 to run two trials per CPU).")
    if gpus < 0 or (gpus > 1 and not float(gpus).is_integer()):
        raise ConfigError(f"`gpus_per_trial` (--gpus-per-trial) must be a fraction in [0, 1] or "
                          f"a whole number, but got {gpus!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"`workers_per_trial` (--workers-per-trial) must be an integer >= 1, "
                          f"but got {workers!r}")
    if gpus > 1 and workers == 1:  # said once: the GPUs are the workers
        workers = int(gpus)
    if workers > 1 and gpus > 0 and gpus != workers:
        raise ConfigError(
            f"a trial over several workers gives each worker one whole GPU (two data-parallel "
            f"workers cannot share one), so `gpus_per_trial` (--gpus-per-trial) must be 0 (the "
            f"workers train on CPUs) or equal `workers_per_trial` (--workers-per-trial), but got "
            f"(gpus_per_trial={gpus:g}, workers_per_trial={workers}); e.g. --gpus-per-trial "
            f"{workers} alone spreads each trial over {workers} GPUs")
    if workers > 1:
        check_family(trainable)
    if workers > 1 and population_based:
        raise ConfigError(
            f"population-based training (--scheduler pbt/pb2) cannot spread trials over several "
            f"workers ({workers} asked for): Ray Train places a trial's workers outside Ray Tune's "
            f"resource accounting, so the sweep caps its trials at once to what fits, and a "
            f"population that must all run and wait for each other is not built for that. Use "
            f"--scheduler asha, or one worker per trial.")
    return workers
