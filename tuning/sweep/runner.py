"""Builds and runs the Ray Tune sweep: validate → tokenize once → Tuner(OptunaSearch, ASHA) → MLflow.

Everything a user can get wrong is checked in ``prepare`` before Ray starts.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import signal
import time
import uuid
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
from trainables.data import TokenizedData, data_fingerprint, load_raw_splits, tokenize_splits
from trainables.entry import recycled
from trainables.errors import ConfigError, UserError
from trainables.models import load_tokenizer
import tuning.tracking.best as best_trials
import tuning.console as console
import tuning.credentials as credentials
import tuning.sweep.pbt as pbt
import tuning.sweep.ray_internals as ray_internals
import tuning.tracking as tracking
from tuning.sweep.asha import RUNGS_FILE, ResumableASHA
from tuning.sweep.progress import SweepProgress
from tuning.sweep.pruning import CheckpointPruner
from tuning.config import (DEFAULT_ROOT, POPULATION_SCHEDULERS, SweepConfig, load_saved_sweep,
                           resume_store, warm_start_config)
from tuning.interrupt import (Interrupted, reclaim_sigterm, sigterm_blocked_in_children,
                              stop_tune_gracefully)
from tuning.sweep.lock import sweep_lock
from tuning.sweep.storage_trust import check_safe_to_unpickle
from tuning.sweep.search import build_searcher, preview_configs, warm_start_values

log = logging.getLogger(__name__)

TRIAL_METRICS = ("train_loss", "val_loss", "val_accuracy", "val_macro_f1", "lr", "samples_per_s")


def say(message: str) -> None:
    log.info(message)


@dataclass
class Prepared:
    """A validated sweep, ready to hand to Ray."""

    config: SweepConfig
    space: SearchSpace
    presets: list[tuple[dict, dict]]
    data: TokenizedData  # without the test split: trials never see it
    tracking_uri: str
    population: Optional[list[dict]] = None  # PBT/PB2: the trials' initial configs, resolved
    data_fingerprint: Optional[str] = None  # trainables.data.data_fingerprint of the three splits


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


def _format_resources(resources: dict) -> str:
    return ", ".join(f"{resources.get(key, 0):g} {key}s" for key in ("CPU", "GPU"))


def check_local_resources(cfg: SweepConfig) -> None:
    """The embedded Ray gets this machine's CPUs and GPUs: a trial that needs more could never
    start, and Ray would wait for it forever."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if cfg.cpus_per_trial > cpus:
        raise ConfigError(
            f"--cpus-per-trial {cfg.cpus_per_trial:g} asks for more CPUs than this machine has "
            f"({cpus}): no trial could ever start and the sweep would wait forever. Use "
            f"--cpus-per-trial {cpus} or less (fractions such as 0.5 run trials side by side), or "
            f"join a bigger Ray cluster with --address.")
    if cfg.gpus_per_trial > 0:
        import torch

        gpus = torch.cuda.device_count()
        if cfg.gpus_per_trial > gpus:
            have = "no GPU that PyTorch can use" if gpus == 0 else f"{gpus} GPU(s)"
            raise ConfigError(
                f"--gpus-per-trial {cfg.gpus_per_trial:g} asks for GPUs, but this machine has "
                f"{have} (torch.cuda.device_count() = {gpus}): no trial could ever start and the "
                f"sweep would wait forever. Leave --gpus-per-trial at 0 to train on the CPU, or "
                f"join a Ray cluster with GPUs with --address.")


# on a cluster, how long the resource check waits for nodes still joining (a KubeRay RayJob is
# submitted as soon as its cluster is up) before it refuses the sweep
NODE_WAIT_S = 30.0


