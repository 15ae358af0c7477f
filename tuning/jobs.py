"""Independent training jobs, N at a time, each in its own process on its share of the cores.

On a CPU, two one-thread trainings get through more work than one two-thread training (small
matrices do not keep two threads busy), so ``bench`` (the study's table) and ``select`` (the
candidates' seeds) run their jobs ``workers`` at a time. Processes are spawned, not forked: a
forked child inherits the parent's torch thread pool and locks in whatever state they were.

Callers that log to a fresh SQLite MLflow store must create the store and the experiment before
the workers start: workers racing to set up a new store collide in its schema migrations.

Results do not depend on ``workers`` except through floating-point summation order: torch sums in
a different order on 1 thread than on 2, which moves losses in their last digits (about 1e-6
relative on the tiny test model) and, rarely, an accuracy.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence


def threads_per_worker(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // workers)


def _pinned(fn: Callable, threads: int, kwargs: dict) -> Any:
    """``fn(**kwargs)`` in a worker process limited to ``threads`` intra-op threads."""
    from trainables.runtime import set_threads

    set_threads(threads)
    return fn(**kwargs)


def run_jobs(fn: Callable, jobs: Sequence[dict], workers: int = 1) -> Iterator[Any]:
    """``fn(**job)`` for every job (a dict of keyword arguments), yielded in job order.

    ``workers <= 1``: one after the other in this process, each started only when the caller asks
    for its result (so the caller can act between jobs). ``workers > 1``: all submitted at once to
    ``workers`` spawned processes, each limited to ``cpu_count // workers`` threads; ``fn`` and
    the jobs must pickle (a module-level function and plain data). A job's exception is raised
    when its result is reached; the jobs not started yet are cancelled.
    """
    if workers <= 1:
        for job in jobs:
            yield fn(**job)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    threads = threads_per_worker(workers)
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        futures = [pool.submit(_pinned, fn, threads, dict(job)) for job in jobs]
        for future in futures:
            yield future.result()
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
    """The git commit of the checkout this code runs from (``+dirty`` with local changes), or the
    package version when it runs from an installed copy."""
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import PackageNotFoundError, version

        try:
            return "tunebert " + version("tunebert")
        except PackageNotFoundError:
            return "unknown"


def job_tags(key: str) -> dict[str, str]:
    return {"tunebert.bench_job": key, "tunebert.code_version": code_version()}
