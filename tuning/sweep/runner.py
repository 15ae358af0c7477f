"""Builds and runs the Ray Tune sweep: validate → tokenize once → Tuner(OptunaSearch, ASHA) → MLflow.

Everything a user can get wrong is checked in ``prepare`` before Ray starts. The steps live by
job: ``tuning.sweep.prepare`` (checks and tokenizing, before Ray), ``tuning.sweep.cluster``
(starting or joining Ray, the cluster checks) and ``tuning.sweep.tuner`` (the Tuner, new or
restored); this module runs them in order under the sweep's lock and records the end in MLflow.
Their public names are re-exported here.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

from trainables import registry
from trainables.errors import ConfigError, UserError
import tuning.tracking.best as best_trials
import tuning.console as console
import tuning.tracking as tracking
from tuning.config import DEFAULT_ROOT, POPULATION_SCHEDULERS, SweepConfig, load_saved_sweep, resume_store
from tuning.interrupt import (Interrupted, reclaim_sigterm, sigterm_blocked_in_children,
                              stop_tune_gracefully)
# the steps, re-exported: callers import them from tuning.sweep.runner
from tuning.sweep.cluster import (NODE_WAIT_S, _init_ray, check_joined_cluster,  # noqa: F401
                                  check_shared_storage, check_trial_resources)
from tuning.sweep.lock import sweep_lock
from tuning.sweep.prepare import (SPACES, Prepared, build_space, check_local_resources,  # noqa: F401
                                  check_tracking_target, max_epochs, prepare, say)
from tuning.sweep.storage_trust import check_safe_to_unpickle
from tuning.sweep.tuner import DeadlineStopper, _tuner, trial_dirname  # noqa: F401

log = logging.getLogger(__name__)

TRIAL_METRICS = ("train_loss", "val_loss", "val_accuracy", "val_macro_f1", "lr", "samples_per_s")


@dataclass
class SweepOutcome:
    name: str
    tracking_uri: str
    sweep_dir: Path
    best: Optional[Any]  # tuning.tracking.best.TrialRun
    counts: dict[str, int]
    wall_s: float


# how long the end of a sweep waits for an unreachable MLflow store before giving up
TRACKING_GRACE_S = float(os.environ.get("TUNEBERT_TRACKING_GRACE_S", "60"))


def resume_command(cfg: SweepConfig) -> str:
    """The command that continues this sweep (or its `tunebert tune` pipeline)."""
    import shlex

    default = Path(DEFAULT_ROOT).expanduser().resolve()
    return f"tunebert resume {cfg.name}" + ("" if cfg.root == default else f" --storage {shlex.quote(str(cfg.root))}")


def settings_to_run(cfg: SweepConfig, *, resume: bool) -> SweepConfig:
    """What a run records and uses: a new sweep's settings anchored (absolute paths, the MLflow
    store resolved) with a fresh ``uid``; a resumed sweep's with the store it started with
    (``config.resume_store``: the saved one, or refused when another is asked for)."""
    if not resume:
        return dataclasses.replace(cfg.anchored(), uid=cfg.uid or uuid.uuid4().hex)
    saved = load_saved_sweep(cfg.name, cfg.storage)
    given = cfg.tracking_uri if cfg.tracking_uri != saved.tracking_uri else None
    store = resume_store(cfg.name, saved.tracking_uri, given)
    cfg = dataclasses.replace(cfg, uid=cfg.uid or uuid.uuid4().hex)  # a sweep saved without one
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if given is None and saved.tracking_uri and env and tracking.redact(env) != saved.tracking_uri:
        say(f"note: MLFLOW_TRACKING_URI is {tracking.redact(env)}, but sweep {cfg.name!r} logs to "
            f"{saved.tracking_uri}; resuming there")
    return dataclasses.replace(cfg, tracking_uri=store).anchored()


def claim_name(prep: Prepared, *, resume: bool) -> None:
    """Refuse to run sweep ``prep.config`` in an MLflow experiment that holds another sweep of
    its name (``tracking.claim_experiment``)."""
    cfg = prep.config
    tracking.claim_experiment(prep.tracking_uri, cfg.name, cfg.uid, resume=resume)


def run_sweep(cfg: SweepConfig, *, resume: bool = False, stop=None) -> SweepOutcome:
    """Run (or resume) a sweep to the end and record it in MLflow. ``stop``: a Ray Tune stopper
    (e.g. ``DeadlineStopper``) for a new sweep; a resumed one keeps the stopper it was saved with.

    Everything a user can get wrong is refused before Ray starts; one driver at a time holds the
    sweep's lock. Ctrl-C or SIGTERM stops the sweep the way Ray Tune saves it, marks the parent
    run and open trial runs KILLED and raises ``interrupt.Interrupted`` with the resume command."""
    start = time.time()
    if resume and not (cfg.sweep_dir / "tuner.pkl").exists():
        raise ConfigError(f"sweep {cfg.name!r} has no Ray Tune state in {cfg.sweep_dir} to resume from")
    if resume:  # Tuner.restore unpickles the sweep folder's state: only if no one else wrote it
        check_safe_to_unpickle(cfg.root, cfg.sweep_dir, cfg.name)
    if not resume and (cfg.sweep_dir / "tuner.pkl").exists():
        raise ConfigError(f"a sweep named {cfg.name!r} already exists in {cfg.sweep_dir}; resume it "
                          f"with `tunebert resume {cfg.name}` or choose another --name")
    cfg = settings_to_run(cfg, resume=resume)
    prep = prepare(cfg)
    with sweep_lock(cfg.sweep_dir, cfg.name):
        return _run_locked(prep, resume=resume, stop=stop, start=start)


def _run_locked(prep: Prepared, *, resume: bool, stop, start: float) -> SweepOutcome:
    if not resume and (prep.config.sweep_dir / "tuner.pkl").exists():  # another driver was faster
        raise ConfigError(f"a sweep named {prep.config.name!r} already exists in "
                          f"{prep.config.sweep_dir}; choose another --name")
    prep.config = cfg = dataclasses.replace(
        prep.config, data_fingerprint=prep.config.data_fingerprint or prep.data_fingerprint)
    uri = prep.tracking_uri
    claim_name(prep, resume=resume)
    with sigterm_blocked_in_children():  # a SIGTERM to the process group stops the sweep, not Ray
        _init_ray(cfg)  # joins or starts Ray and checks shared storage before anything is recorded
        reclaim_sigterm()  # before a SIGTERM that came meanwhile is delivered
    check_trial_resources(cfg)
    prep.load_pending()  # data tokenized on the cluster (Ray Data), now that the driver has joined it
    tracking.bound_http_waits()
    artifact_root = (cfg.root / "mlartifacts" / cfg.name).as_uri() if tracking.is_local_store(uri) else None
    try:
        experiment_id, parent_id = tracking.start_sweep_run(uri, cfg.name, cfg.to_dict(), artifact_root,
                                                            uid=cfg.uid)
    except tracking.TrackingError:
        raise
    except Exception as exc:
        raise tracking.TrackingError(
            f"cannot reach the MLflow store {tracking.redact(uri)} to start the sweep "
            f"({str(exc).splitlines()[0][:200]}). Start the server or fix --tracking-uri; nothing "
            f"was run.") from None
    try:
        tracking.tag_sweep_uid(uri, experiment_id, cfg.uid)
    except Exception as exc:  # a store that just went down: the next resume tags it
        log.warning("could not tag the MLflow experiment with the sweep's uid: %s", exc)
    cfg.save()
    (cfg.sweep_dir / "search_space.yaml").write_text(yaml.safe_dump(prep.space.describe(), sort_keys=False))
    callback = tracking.MlflowTrialLogger(uri, experiment_id, parent_id, registry.resolve_config, cfg.name)
    searcher = cfg.searcher
    if cfg.scheduler in POPULATION_SCHEDULERS:
        searcher = "none (the population is random draws of the space)"
        say(f"{cfg.scheduler}: every {cfg.perturbation_interval} epoch(s) the worst "
            f"{cfg.quantile_fraction:.0%} of the population clone the best and mutate "
            f"{', '.join(cfg.mutate)}")
    say(f"sweep {cfg.name!r}: {cfg.num_trials} trials x {cfg.epochs} epochs of {cfg.model!r}, "
        f"trainable {cfg.trainable}, searcher {searcher}, scheduler {cfg.scheduler}; "
        f"MLflow {tracking.redact(uri)}")
    finished = False
    with stop_tune_gracefully() as stopping:
        try:
            console.quiet_ray_tune()
            results = _tuner(prep, callback, restore=resume, stop=stop).fit()
            finished = stopping.signum is None  # Ray Tune returns normally when interrupted
        except KeyboardInterrupt as exc:  # SIGTERM, Ctrl-C twice, or before Ray Tune's loop ran
            raise Interrupted(stopping.signum or getattr(exc, "signum", signal.SIGINT),
                              resume_command(cfg)) from None
        except Exception:
            if stopping.signum is None:
                raise  # else: Ray failing while it stops is part of the interruption
        finally:
            # after a restore Ray calls the callback saved with the experiment, not ours
            live = tracking.MlflowTrialLogger.live(cfg.name) or callback
            if not finished:
                _close_quietly(uri, experiment_id, parent_id, live)
    if stopping.signum is not None:
        raise Interrupted(stopping.signum, resume_command(cfg))
    lost = live.flush_until(TRACKING_GRACE_S) if live.pending_writes() else 0
    if lost:
        return _store_gone(cfg, uri, results, live, start, f"{lost} write(s) were not delivered")
    return _finish(cfg, uri, experiment_id, parent_id, results, live, start)


def _store_gone(cfg: SweepConfig, uri: str, results, live, start: float, what: str) -> SweepOutcome:
    """The sweep ended but its MLflow store stayed unreachable: say what is where, and that a
    resume (which reconciles MLflow with Ray's saved state) records the end once it is back."""
    live.stop()
    say(f"warning: the MLflow store {tracking.redact(uri)} did not come back within "
        f"{TRACKING_GRACE_S:.0f}s; {what}. Training results are safe in {cfg.sweep_dir} (Ray Tune "
        f"result files and checkpoints); once the store is back, `{resume_command(cfg)}` records "
        f"each trial's end and the sweep's.")
    return SweepOutcome(cfg.name, uri, cfg.sweep_dir, None, _counts_from_ray(results), time.time() - start)


def _counts_from_ray(results) -> dict[str, int]:
    counts = {"FINISHED": 0, "FAILED": 0, "KILLED": 0}
    for r in results:
        counts["FAILED" if r.error else "FINISHED"] += 1
    return counts


def _close_quietly(uri: str, experiment_id: str, parent_id: str, live) -> None:
    """The sweep process is going down (Ctrl-C, an error): mark what is open as KILLED."""
    try:
        live.flush_until(5.0)
        tracking.close_open_trial_runs(uri, experiment_id, "KILLED")
        tracking.finish_sweep_run(uri, parent_id, status="KILLED",
                                  summary={"end_reason": "sweep process stopped"}, best_checkpoint=None)
    except Exception as exc:  # the store may be the reason we are stopping
        log.warning("could not mark runs as KILLED in MLflow: %s", exc)
    finally:
        live.stop()


def _finish(cfg: SweepConfig, uri: str, experiment_id: str, parent_id: str, results, live,
            start: float) -> SweepOutcome:
    """Record the sweep's end (counts, best trial, artifacts) on its parent run; a store that
    fails meanwhile is retried for up to TRACKING_GRACE_S."""
    deadline = time.time() + TRACKING_GRACE_S
    while True:
        try:
            return _record_end(cfg, uri, experiment_id, parent_id, results, live, start)
        except UserError:
            raise
        except Exception as exc:  # the store went away as the sweep ended
            if time.time() >= deadline:
                return _store_gone(cfg, uri, results, live, start, "the end of the sweep is not "
                                   f"recorded ({str(exc).splitlines()[0][:200]})")
            log.warning("MLflow failed while recording the end of the sweep (%s); retrying",
                        str(exc).splitlines()[0][:200])
            time.sleep(2.0)


def _record_end(cfg: SweepConfig, uri: str, experiment_id: str, parent_id: str, results, live,
                start: float) -> SweepOutcome:
    tracking.close_open_trial_runs(uri, experiment_id, "KILLED")
    runs = tracking.trial_runs(uri, cfg.name)
    counts = {s: sum(r.info.status == s for r in runs) for s in ("FINISHED", "FAILED", "KILLED")}
    # with several objectives: the point of the front `tunebert best` hands back
    best_list = best_trials.top_k(cfg.name, 1, goal=best_trials.Goal.of(cfg), tracking_uri=uri,
                                  storage=cfg.storage)
    best = best_list[0] if best_list else None
    best_checkpoint = None
    extra = [str(cfg.sweep_dir / "search_space.yaml")]
    if best is not None:
        for result in results:
            if result.metrics.get("trial_id") == best.trial_id and result.checkpoint is not None:
                best_checkpoint = result.checkpoint.path
        best_file = cfg.sweep_dir / "best_config.yaml"
        best_file.write_text(yaml.safe_dump(best.config, sort_keys=False))
        extra.append(str(best_file))
    wall = time.time() - start
    summary = {f"best_{cfg.metric}": best.score(cfg.metric) if best else float("nan"),
               "trials_finished": counts["FINISHED"], "trials_failed": counts["FAILED"],
               "trials_killed": counts["KILLED"], "wall_time_s": wall,
               "best_trial_id": best.trial_id if best else "none",
               "mlflow_delayed_writes": live.delayed_writes}
    tracking.finish_sweep_run(uri, parent_id, status="FINISHED", summary=summary,
                              best_checkpoint=best_checkpoint, extra_files=extra)
    live.stop()
    return SweepOutcome(cfg.name, uri, cfg.sweep_dir, best, counts, wall)


def resume_sweep(name: str, storage: str, **changes: Any) -> SweepOutcome:
    cfg = load_saved_sweep(name, storage)
    if changes:
        cfg = SweepConfig.from_dict({**cfg.to_dict(), **changes})
    return run_sweep(cfg, resume=True)
