"""Builds and runs the Ray Tune sweep: validate → tokenize once → Tuner(OptunaSearch, ASHA) → MLflow.

Everything a user can get wrong is checked in ``prepare`` before Ray starts.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml
from ray.tune.stopper import Stopper

from search_spaces.contrastive import contrastive_space, mixed_space
from search_spaces.finetune import SWEEP_LEVEL, finetune_space
from search_spaces.overrides import load_space
from search_spaces.space import SearchSpace
from trainables import registry
from trainables.data import TokenizedData, load_raw_splits, tokenize_splits
from trainables.errors import ConfigError
from trainables.models import load_tokenizer
from tuning import tracking
from tuning.config import POPULATION_SCHEDULERS, SweepConfig, load_saved_sweep, warm_start_config
from tuning.search import build_searcher, preview_configs, warm_start_values

log = logging.getLogger("tunebert")

TRIAL_METRICS = ("train_loss", "val_loss", "val_accuracy", "val_macro_f1", "lr", "samples_per_s")


def say(message: str) -> None:
    print(f"[tunebert] {message}", flush=True)


@dataclass
class Prepared:
    """A validated sweep, ready to hand to Ray."""

    config: SweepConfig
    space: SearchSpace
    presets: list[tuple[dict, dict]]
    data: TokenizedData  # without the test split: trials never see it
    tracking_uri: str
    population: Optional[list[dict]] = None  # PBT/PB2: the trials' initial configs, resolved


SPACES = {"finetune": finetune_space, "contrastive": contrastive_space, "any": mixed_space}


def build_space(cfg: SweepConfig) -> SearchSpace:
    """The default space for the sweep's trainable family (or both: ``any``), the user's YAML
    applied, sweep-level constants bound."""
    space = SPACES[cfg.trainable](model=cfg.model, max_length=cfg.max_length, epochs=cfg.epochs,
                                  seed=cfg.seed, precision=cfg.precision)
    if cfg.space_file:
        config_cls = registry.config_class("finetune" if cfg.trainable == "finetune" else "contrastive")
        space = load_space(cfg.space_file, space, config_cls=config_cls, fixed_by_sweep=SWEEP_LEVEL)
    return space


def max_epochs(space: SearchSpace, epochs: int) -> int:
    """The longest trial in reported epochs (ASHA's max_t): contrastive trials add their first stage."""
    if space.constants.get("trainable") == "finetune":
        return epochs
    param = space.get("contrastive_epochs")
    if param is None:
        return epochs + registry.config_class("contrastive")().contrastive_epochs
    dist = param.dist
    longest = getattr(dist, "high", None) or getattr(dist, "value", None) or max(getattr(dist, "choices", (0,)))
    return epochs + int(longest)


def check_tracking_target(cfg: SweepConfig, uri: str) -> None:
    """A remote cluster cannot use a store that lives on this machine's disk only."""
    address = cfg.address
    remote = address not in (None, "", "local") and not address.startswith(("127.", "localhost"))
    if remote and address != "auto" and tracking.is_local_store(uri):
        raise ConfigError(
            f"--address {address} joins a remote Ray cluster, but the MLflow store "
            f"{tracking.redact(uri)} is a local file: results written there stay on one machine and "
            f"checkpoint artifacts from other nodes cannot reach it. Start an MLflow server every node "
            f"can reach and pass --tracking-uri http://HOST:5000 (or set MLFLOW_TRACKING_URI).")


def prepare(cfg: SweepConfig) -> Prepared:
    """Validate the space, presets, model and data; tokenize once. No Ray yet."""
    space = build_space(cfg)
    presets, notes = [], []
    for name in cfg.warm_start:
        values = warm_start_config(name)
        presets.append(warm_start_values(space, values, name, SWEEP_LEVEL, notes))
        family = values.get("trainable", "finetune")
        if cfg.trainable not in ("any", family):
            raise ConfigError(f"warm-start preset {name!r} is a {family} config, but this sweep runs "
                              f"{cfg.trainable!r} trials; use --trainable {family} or --trainable any")
    for note in notes:
        say(f"note: {note}")
    population_based = cfg.scheduler in POPULATION_SCHEDULERS
    if population_based:
        from tuning import pbt

        pbt.check_available(cfg.scheduler)
        pbt.mutable_params(space, cfg.mutate, cfg.scheduler)
    # a dry run of the sampler: every combination it can produce must be a valid config. PBT has
    # no searcher: its population is the first --trials of these draws, all of them checked.
    sampled_configs = preview_configs(space, n=max(8 + len(presets), cfg.num_trials if population_based else 0),
                                      seed=cfg.seed, presets=presets)
    for sampled in sampled_configs:
        try:
            registry.resolve_config(sampled)
        except ConfigError as exc:
            source = cfg.space_file or "the default space"
            raise ConfigError(f"{source} can produce an invalid trial config: {exc}") from None
    uri = cfg.resolved_tracking_uri()
    check_tracking_target(cfg, uri)
    say(f"loading data from {cfg.data.source!r} and tokenizer of {cfg.model!r}")
    raw = load_raw_splits(cfg.data)
    tokenizer = load_tokenizer(cfg.model)  # also proves the model id or folder exists
    data = tokenize_splits(raw, tokenizer, model=cfg.model, max_length=cfg.max_length)
    sizes = {k: len(v) for k, v in data.splits.items()}
    say(f"data: {sizes} examples, {data.num_labels} labels; tokenized once for all trials")
    if any(data.truncated.values()):
        say(f"note: texts longer than max_length={cfg.max_length} tokens were truncated: {data.truncated}")
    return Prepared(cfg, space, presets, data.without_test(), uri,
                    population=[registry.resolve_config(c) for c in sampled_configs[:cfg.num_trials]]
                    if population_based else None)


def trial_dirname(trial) -> str:
    """Short trial folders (Ray's default packs the whole config into the name)."""
    return f"{trial.trainable_name}_{trial.trial_id}"


def _init_ray(cfg: SweepConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    if cfg.address:
        try:
            ray.init(address=cfg.address, log_to_driver=True)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ConfigError(f"could not join the Ray cluster at --address {cfg.address!r} "
                              f"({str(exc).splitlines()[0][:200]}). Check that `ray start --head` "
                              f"runs there and the address/port, or leave --address out to run "
                              f"locally.") from None
        check_shared_storage(cfg)
    else:
        # An embedded Ray serves this process only, so none of its servers (GCS, raylet, workers)
        # should listen beyond the loopback interface. Ray's own switch for that is single-node
        # mode; it is read from the environment at import time, hence both lines.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] not in ("0", "false", "False")
        ray.init(include_dashboard=False, dashboard_host="127.0.0.1", log_to_driver=True)


def check_shared_storage(cfg: SweepConfig) -> None:
    """On a cluster, every alive node must see the sweep's storage folder (checkpoints are
    written by the node that runs a trial and read by whichever node resumes it)."""
    import uuid

    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) <= 1:
        return
    cfg.ray_storage.mkdir(parents=True, exist_ok=True)
    probe = cfg.ray_storage / f".tunebert-probe-{uuid.uuid4().hex}"
    probe.write_text("visible")

    @ray.remote(num_cpus=0)
    def sees(path: str) -> bool:
        import os

        return os.path.exists(path)

    try:
        checks = {n["NodeID"]: sees.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
            n["NodeID"], soft=False)).remote(str(probe)) for n in nodes}
        blind = [node for node, ref in checks.items() if not ray.get(ref, timeout=60)]
    finally:
        probe.unlink(missing_ok=True)
    if blind:
        raise ConfigError(
            f"--storage {cfg.storage} ({cfg.ray_storage}) is not shared: {len(blind)} of {len(nodes)} "
            f"Ray nodes cannot see it (node ids {[b[:12] for b in blind]}). Trials checkpoint there and "
            f"resume on any node, so use a folder every node mounts at the same path (NFS, EFS, a "
            f"Kubernetes ReadWriteMany volume).")


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
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    cfg = prep.config
    trainable = tune.with_resources(
        tune.with_parameters(registry.ray_entry_point(), data=prep.data),
        {"cpu": cfg.cpus_per_trial, "gpu": cfg.gpus_per_trial})
    if restore:
        return tune.Tuner.restore(str(cfg.sweep_dir), trainable=trainable, resume_unfinished=True,
                                  resume_errored=False, restart_errored=False)
    keep, param_space = cfg.keep_checkpoints, None
    tune_metric = cfg.metric  # population schedulers exploit the current epoch's score
    if cfg.scheduler in POPULATION_SCHEDULERS:
        from tuning import pbt

        scheduler = pbt.build_scheduler(cfg, prep.space,
                                        on_clone=functools.partial(tracking.record_clone, cfg.name))
        searcher, param_space = pbt.population_search(prep.population)
        keep = pbt.checkpoints_to_keep(cfg)
    else:
        if cfg.scheduler == "asha":
            longest = max([max_epochs(prep.space, cfg.epochs)] + [
                cfg.epochs + int({**overrides, **enqueued}.get("contrastive_epochs", 0))
                for enqueued, overrides in prep.presets])
            scheduler = ASHAScheduler(time_attr="training_iteration", max_t=longest,
                                      grace_period=cfg.grace_period, reduction_factor=cfg.reduction_factor)
        else:
            scheduler = FIFOScheduler()
        # ASHA and the searcher see each trial's best epoch so far: the score it is ranked by
        tune_metric = registry.ranked_metric(cfg.metric)
        searcher = build_searcher(prep.space, kind=cfg.searcher, seed=cfg.seed, metric=tune_metric,
                                  mode=cfg.mode, num_trials=cfg.num_trials, presets=prep.presets)
    return tune.Tuner(
        trainable, param_space=param_space,
        tune_config=tune.TuneConfig(
            search_alg=searcher, scheduler=scheduler, num_samples=cfg.num_trials,
            time_budget_s=cfg.time_budget_s, max_concurrent_trials=cfg.max_concurrent,
            metric=tune_metric, mode=cfg.mode, trial_dirname_creator=trial_dirname,
            # a new trial reuses a finished trial's worker process: no fresh interpreter, no second
            # import of torch and transformers, no second fetch of the tokenized data (seconds
            # per trial, most of the sweep overhead `tunebert bench` measured on short trials)
            reuse_actors=True),
        run_config=tune.RunConfig(
            name=cfg.name, storage_path=str(cfg.ray_storage), callbacks=[callback], stop=stop,
            failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=keep),
            verbose=1),
    )


