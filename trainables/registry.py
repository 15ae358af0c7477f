"""The trainable families a sweep can run, by name: config class and training function.

Light to import: training functions are named as ``module:function`` and loaded on demand. Every
family's ``fit(cfg, data, *, device, report, resume_dir=None, progress=None)`` returns a model
whose ``forward(input_ids, attention_mask)`` gives class logits, and reports ``val_accuracy``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Optional

from trainables.errors import ConfigError
from trainables.hparams import (ALL_FAMILIES, FAMILIES, BilstmConfig, ContrastiveConfig, FinetuneConfig,
                               MultitaskConfig, TfidfConfig, TrialConfig)

TRAINABLES: dict[str, tuple[type[TrialConfig], str]] = {
    # trainables.finetune.fit, given a teacher's probabilities when the config distils one
    "finetune": (FinetuneConfig, "trainables.distill:fit"),
    "contrastive": (ContrastiveConfig, "trainables.contrastive:fit"),
    "multitask": (MultitaskConfig, "trainables.joint:fit"),
    # cheap baselines from scratch (docs/baselines.md): what the encoder buys, in the same record
    "tfidf": (TfidfConfig, "trainables.tfidf:fit"),
    "bilstm": (BilstmConfig, "trainables.bilstm:fit"),
}
RAY_ENTRY_POINT = "trainables.entry:trainable"
# Every trainable reports these for its best validation epoch as ``best_<name>`` (and the epoch as
# ``best_epoch``); a sweep ranks, early-stops and searches on those.
BEST_EPOCH_METRICS = ("val_accuracy", "val_loss", "val_macro_f1")
# Reported only when the trial's config asks for them (``perturb_eval``: accuracy on perturbed
# validation texts), then kept for the best epoch (chosen by ``val_accuracy``) like the above:
# ranking by ``best_val_accuracy_perturbed`` ranks the models the trials hand over.
OPTIONAL_BEST_EPOCH_METRICS = ("val_accuracy_perturbed",)
# A multitask trial reports these too (those its data has: ``val_sentence_accuracy`` needs
# examples with a label and tags, ``val_task_mean`` two datasets), for its best epoch as well.
MULTITASK_BEST_EPOCH_METRICS = ("val_intent_accuracy", "val_slot_f1", "val_slot_precision",
                                "val_slot_recall", "val_sentence_accuracy", "val_task_mean")
CLASSIFIERS = FAMILIES  # the families `--trainable any` searches over
# the families whose trials train in one stage: epochs are the reported epochs
ONE_STAGE = tuple(f for f in ALL_FAMILIES if f != "contrastive")


def ranked_metric(metric: str) -> str:
    """The result key a sweep optimises for ``metric``: its best epoch's value when reported."""
    best = BEST_EPOCH_METRICS + OPTIONAL_BEST_EPOCH_METRICS + MULTITASK_BEST_EPOCH_METRICS
    return f"best_{metric}" if metric in best else metric


@dataclass(frozen=True)
class ReportedMetric:
    """A metric a trial reports, as far as a sweep may rank, search or constrain on it.

    ``every_epoch``: in every report (else only in the report of the trial's last epoch, so a trial
    ASHA stops early never has it); ``families``: the trial families that report it for a whole
    trial (a contrastive trial has no classifier metric in its contrastive stage, only multitask
    trials score slots), so only their sweeps can rank on it;
    ``needs``: the trial config flag that must be on for it to be reported; ``unit``: for axis
    labels ("" for a score in [0, 1] or a loss)."""

    name: str
    every_epoch: bool = True
    families: tuple[str, ...] = ALL_FAMILIES
    needs: Optional[str] = None
    unit: str = ""