def check_trial_resources(cfg: SweepConfig, node_wait_s: float = NODE_WAIT_S) -> None:
    """Right after Ray starts or is joined, before any trial is queued: some node must have
    what one trial asks for, else trials wait forever. On a cluster, nodes still joining get
    ``node_wait_s``; an autoscaler may still add such a node: nodes its configuration allows
    count too (as Ray Train checks its workers), and --wait-for-nodes skips the check."""
    import ray

    need = {key: value for key, value in (("CPU", cfg.cpus_per_trial), ("GPU", cfg.gpus_per_trial))
            if value > 0}

    def alive_nodes() -> list[dict]:
        return [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]

    def fits(nodes: list[dict]) -> bool:
        return any(all(res.get(key, 0) >= value for key, value in need.items()) for res in nodes)

    nodes = alive_nodes()
    if fits(nodes):
        return
    if cfg.address and not cfg.wait_for_nodes and node_wait_s > 0:
        say(f"no node has {_format_resources(need)} for one trial yet; waiting up to "
            f"{node_wait_s:.0f}s for nodes to join")
        end = time.time() + node_wait_s
        while time.time() < end:
            time.sleep(2.0)
            nodes = alive_nodes()
            if fits(nodes):
                return
    if cfg.address and cfg.wait_for_nodes:
        say(f"note: no node has {_format_resources(need)} for one trial yet; waiting for the "
            f"autoscaler to add one (--wait-for-nodes)")
        return
    try:  # the autoscaler's limits, where Ray publishes them (autoscaler v2, e.g. KubeRay)
        ceiling = ray_internals.autoscaler_max_resources()
    except Exception:
        ceiling = {}
    if ceiling and all(ceiling.get(key, 0) >= value for key, value in need.items()):
        say(f"note: no node has {_format_resources(need)} for one trial yet; the autoscaler can "
            f"add one")
        return
    largest = max(nodes, key=lambda res: (res.get("GPU", 0), res.get("CPU", 0)), default={})
    where = f"the Ray cluster at --address {cfg.address}" if cfg.address else "the local Ray"
    fix = ("Lower --cpus-per-trial / --gpus-per-trial, add a node that has them, or, if an "
           "autoscaler will add such nodes, pass --wait-for-nodes." if cfg.address else
           "Lower --cpus-per-trial / --gpus-per-trial.")
    raise ConfigError(
        f"no node of {where} can run a trial: one trial needs {_format_resources(need)}, and the "
        f"largest of its {len(nodes)} node(s) has {_format_resources(largest)}. Trials would wait "
        f"forever for resources that never come. {fix}")


def prepare(cfg: SweepConfig) -> Prepared:
    """Validate the space, presets, model, resources, MLflow store and data; tokenize once. No
    Ray yet. ``cfg.data_fingerprint`` (a resumed sweep's) must match the data found now."""
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
    # latency needs deploy_metrics on, val_accuracy_perturbed needs perturb_eval, ...
    registry.check_reported([o.metric for o in cfg.objective_list] + [c.metric for c in cfg.constraint_list],
                            [registry.resolve_config(c) for c in sampled_configs])
    if not cfg.address:
        check_local_resources(cfg)
    uri = cfg.resolved_tracking_uri()
    check_tracking_target(cfg, uri)
    tracking.bound_http_waits()
    tracking.check_store(uri)
    log.debug(f"loading data from {cfg.data.source!r} and tokenizer of {cfg.model!r}")
    raw = load_raw_splits(cfg.data)
    fingerprint = data_fingerprint(raw)
    if cfg.data_fingerprint and fingerprint != cfg.data_fingerprint:
        sizes = {split: len(part.texts) for split, part in raw.items()}
        raise ConfigError(
            f"the data of sweep {cfg.name!r} changed since it started: {cfg.data.source!r} "
            f"(columns {cfg.data.text_column!r}/{cfg.data.label_column!r}, now {sizes} examples) "
            f"has fingerprint {fingerprint[:19]}..., the sweep trained on {cfg.data_fingerprint[:19]}... "
            f"Resuming would rank trials trained on different data together. Put the original "
            f"files back to resume, or start a new sweep (another --name) on the new data.")
    tokenizer = load_tokenizer(cfg.model)  # also proves the model id or folder exists
    data = tokenize_splits(raw, tokenizer, model=cfg.model, max_length=cfg.max_length)
    sizes = {k: len(v) for k, v in data.splits.items()}
    say(f"data: {sizes} examples, {data.num_labels} labels; tokenized once for all trials")
    if any(data.truncated.values()):
        say(f"note: texts longer than max_length={cfg.max_length} tokens were truncated: {data.truncated}")
    return Prepared(cfg, space, presets, data.without_test(), uri,
                    population=[registry.resolve_config(c) for c in sampled_configs[:cfg.num_trials]]
                    if population_based else None, data_fingerprint=fingerprint)


def trial_dirname(trial) -> str:
    """Short trial folders (Ray's default packs the whole config into the name)."""
    return f"{trial.trainable_name}_{trial.trial_id}"