@dataclass
class SweepOutcome:
    name: str
    tracking_uri: str
    sweep_dir: Path
    best: Optional[Any]  # tuning.best.TrialRun
    counts: dict[str, int]
    wall_s: float


# how long the end of a sweep waits for an unreachable MLflow store before giving up
TRACKING_GRACE_S = float(os.environ.get("TUNEBERT_TRACKING_GRACE_S", "60"))


def run_sweep(cfg: SweepConfig, *, resume: bool = False, stop=None) -> SweepOutcome:
    """Run (or resume) a sweep to the end and record it in MLflow. ``stop``: a Ray Tune stopper
    (e.g. ``DeadlineStopper``) for a new sweep; a resumed one keeps the stopper it was saved with."""
    start = time.time()
    if resume and not (cfg.sweep_dir / "tuner.pkl").exists():
        raise ConfigError(f"sweep {cfg.name!r} has no Ray Tune state in {cfg.sweep_dir} to resume from")
    if not resume and (cfg.sweep_dir / "tuner.pkl").exists():
        raise ConfigError(f"a sweep named {cfg.name!r} already exists in {cfg.sweep_dir}; resume it "
                          f"with `tunebert resume {cfg.name}` or choose another --name")
    prep = prepare(cfg)
    uri = prep.tracking_uri
    _init_ray(cfg)  # joins or starts Ray and checks shared storage before anything is recorded
    tracking.bound_http_waits()
    artifact_root = (cfg.root / "mlartifacts" / cfg.name).as_uri() if tracking.is_local_store(uri) else None
    try:
        experiment_id, parent_id = tracking.start_sweep_run(uri, cfg.name, cfg.to_dict(), artifact_root)
    except Exception as exc:
        raise tracking.TrackingError(
            f"cannot reach the MLflow store {tracking.redact(uri)} to start the sweep "
            f"({str(exc).splitlines()[0][:200]}). Start the server or fix --tracking-uri; nothing "
            f"was run.") from None
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
    try:
        results = _tuner(prep, callback, restore=resume, stop=stop).fit()
        finished = True
    finally:
        # after a restore Ray calls the callback saved with the experiment, not ours
        live = tracking.MlflowTrialLogger.live(cfg.name) or callback
        if not finished:
            _close_quietly(uri, experiment_id, parent_id, live)
    lost = live.flush_until(TRACKING_GRACE_S) if live.pending_writes() else 0
    if lost:
        say(f"warning: the MLflow store {tracking.redact(uri)} did not come back within "
            f"{TRACKING_GRACE_S:.0f}s; {lost} write(s) were not delivered. Training results are safe "
            f"in {cfg.sweep_dir} (Ray Tune result files and checkpoints).")
        return SweepOutcome(cfg.name, uri, cfg.sweep_dir, None, _counts_from_ray(results),
                            time.time() - start)
    return _finish(cfg, uri, experiment_id, parent_id, results, live, start)


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


def _finish(cfg: SweepConfig, uri: str, experiment_id: str, parent_id: str, results, live,
            start: float) -> SweepOutcome:
    from tuning.best import top_k

    tracking.close_open_trial_runs(uri, experiment_id, "KILLED")
    runs = tracking.trial_runs(uri, cfg.name)
    counts = {s: sum(r.info.status == s for r in runs) for s in ("FINISHED", "FAILED", "KILLED")}
    best_list = top_k(cfg.name, 1, cfg.metric, cfg.mode, tracking_uri=uri, storage=cfg.storage)
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
    return SweepOutcome(cfg.name, uri, cfg.sweep_dir, best, counts, wall)


def resume_sweep(name: str, storage: str, **changes: Any) -> SweepOutcome:
    cfg = load_saved_sweep(name, storage)
    if changes:
        cfg = SweepConfig.from_dict({**cfg.to_dict(), **changes})
    return run_sweep(cfg, resume=True)
