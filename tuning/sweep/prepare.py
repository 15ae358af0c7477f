"""Preparing a sweep before Ray starts: the search space built and dry-run sampled, warm-start
presets, PBT's population, local resources, the MLflow store and the data checked, and the data
tokenized once. Everything a user can get wrong is refused here, with nothing started yet.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from dataclasses import dataclass
from typing import Callable, Optional

from search_spaces.baselines import bilstm_space, tfidf_space
from search_spaces.contrastive import contrastive_space, mixed_space
from search_spaces.finetune import SWEEP_LEVEL, finetune_space
from search_spaces.multitask import multitask_space
from search_spaces.overrides import load_space
from search_spaces.space import SearchSpace
from trainables import registry, streamed, task_data
from trainables.errors import ConfigError
from trainables.joint import selection_metric
from trainables.models import load_tokenizer
import tuning.sweep.pbt as pbt
import tuning.sweep.ray_tokenize as ray_tokenize
import tuning.tracking as tracking
from tuning.config import POPULATION_SCHEDULERS, SweepConfig, warm_start_config
from tuning.sweep.search import preview_configs, warm_start_values

log = logging.getLogger(__name__)


def say(message: str) -> None:
    log.info(message)


@dataclass
class Prepared:
    """A validated sweep, ready to hand to Ray."""

    config: SweepConfig
    space: SearchSpace
    presets: list[tuple[dict, dict]]
    data: task_data.TaskData  # without the test split: trials never see it
    tracking_uri: str
    population: Optional[list[dict]] = None  # PBT/PB2: the trials' initial configs, resolved
    data_fingerprint: Optional[str] = None  # trainables.data.data_fingerprint of the three splits
    # data tokenized on the cluster (Ray Data): built by ``load_pending`` once the driver has
    # joined it (``data`` is None until then)
    pending: Optional[Callable[[], task_data.TaskData]] = None

    def load_pending(self) -> None:
        """Tokenize what waited for the cluster (the sweep's driver has joined it)."""
        if self.pending is not None:
            self.data, self.pending = self.pending().without_test(), None


SPACES = {"finetune": finetune_space, "contrastive": contrastive_space, "any": mixed_space,
          "multitask": multitask_space, "tfidf": tfidf_space, "bilstm": bilstm_space}


def build_space(cfg: SweepConfig) -> SearchSpace:
    """The default space for the sweep's trainable family (or both: ``any``), the user's YAML
    applied, sweep-level constants bound."""
    rounds = {"eval_every": cfg.eval_every} if cfg.eval_every else {}  # per epoch: as before it existed
    space = SPACES[cfg.trainable](model=cfg.model, max_length=cfg.max_length, epochs=cfg.epochs,
                                  seed=cfg.seed, precision=cfg.precision, **rounds)
    if cfg.space_file:
        config_cls = registry.config_class("contrastive" if cfg.trainable == "any" else cfg.trainable)
        space = load_space(cfg.space_file, space, config_cls=config_cls, fixed_by_sweep=SWEEP_LEVEL)
    return space


def max_epochs(space: SearchSpace, epochs: int) -> int:
    """The longest trial in reported epochs (ASHA's max_t): contrastive trials add their first stage."""
    if space.constants.get("trainable") in registry.ONE_STAGE:
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
    group = cfg.worker_group
    if group.spread and group.total()["CPU"] > cpus:
        raise ConfigError(
            f"a trial over {group.count} workers (--workers-per-trial) holds --cpus-per-trial "
            f"{cfg.cpus_per_trial:g} CPUs for each worker, {group.total()['CPU']:g} in all, but this "
            f"machine has {cpus}: no trial could ever start and the sweep would wait forever. Use "
            f"--workers-per-trial {max(1, int(cpus // cfg.cpus_per_trial))} or fewer workers (or less "
            f"--cpus-per-trial per worker), or join a bigger Ray cluster with --address.")



def _multitask_ranking(cfg: SweepConfig, data) -> SweepConfig:
    """A multitask sweep left at the default ranking (val_accuracy, which is intent accuracy
    there) ranks by its data's own metric instead: sentence accuracy for joint data, the task mean
    for two datasets (``trainables.joint.selection_metric``)."""
    if cfg.trainable != "multitask" or cfg.metric != "val_accuracy" or cfg.objectives:
        return cfg
    metric = selection_metric(data)
    say(f"ranking trials by {metric}, the default for this data (--metric val_intent_accuracy "
        f"ranks by intent accuracy)")
    return dataclasses.replace(cfg, metric=metric, mode="max")


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
    family = "contrastive" if cfg.trainable == "any" else cfg.trainable

    def same_data(fingerprint: str) -> None:
        if cfg.data_fingerprint and fingerprint != cfg.data_fingerprint:
            raise ConfigError(
                f"the data of sweep {cfg.name!r} changed since it started: {cfg.data.source!r} "
                f"(columns {cfg.data.text_column!r}/{cfg.data.label_column!r}) has fingerprint "
                f"{fingerprint[:19]}..., the sweep trained on {cfg.data_fingerprint[:19]}... "
                f"Resuming would rank trials trained on different data together. Put the original "
                f"files back to resume, or start a new sweep (another --name) on the new data.")

    tokenizer = load_tokenizer(cfg.model)  # also proves the model id or folder exists
    load = functools.partial(task_data.load_encoded, cfg.data, family, tokenizer, model=cfg.model,
                             max_length=cfg.max_length, say=say)
    if cfg.address and streamed.is_streamed(cfg.data):
        # tokenized as a Ray Data job on the cluster, once the driver has joined it (runner);
        # everything else is checked now, before Ray starts
        fingerprint = task_data.fingerprint_of(cfg.data, family)
        same_data(fingerprint)
        return Prepared(cfg, space, presets, None, uri, population=_population(cfg, sampled_configs),
                        data_fingerprint=fingerprint,
                        pending=lambda: _described(load(builder=ray_tokenize.builder(cfg.address))[0], cfg))
    data, fingerprint = load(check=same_data)
    data = _described(data, cfg)
    cfg = _multitask_ranking(cfg, data)
    return Prepared(cfg, space, presets, data.without_test(), uri,
                    population=_population(cfg, sampled_configs), data_fingerprint=fingerprint)


def _population(cfg: SweepConfig, sampled_configs: list[dict]) -> Optional[list[dict]]:
    if cfg.scheduler not in POPULATION_SCHEDULERS:
        return None
    return [registry.resolve_config(c) for c in sampled_configs[:cfg.num_trials]]


def _described(data: task_data.TaskData, cfg: SweepConfig) -> task_data.TaskData:
    say(f"data: {task_data.describe(data)}; tokenized once for all trials")
    if any(data.truncated.values()):
        say(f"note: texts longer than max_length={cfg.max_length} tokens were truncated: {data.truncated}")
    return data