def _init_ray(cfg: SweepConfig) -> None:
    """Start this sweep's own Ray (no --address) or join the cluster at --address, then check
    what a cluster needs: a store every node's trials can reach and shared storage."""
    import ray

    if ray.is_initialized():
        return
    if cfg.address:
        address = credentials.reveal(cfg.address)
        if credentials.MASK in address:  # read back from saved state, its password masked
            raise ConfigError(f"the sweep's saved --address {address} had a password, which "
                              f"tunebert never saves; pass it again: --address "
                              f"{address.replace(credentials.MASK, 'PASSWORD')}")
        try:
            ray.init(address=address, **console.ray_settings()["init"])
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ConfigError(f"could not join the Ray cluster at --address {cfg.address!r} "
                              f"({str(exc).splitlines()[0][:200]}). Check that `ray start --head` "
                              f"runs there and the address/port, or leave --address out to run "
                              f"locally.") from None
        check_joined_cluster(cfg)
        check_shared_storage(cfg)
    else:
        # Without --address the sweep starts its own Ray, always: address="local" never joins
        # $RAY_ADDRESS or a `ray start` cluster on this machine (which `ray.init()` would do
        # silently, skipping the checks above). RAY_ADDRESS is dropped so nothing in this process
        # or its Ray workers connects there either.
        ignored = os.environ.pop("RAY_ADDRESS", None)
        if ignored:
            ignored = tracking.redact(ignored)  # a ray:// address may carry credentials
            say(f"note: RAY_ADDRESS={ignored} is set, but without --address the sweep starts its own "
                f"Ray on this machine and ignores it; pass --address auto (or --address {ignored}) "
                f"to run on that cluster")
        # An embedded Ray serves this process only, so none of its servers (GCS, raylet, workers)
        # should listen beyond the loopback interface. Ray's own switch for that is single-node
        # mode; it is read from the environment at import time, hence both lines.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        ray_internals.set_multi_node(os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] not in ("0", "false", "False"))
        ray.init(address="local", include_dashboard=False, dashboard_host="127.0.0.1",
                 **console.ray_settings()["init"])


def check_joined_cluster(cfg: SweepConfig) -> None:
    """``check_tracking_target`` for the cluster actually joined: ``--address auto`` (or
    $RAY_ADDRESS) is only known once joined, and must meet the same rule as an explicit address."""
    import ray

    joined = ray.get_runtime_context().gcs_address
    try:
        check_tracking_target(dataclasses.replace(cfg, address=joined), cfg.resolved_tracking_uri())
    except ConfigError as exc:
        if joined == cfg.address:
            raise
        raise ConfigError(f"--address {cfg.address} joined the Ray cluster at {joined}: {exc}") from None


def check_shared_storage(cfg: SweepConfig) -> None:
    """On a cluster, every alive node must see the sweep's storage folder (checkpoints are
    written by the node that runs a trial and read by whichever node resumes it).

    Nodes that join later (an autoscaler adding workers, as docker/cluster.yaml starts with none)
    cannot be probed now: every trial checks the folder again on the node it lands on
    (``trainables.entry.check_storage_visible``) and fails at once, before training, when that
    node cannot see it. When this node is the only one alive, the check here proves nothing, and
    the sweep says so."""
    import uuid

    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) <= 1:
        where = nodes[0].get("NodeManagerAddress", "?") if nodes else "?"
        say(f"warning: only one Ray node is alive ({where}), so --storage {cfg.ray_storage} could "
            f"not be checked against other nodes. Nodes that join later are checked by each trial "
            f"on the node it runs on: a trial on a node that cannot see this folder fails at its "
            f"start with that message (retried up to --max-failures times, possibly elsewhere). "
            f"Use a folder every node mounts at the same path (NFS, EFS, a ReadWriteMany volume).")
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
    from ray.tune.schedulers import FIFOScheduler

    cfg = prep.config
    trainable = tune.with_resources(
        recycled(tune.with_parameters(registry.ray_entry_point(), data=prep.data)),
        {"cpu": cfg.cpus_per_trial, "gpu": cfg.gpus_per_trial})
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
            longest = max([max_epochs(prep.space, cfg.epochs)] + [
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
            time_budget_s=cfg.time_budget_s, max_concurrent_trials=cfg.max_concurrent,
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
