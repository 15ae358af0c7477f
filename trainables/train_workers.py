"""One trial spread over several workers with Ray Train (issue 24): the Tune trial launches a
``TorchTrainer`` and relays its first worker's epochs to Ray Tune.

Ray 2.60 runs Ray Train V2 (its default; ``RAY_TRAIN_V2_ENABLED=0`` turns it off and is refused
here). Its documented way to tune a distributed run is to start the trainer from inside a Tune
trial; V2's own ``TuneReportCallback`` relays metrics only (it puts the checkpoint's path among
them and registers no Tune checkpoint, see ``ray/tune/integration/ray_train.py``), so the trial
relays instead, through two ``ray.util.queue.Queue`` actors:

- every worker runs the family's ``fit`` (``trainables.finetune.fit`` trains data-parallel in a
  process group of several workers, ``trainables.data_parallel``) and reports the same metrics;
- the first worker (rank 0) writes each epoch's checkpoint with ``fit``'s writer into the trial's
  folder (``WORK_FOLDER``, on --storage, which every node sees), sends (metrics, folder) and
  waits until the trial has reported it, so no worker trains past an epoch Ray Tune stops at;
- the trial reports each with its usual ``report(metrics, write)``, ``write`` copying the folder:
  Ray Tune's checkpoints, resume, ASHA, best-epoch scoring, MLflow and pruning see what a
  one-worker trial gives them.

The trainer runs in a task the trial owns (``_drive``): a trial that ends early (ASHA, an error,
a stopped sweep) cancels it, and Ray ends the trainer's controller and workers with it.
"""

from __future__ import annotations

import itertools
import logging
import shutil
from pathlib import Path
from typing import Callable, Optional

from trainables import registry
from trainables.data import TokenizedData
from trainables.errors import ConfigError, NonFiniteLossError
from trainables.runtime import set_threads
from trainables.trial_resources import WorkerGroup, check_family

log = logging.getLogger(__name__)

# under the trial's folder: Ray Train's run state and rank 0's epoch checkpoints until reported
WORK_FOLDER = "train_workers"
POLL_S = 1.0  # how often the trial looks whether the trainer ended while no epoch arrives


def check_ray_train_v2() -> None:
    """Trials over several workers run Ray Train V2 (Ray 2.60's default); ``WorkerGroupError``
    is a public name of ``ray.train`` only then."""
    import ray.train

    if not hasattr(ray.train, "WorkerGroupError"):
        raise ConfigError("a trial over several workers (--workers-per-trial, --gpus-per-trial > 1) "
                          "needs Ray Train V2, Ray's default, but RAY_TRAIN_V2_ENABLED turns it off "
                          "here: unset RAY_TRAIN_V2_ENABLED (or set it to 1) where Ray runs")


def run(name: str, cfg, data: TokenizedData, group: WorkerGroup, *, trial_dir: str,
        report: Callable[[dict, Callable[[str], None]], None], resume_dir: Optional[str]) -> None:
    """Train trial config ``cfg`` of family ``name`` on ``group``'s workers, handing each epoch
    to ``report`` (the Tune trial's) with a writer that copies rank 0's checkpoint of it;
    ``resume_dir``: the checkpoint every worker resumes from."""
    import ray
    from ray.util.queue import Queue

    check_family(name)
    check_ray_train_v2()
    work = Path(trial_dir) / WORK_FOLDER
    shutil.rmtree(work, ignore_errors=True)  # an earlier attempt's leftovers
    epochs, acks = Queue(actor_options={"num_cpus": 0}), Queue(actor_options={"num_cpus": 0})
    loop_config = {"name": name, "cfg": cfg.to_dict(), "data": ray.put(data), "cpus": group.cpus,
                   "folder": str(work), "resume_dir": resume_dir, "epochs": epochs, "acks": acks}
    driver = ray.remote(num_cpus=0, max_retries=0)(_drive).remote(loop_config, group, str(work))
    try:
        _relay(epochs, acks, driver, report)
    finally:
        ray.cancel(driver, force=True)  # still running when the trial ends early: it and its trainer end
        for queue in (epochs, acks):
            queue.shutdown(force=True)
        shutil.rmtree(work, ignore_errors=True)


def _relay(epochs, acks, driver, report) -> None:
    """Report rank 0's epochs in order until the trainer ends; raise its error, if any."""
    import ray
    from ray.util.queue import Empty

    while True:
        try:
            metrics, folder = epochs.get(timeout=POLL_S)
        except Empty:
            if ray.wait([driver], timeout=0)[0] and epochs.empty():
                _raise_failure(driver)
                return
            continue
        report(metrics, lambda directory: shutil.copytree(folder, directory, dirs_exist_ok=True))
        shutil.rmtree(folder, ignore_errors=True)  # Ray Tune holds its own copy now
        acks.put(True)


def _raise_failure(driver) -> None:
    """The trainer's error: a worker's ``NonFiniteLossError`` as itself (the trial marks itself
    not worth retrying on it), anything else as Ray raises it."""
    import ray

    try:
        ray.get(driver)
    except Exception as exc:
        failures = getattr(getattr(exc, "cause", exc), "worker_failures", None) or {}
        for failure in failures.values():
            if isinstance(failure, NonFiniteLossError):
                raise NonFiniteLossError(str(failure).strip().splitlines()[-1]) from exc
        raise


def _drive(loop_config: dict, group: WorkerGroup, storage: str) -> None:
    """A Ray task: run the trial's ``TorchTrainer`` (gloo on CPU, NCCL on GPUs) to its end.
    Ray Tune retries the trial from its checkpoint, so Ray Train retries nothing itself."""
    import ray.train
    from ray.train.torch import TorchTrainer

    TorchTrainer(
        _train_worker, train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(num_workers=group.count, use_gpu=group.gpus > 0,
                                               resources_per_worker=group.worker_bundle()),
        run_config=ray.train.RunConfig(name="ray_train", storage_path=storage,
                                       failure_config=ray.train.FailureConfig(max_failures=0)),
    ).fit()


def _train_worker(config: dict) -> None:
    """One Ray Train worker: the family's ``fit`` in the process group Ray Train set up. Rank 0
    writes and sends each epoch; the others train and evaluate alike and report nothing."""
    import ray
    import ray.train
    import ray.train.torch

    set_threads(config["cpus"])
    name = config["name"]
    cfg = registry.config_class(name).from_dict(config["cfg"])
    data = ray.get(config["data"])
    fit = registry.fit_function(name)
    rank = ray.train.get_context().get_world_rank()
    report = _first_worker_report(config) if rank == 0 else (lambda metrics, write: None)
    fit(cfg, data, device=ray.train.torch.get_device(), report=report,
        resume_dir=config["resume_dir"])


def _first_worker_report(config: dict) -> Callable[[dict, Callable[[str], None]], None]:
    """Rank 0's ``report``: write the epoch's checkpoint into the trial's folder, send it, and
    wait until the trial has reported it (Ray Tune may stop the trial there)."""
    epochs, acks, numbers = config["epochs"], config["acks"], itertools.count(1)

    def report(metrics: dict, write: Callable[[str], None]) -> None:
        folder = Path(config["folder"]) / f"epoch_{next(numbers):05d}"
        folder.mkdir(parents=True)
        write(str(folder))
        epochs.put((metrics, str(folder)))
        acks.get()

    return report