# Every metric a sweep may rank, search or constrain on (trainables/finetune.py and
# trainables/contrastive.py report them; trainables/deploy.py measures the deployment ones).
REPORTED_METRICS: dict[str, ReportedMetric] = {m.name: m for m in (
    ReportedMetric("val_accuracy"), ReportedMetric("val_loss"), ReportedMetric("val_macro_f1"),
    ReportedMetric("val_accuracy_perturbed", families=ONE_STAGE, needs="perturb_eval"),
    *(ReportedMetric(name, families=("multitask",)) for name in MULTITASK_BEST_EPOCH_METRICS),
    ReportedMetric("train_loss"),
    ReportedMetric("samples_per_s", unit="texts/s"),
    ReportedMetric("epoch_seconds", unit="s"),
    ReportedMetric("peak_memory_mb", unit="MB"),
    ReportedMetric("params_m", unit="million parameters"),
    ReportedMetric("size_mb", unit="MB"),
    ReportedMetric("latency_ms_p50", needs="deploy_metrics", unit="ms"),
    ReportedMetric("latency_ms_p95", needs="deploy_metrics", unit="ms"),
    ReportedMetric("throughput_b32", needs="deploy_metrics", unit="texts/s"),
    ReportedMetric("val_accuracy_int8", every_epoch=False, families=("finetune",), needs="quantize"),
)}


def reported_metric(name: str, what: str, trainable: str = "finetune") -> ReportedMetric:
    """``name``'s entry in ``REPORTED_METRICS``; ``what`` names the setting (for the error), and
    ``trainable`` the sweep's family (``any``: finetune and contrastive), whose trials must all be
    able to report it."""
    if name not in REPORTED_METRICS:
        raise ConfigError(
            f"{what} names metric {name!r}, which trials do not report; known metrics: "
            f"{sorted(REPORTED_METRICS)} (latency_ms_*/throughput_b32 need `deploy_metrics` on, the "
            f"default; val_accuracy_int8 needs `quantize` on and is reported at a trial's last "
            f"epoch only)")
    metric = REPORTED_METRICS[name]
    families = CLASSIFIERS if trainable == "any" else (trainable,)
    if not set(families) <= set(metric.families):
        which = " or ".join(metric.families)
        raise ConfigError(f"{what} names {name!r}, which only {which} trials report for a whole "
                          f"trial (a contrastive trial has no classifier score in its contrastive "
                          f"stage; only multitask trials score slots and sentences), but the "
                          f"sweep's trainable is {trainable!r}: use --trainable "
                          f"{metric.families[0]}")
    return metric


def check_reported(names: list[str], configs: list[dict]) -> None:
    """Refuse metrics that resolved trial ``configs`` would not report because a flag they
    need (``ReportedMetric.needs``) is off, e.g. latency with ``deploy_metrics: false``."""
    for name in names:
        needs = REPORTED_METRICS[name].needs if name in REPORTED_METRICS else None
        # a family without the flag never reports the metric: `finetune_only` refuses that
        off = [c for c in configs if needs in c and not c[needs]]
        if needs and off:
            raise ConfigError(
                f"the sweep ranks or constrains on {name!r}, which a trial reports only with "
                f"`{needs}` on, but the search space sets {needs}={off[0].get(needs)!r}: set it "
                f"in the space file (e.g. `{needs}: true`) or leave {name!r} out")


def config_class(name: str) -> type[TrialConfig]:
    if name not in TRAINABLES:
        raise ConfigError(f"unknown trainable {name!r}; available: {sorted(TRAINABLES)}")
    return TRAINABLES[name][0]


def resolve_config(config: dict[str, Any]) -> dict[str, Any]:
    """The full config a trial trains with: defaults filled in, validated."""
    name = config.get("trainable", "finetune")
    return config_class(name).from_dict({**config, "trainable": name}).to_dict()


def _load(path: str) -> Callable:
    module, function = path.split(":")
    return getattr(importlib.import_module(module), function)


def fit_function(name: str) -> Callable:
    config_class(name)
    return _load(TRAINABLES[name][1])


def ray_entry_point() -> Callable:
    return _load(RAY_ENTRY_POINT)
