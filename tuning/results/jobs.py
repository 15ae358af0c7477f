"""Independent training jobs, N at a time, each in its own process on its share of the cores.

On a CPU, two one-thread trainings get through more work than one two-thread training (small
matrices do not keep two threads busy), so ``bench`` (the study's table) and ``select`` (the
candidates' seeds) run their jobs ``workers`` at a time. Processes are spawned, not forked: a
forked child inherits the parent's torch thread pool and locks in whatever state they were.

Callers that log to a fresh SQLite MLflow store must create the store and the experiment before
the workers start: workers racing to set up a new store collide in its schema migrations.

Benchmark jobs (``run_bench_jobs``: the table, the ablation, the hand baseline) are resumable:
each is one MLflow run tagged with its key (``job_key``); the benchmark run again skips the jobs
whose run FINISHED and continues the others from their last epoch's checkpoint (``JobFolder``)
in the same run.

Results do not depend on ``workers`` except through floating-point summation order: torch sums in
a different order on 1 thread than on 2, which moves losses in their last digits (about 1e-6
relative on the tiny test model) and, rarely, an accuracy.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import json
import logging
import os
import statistics
import subprocess
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import tuning.console as console
import tuning.tracking as tracking
from trainables.errors import UserError
from trainables.runtime import set_threads
from tuning.results.job_folder import JobFolder  # noqa: F401  (the benchmark jobs' checkpoints; named here too)
from tuning.results.train import train_config

log = logging.getLogger(__name__)


def threads_per_worker(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // workers)


def _timed(fn: Callable, kwargs: dict) -> tuple[float, Any]:
    start = time.monotonic()
    result = fn(**kwargs)
    return time.monotonic() - start, result


def _pinned(fn: Callable, threads: int, kwargs: dict,
            verbosity: Optional[int] = None) -> tuple[float, Any]:
    """``fn(**kwargs)`` and its wall seconds, in a worker process limited to ``threads``
    intra-op threads, logging as the parent does (``verbosity``: its ``console.configured()``)."""

    if verbosity is not None:
        console.setup(verbosity)
    set_threads(threads)
    return _timed(fn, kwargs)


def run_jobs(fn: Callable, jobs: Sequence[dict], workers: int = 1,
             on_done: Optional[Callable[[int, float], None]] = None) -> Iterator[Any]:
    """``fn(**job)`` for every job (a dict of keyword arguments), yielded in job order.

    ``workers <= 1``: one after the other in this process, each started only when the caller asks
    for its result (so the caller can act between jobs). ``workers > 1``: all submitted at once to
    ``workers`` spawned processes, each limited to ``cpu_count // workers`` threads; ``fn`` and
    the jobs must pickle (a module-level function and plain data). A job's exception is raised
    when its result is reached; the jobs not started yet are cancelled. ``on_done(index,
    seconds)`` is called as each job finishes without error, in the order they finish.
    """
    if workers <= 1:
        for index, job in enumerate(jobs):
            seconds, result = _timed(fn, job)
            if on_done is not None:
                on_done(index, seconds)
            yield result
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    def finished(index: int, future) -> None:
        # runs in the pool's result thread, one future at a time
        if on_done is not None and not future.cancelled() and future.exception() is None:
            on_done(index, future.result()[0])

    threads = threads_per_worker(workers)
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        verbosity = console.configured()
        futures = [pool.submit(_pinned, fn, threads, dict(job), verbosity) for job in jobs]
        for index, future in enumerate(futures):
            future.add_done_callback(functools.partial(finished, index))
        for future in futures:
            yield future.result()[1]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def job_key(config: dict, data: Any, *, max_train_examples: Optional[int] = None) -> str:
    """A benchmark job's identity: its config, its data (source and columns) and its sample
    cap, hashed. The code version is recorded beside it (``job_tags``), not part of it, so a
    benchmark resumed after an unrelated commit keeps the jobs it finished."""
    data_dict = data.to_dict() if hasattr(data, "to_dict") else dict(data)
    blob = json.dumps({"config": config, "data": data_dict, "max_train_examples": max_train_examples},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@lru_cache(maxsize=1)
def code_version() -> str:
    """The code a benchmark job ran: the git commit of the checkout this code runs from
    (``+dirty`` with local changes); for an installed copy of a ``git archive`` (how a long
    benchmark runs from code that editing the tree cannot touch), the commit git wrote into
    ``tuning/COMMIT``; else the package version."""
    root = Path(__file__).resolve().parents[2]
    if (root / ".git").exists():  # only this checkout's own git: not a repository around a venv
        try:
            sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True,
                                 text=True, timeout=10, check=True).stdout.strip()
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                   capture_output=True, text=True, timeout=10).stdout.strip()
            return sha + ("+dirty" if dirty else "")
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        archived = (Path(__file__).resolve().parents[1] / "COMMIT").read_text().strip()
    except OSError:
        archived = ""
    if archived and not archived.startswith("$Format"):  # substituted by git archive
        return archived[:12]
    from importlib.metadata import PackageNotFoundError, version

    try:
        return "tunebert " + version("tunebert")
    except PackageNotFoundError:
        return "unknown"


def job_tags(key: str) -> dict[str, str]:
    return {"tunebert.bench_job": key, "tunebert.code_version": code_version()}


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


CONTRASTIVE_EPOCH = 1.3
"""A contrastive epoch's time in fine-tuning epochs, until a contrastive job of this run has
finished: measured on MASSIVE, 1 thread, MiniLM-L6, SupCon's two dropout views at batch 64
took 100 s per epoch against 78 s for a fine-tuning epoch at batch 16 (two views, twice the
encoding, but larger batches use the core better)."""


def job_cost(config: dict) -> tuple[str, float]:
    """A training job's kind (``finetune`` or ``contrastive``) and compute in fine-tuning epochs,
    for the time-left estimate only.

    A fine-tuning epoch is 1, a contrastive epoch ``CONTRASTIVE_EPOCH``. A classifier stage on
    the frozen encoder embeds the data once and trains the head on the cached features: 0.5 in
    all, whatever its epochs.
    """
    epochs = float(config.get("epochs", 1))
    if config.get("trainable") != "contrastive":
        return "finetune", epochs
    contrastive = CONTRASTIVE_EPOCH * float(config.get("contrastive_epochs", 0))
    mode = config.get("mode", "two-stage")
    if mode == "two-stage":
        return "contrastive", contrastive + 0.5
    if mode == "joint":  # every epoch computes both losses on the two views
        return "contrastive", CONTRASTIVE_EPOCH * epochs
    return "contrastive", contrastive + epochs  # two-stage-finetune


# how the time-left line names each kind's epoch, and its cost in units
_EPOCH_OF = {"finetune": ("fine-tuning", 1.0), "contrastive": ("contrastive", CONTRASTIVE_EPOCH)}


def _pace(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 600 else _duration(seconds)


class JobProgress:
    """Jobs done / running / left and the time left, as one line after every finished job.

    Each job to train has a kind and a cost (``job_cost``: its compute in fine-tuning epochs).
    The time left is, for every job not finished, its cost times the seconds per unit that the
    finished jobs of its kind took in this invocation (of all kinds while none of its kind has
    finished; jobs found finished in MLflow took none here), divided by the workers. Without
    ``costs`` every job counts 1. A job continued from a checkpoint ran only its remaining epochs
    and so makes the estimate a little short until fresh jobs finish.
    """

    def __init__(self, total: int, workers: int, done: int = 0,
                 costs: Optional[Sequence[tuple[str, float]]] = None):
        self.total, self.workers, self.done = total, max(1, workers), done
        self.costs = list(costs) if costs is not None else [("job", 1.0)] * (total - done)
        if len(self.costs) != total - done:
            raise ValueError(f"{len(self.costs)} costs for {total - done} jobs to train")
        self.seconds: dict[int, float] = {}

    def finished(self, seconds: float, index: Optional[int] = None) -> str:
        """Job ``index`` (of those to train; the next one in order if None) took ``seconds``."""
        if index is None:
            index = next(i for i in range(len(self.costs)) if i not in self.seconds)
        self.done += 1
        self.seconds[index] = seconds
        return self.text()

    def _rate(self, kind: Optional[str] = None) -> Optional[float]:
        """Seconds per unit of cost over the finished jobs (of ``kind``), None without any."""
        mine = [i for i in self.seconds if kind is None or self.costs[i][0] == kind]
        units = sum(self.costs[i][1] for i in mine)
        return sum(self.seconds[i] for i in mine) / units if mine and units > 0 else None

    def text(self) -> str:
        unfinished = self.total - self.done
        running = min(self.workers, unfinished)
        line = f"{self.done} of {self.total} jobs done, {running} running, {unfinished - running} left"
        if not unfinished:
            return line
        if not self.seconds:
            return f"{line}; time left: unknown until a job finishes"
        overall = self._rate()
        left = sum(cost * (self._rate(kind) or overall)
                   for i, (kind, cost) in enumerate(self.costs) if i not in self.seconds)
        if len(set(self.costs)) == 1:
            basis = f"{_duration(statistics.mean(self.seconds.values()))} per job"
        else:
            paces = []
            for kind in dict.fromkeys(kind for kind, _ in self.costs):
                rate = self._rate(kind)
                if rate is not None:
                    name, units = _EPOCH_OF.get(kind, (kind, 1.0))
                    paces.append(f"{_pace(rate * units)} per {name} epoch")
            basis = ", ".join(paces) + ", longer jobs weighted"
        return f"{line}; about {_duration(left / self.workers)} left ({basis}, {self.workers} at a time)"


def pick_jobs(names: Sequence[str], patterns: str, option: str = "--jobs") -> list[str]:
    """The names matching any of the comma-separated glob ``patterns`` (``baseline-seed0``,
    ``llrd*``, ``*-seed1``), in their order; a pattern matching none is an error."""
    wanted = [p.strip() for p in patterns.split(",") if p.strip()]
    unmatched = [p for p in wanted if not fnmatch.filter(names, p)]
    if not wanted or unmatched:
        raise UserError(f"{option} {patterns!r}: {unmatched or 'no pattern'} matches no job; the "
                        f"jobs are {', '.join(names)} (glob patterns such as 'llrd-*' allowed)")
    return [name for name in names if any(fnmatch.fnmatchcase(name, p) for p in wanted)]


@dataclass(frozen=True)
class BenchJob:
    """One benchmark job: ``train_job(**kwargs)`` trains it; ``name`` is what ``--jobs`` matches."""

    name: str
    key: str
    kwargs: dict


def bench_job(name: str, config: dict, data: Any, *, uri: str, experiment: str,
              storage: Optional[str | Path], max_train_examples: Optional[int] = None,
              **train_options: Any) -> BenchJob:
    key = job_key(config, data, max_train_examples=max_train_examples)
    return BenchJob(name, key, dict(config=config, data=data, key=key, uri=uri, experiment=experiment,
                                    run_name=name, storage=str(storage) if storage else None,
                                    max_train_examples=max_train_examples, **train_options))


def train_job(config: dict, data: Any, *, key: str, uri: str, experiment: str, run_name: str,
              storage: Optional[str], **train_options: Any) -> None:
    """Train one benchmark job as an MLflow run tagged with its key and the code version
    (``job_tags``). With ``storage``, a checkpoint is kept every epoch in
    ``<storage>/jobs/<key>/`` and an unfinished run of the same job is continued from it."""

    log.info(f"bench job {run_name} ({experiment}, key {key})")
    job_dir = Path(storage) / "jobs" / key if storage else None
    unfinished = tracking.unfinished_job(uri, experiment, key) if job_dir else None
    train_config(config, data, tracking_uri=uri, experiment=experiment, run_name=run_name,
                 tags=job_tags(key), job_dir=str(job_dir) if job_dir else None,
                 continue_run=unfinished, **train_options)


def run_bench_jobs(jobs: Sequence[BenchJob], *, uri: str, experiment: str, workers: int,
                   say: Callable[[str], None], selected: Optional[Iterable[str]] = None
                   ) -> dict[str, Optional[dict]]:
    """Train the jobs that have no FINISHED run in ``experiment`` yet (of those, only the names
    in ``selected`` when given), ``workers`` at a time, saying the progress after each. Returns
    every job's finished run as MLflow holds it (``tracking.finished_job``) by name, or None for
    a job that has none (not selected)."""

    # create the store and the experiment once, here: workers racing to set up a fresh SQLite
    # store collide in its schema migrations
    tracking.ensure_experiment(tracking.client_for(uri), experiment, None)
    chosen = set(selected) if selected is not None else {job.name for job in jobs}
    finished = {job.name: tracking.finished_job(uri, experiment, job.key) for job in jobs}
    for job in jobs:
        if finished[job.name] is not None:
            say(f"{job.name}: finished before (MLflow run {finished[job.name]['run_id']}), not trained again")
    todo = [job for job in jobs if job.name in chosen and finished[job.name] is None]
    before = sum(record is not None for record in finished.values())
    left_out = len(jobs) - before - len(todo)
    progress = JobProgress(len(chosen), workers, done=len(chosen) - len(todo),
                           costs=[job_cost(job.kwargs["config"]) for job in todo])
    say(f"{len(jobs)} jobs: {before} finished before, {len(todo)} to train or continue"
        + (f", {left_out} not picked by --jobs" if left_out else "") + f"; {workers} at a time")

    def done(index: int, seconds: float) -> None:
        say(f"{todo[index].name} done in {_duration(seconds)}; {progress.finished(seconds, index)}")

    for _ in run_jobs(train_job, [job.kwargs for job in todo], workers, on_done=done):
        pass
    return {job.name: finished[job.name] or tracking.finished_job(uri, experiment, job.key) for job in jobs}
