"""The fine-tuning trainable: build the classifier, train, evaluate, report, checkpoint, resume.

``fit`` is the loop, free of Ray: ``tuning`` uses it directly to train one config, and
``trainables.entry.trainable`` runs it inside a Ray Tune trial.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import torch

from trainables import data_parallel, registry, train_noise
from trainables.averaging import WeightAverage
from trainables.checkpointing import load_checkpoint, restore_rng_states, save_checkpoint
from trainables.data import EncodedSplit, TokenizedData, encode_texts, steps_per_epoch
from trainables.encoding import epoch_batches
from trainables.deploy import PeakMemory, deployment_metrics, parameter_count, probe_batch
from trainables.errors import ConfigError
from trainables.hparams import FinetuneConfig
from trainables.loops import evaluate, train_epoch
# classification_loss is imported from here by the other trainables and the benches
from trainables.finetune_losses import (TeacherTargets, classification_loss,  # noqa: F401
                                        finetune_loss, with_teacher)
from trainables.models import (TextClassifier, freeze_bottom, load_encoder, load_tokenizer,
                               num_encoder_layers, quantize_int8, reinit_top)
from trainables.optim import build_optimizer, llrd_param_groups
from trainables.perturb import parse_spec, perturb_texts
from trainables.rounds import RoundPlan, plan_rounds
from trainables.runtime import resolve_precision, seed_everything, supports_precision
from trainables.schedules import make_schedule

# Called once per epoch (per round with ``eval_every``) with the metrics and a function that
# writes a checkpoint into a folder.
Reporter = Callable[[dict, Callable[[str], None]], None]

FAIL_MARKER_ENV = "TUNEBERT_FAIL_MARKER"
# `perturb_eval` perturbs the validation texts with this seed, whatever the trial's seed: every
# trial and every seed of a config is scored on the same perturbed texts, so the scores compare.
PERTURB_EVAL_SEED = 0


def configured_encoder(cfg):
    """The config's encoder (its bottom ``num_layers`` layers, or all) with its dropout
    overrides; ``freeze_layers`` and ``reinit_layers`` checked against its layer count."""
    encoder = load_encoder(cfg.model, hidden_dropout=cfg.hidden_dropout,
                           attention_dropout=cfg.attention_dropout, num_layers=cfg.num_layers)
    layers = num_encoder_layers(encoder)
    for name in ("freeze_layers", "reinit_layers"):
        if getattr(cfg, name) > layers:
            raise ConfigError(f"`{name}` is {getattr(cfg, name)} but model {cfg.model!r} has only "
                              f"{layers} layers")
    return encoder


def build_classifier(cfg, num_labels: int) -> TextClassifier:
    """Encoder (its bottom ``num_layers`` layers, or all) + head as the config says, with freezing
    and top-layer re-initialisation applied."""
    encoder = configured_encoder(cfg)
    model = TextClassifier(encoder, num_labels, pooling=cfg.pooling, head=cfg.head,
                           head_hidden=cfg.head_hidden, dropout=cfg.classifier_dropout)
    reinit_top(model, cfg.reinit_layers, seed=cfg.seed)
    freeze_bottom(model, embeddings=cfg.freeze_embeddings, layers=cfg.freeze_layers)
    return model


def build_optimization(model: TextClassifier, cfg, *, total_steps: int):
    """Optimizer over LLRD param groups and a LambdaLR with the configured schedule."""
    groups = llrd_param_groups(
        model.named_parameters(), num_layers=num_encoder_layers(model.encoder), lr=cfg.lr,
        llrd_decay=cfg.llrd_decay, head_lr_multiplier=cfg.head_lr_multiplier,
        weight_decay=cfg.weight_decay)
    optimizer = build_optimizer(groups, kind=cfg.optimizer, lr=cfg.lr, momentum=cfg.momentum,
                                nesterov=cfg.nesterov)
    schedule = make_schedule(cfg.scheduler, total_steps=total_steps, warmup_ratio=cfg.warmup_ratio,
                             min_ratio=cfg.min_lr / cfg.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    return optimizer, scheduler


def top_lr(optimizer: torch.optim.Optimizer) -> float:
    """Learning rate of the top encoder layer (the sweep's ``lr``), falling back to the largest."""
    encoder_groups = [g for g in optimizer.param_groups if not g["name"].startswith("head")]
    return max(g["lr"] for g in (encoder_groups or optimizer.param_groups))


def maybe_inject_failure(point: int) -> None:
    """Test hook for the reliability tests: a real exception raised inside a running trial.

    If ``$TUNEBERT_FAIL_MARKER`` names a file whose content is ``N`` (or ``N:times``), the first
    trial that reaches point ``N`` raises, ``times`` times in all (default once). Point ``k`` is
    the start of epoch ``k``; point ``epochs + 1`` is after the last epoch was reported. Claiming
    the marker is an atomic rename, so concurrent trials cannot both take one firing.
    """
    marker = os.environ.get(FAIL_MARKER_ENV)
    if not marker or not Path(marker).is_file():
        return
    try:
        text = Path(marker).read_text().strip()
    except FileNotFoundError:
        return
    epoch, _, times = text.partition(":")
    if not epoch.isdigit() or int(epoch) != point:
        return
    claimed = f"{marker}.{os.getpid()}.claimed"
    try:
        os.rename(marker, claimed)
    except FileNotFoundError:
        return  # another trial took this firing
    left = int(times or 1) - 1
    if left > 0:
        Path(marker).write_text(f"{epoch}:{left}")
    os.unlink(claimed)
    raise RuntimeError(f"injected failure at point {point} (marker {marker})")


def reapply_hyperparameters(optimizer: torch.optim.Optimizer, scheduler, fresh: list[tuple[float, float]]) -> None:
    """After loading an optimizer/scheduler state: the config's base learning rates and weight
    decay win over the saved ones. A trial continued from another trial's checkpoint with a
    mutated config (Population Based Training) trains with its own values; for an unchanged
    config this changes nothing. ``fresh``: (base lr, weight decay) per param group, in order."""
    for group, (base, decay) in zip(optimizer.param_groups, fresh):
        group["initial_lr"] = base
        group["weight_decay"] = decay
    scheduler.base_lrs = [base for base, _ in fresh]
    step = scheduler.last_epoch  # LambdaLR counts optimizer steps here
    for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * factor(step)


class BestEpoch:
    """The best validation epoch so far (by ``by``, ``val_accuracy`` unless said otherwise; a tie
    keeps the earlier epoch) and a CPU copy of the weights that scored it: the model the run hands
    over. It keeps ``metrics`` (the registry's best-epoch metrics unless said otherwise) and the
    optional ones the epoch reported."""

    METRICS = registry.BEST_EPOCH_METRICS

    def __init__(self, by: str = "val_accuracy", metrics: Optional[tuple[str, ...]] = None):
        self.by = by
        self.kept = self.METRICS if metrics is None else metrics
        self.epoch = 0
        self.metrics: dict[str, float] = {}
        self.weights: Optional[dict] = None

    def update(self, epoch: int, metrics: dict, weights: dict) -> bool:
        if self.epoch and not metrics[self.by] > self.metrics[self.by]:
            return False
        self.epoch = epoch
        self.metrics = {k: metrics[k] for k in self.kept if k in metrics}
        self.metrics.update({k: metrics[k] for k in registry.OPTIONAL_BEST_EPOCH_METRICS if k in metrics})
        self.weights = {k: v.detach().to("cpu", copy=True) for k, v in weights.items()}
        return True

    def as_metrics(self) -> dict[str, float]:
        return {"best_epoch": self.epoch, **{f"best_{k}": v for k, v in self.metrics.items()}}

    def state(self) -> dict:
        return {"epoch": self.epoch, "metrics": self.metrics}

    def restore(self, saved: Optional[dict], weights: Optional[dict]) -> None:
        if saved and saved.get("epoch"):
            self.epoch, self.metrics, self.weights = saved["epoch"], dict(saved["metrics"]), weights


@torch.no_grad()
def _evaluate_weights(model, weights: Optional[dict], split, **kwargs):
    """Evaluate ``model`` with ``weights`` swapped in (the averaged ones), then put the live
    weights back; with ``weights=None`` the live model as it is."""
    if weights is None:
        return evaluate(model, split, **kwargs)
    live = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(weights)
    try:
        return evaluate(model, split, **kwargs)
    finally:
        model.load_state_dict(live)


def perturbed_validation(spec: str, data: TokenizedData) -> EncodedSplit:
    """The validation split with its texts perturbed as ``spec`` says (``trainables.perturb``),
    tokenized again the way training tokenizes (``encode_texts``); the labels are the same.

    A trial receives token ids, not texts, so the texts perturbed are the tokenizer's decoding of
    the ids: for an uncased model the lower-cased, accent-stripped text the model reads anyway;
    pieces the vocabulary lacks ([UNK]) are left out."""
    val = data.splits["validation"]
    tokenizer = load_tokenizer(data.model)
    texts = tokenizer.batch_decode([ids.tolist() for ids in val.input_ids], skip_special_tokens=True,
                                   clean_up_tokenization_spaces=True)
    noisy = perturb_texts(texts, parse_spec(spec, what="`perturb_eval`"), seed=PERTURB_EVAL_SEED)
    ids, _ = encode_texts(tokenizer, noisy, data.max_length)
    return EncodedSplit(ids, val.labels)


# Deployment costs by architecture (``_architecture``), measured once per process: a Ray worker
# that runs trial after trial (``reuse_actors``) times each architecture once, not every trial.
_COSTS: dict[tuple, dict[str, float]] = {}


def _architecture(cfg, data: TokenizedData) -> tuple:
    """Everything the served model's size and speed depend on (weights' values excepted)."""
    return (str(cfg.model), cfg.num_layers, bool(getattr(cfg, "quantize", False)), cfg.pooling,
            cfg.head, cfg.head_hidden if cfg.head == "mlp" else None, cfg.max_length,
            data.num_labels, bool(cfg.deploy_metrics), torch.get_num_threads())


def deployment_costs(cfg, model: TextClassifier, data: TokenizedData,
                     architecture: tuple = ()) -> dict[str, float]:
    """What the trial's model costs to serve (``trainables.deploy``), measured on a CPU copy of
    ``model``: ``params_m``, ``size_mb`` and, with ``cfg.deploy_metrics``, CPU latency at batch 1
    and throughput at batch 32 on fixed texts padded to ``max_length``.

    They depend on the architecture (layers, head, length, int8 or not) and the threads, never
    on the values of the weights, so they are measured before the first epoch (once per
    architecture in a process, ``_COSTS``) and reported with every epoch: a trial ASHA stops
    early has them as well as one that trains to the end, and a contrastive trial (``model`` its
    classifier) as well as a fine-tuning one. With ``quantize`` (fine-tuning trials) they
    describe the int8 model the trial hands over (``quantize_int8``). ``architecture``: what
    else the model's costs depend on (a multi-task model's token head)."""
    key = _architecture(cfg, data) + tuple(architecture)
    if key not in _COSTS:
        _COSTS[key] = _measure_costs(cfg, model, data)
    return dict(_COSTS[key])


def _measure_costs(cfg, model: TextClassifier, data: TokenizedData) -> dict[str, float]:
    deployed = copy.deepcopy(model).to("cpu")
    deployed.eval()
    parameters = parameter_count(deployed)
    if getattr(cfg, "quantize", False):
        deployed = quantize_int8(deployed)
    probe = None
    if cfg.deploy_metrics:
        # never longer than the position embeddings: training truncates texts there too
        length = min(cfg.max_length, getattr(model.encoder.config, "max_position_embeddings",
                                             cfg.max_length))
        probe = probe_batch(load_tokenizer(data.model), length)
    return deployment_metrics(deployed, parameters=parameters, probe=probe)


def int8_scores(model: TextClassifier, weights: dict, data: TokenizedData, batch_size: int,
                noisy_val: Optional[EncodedSplit] = None) -> dict[str, float]:
    """The validation scores of the handed-over model (``weights`` in ``model``'s architecture)
    after dynamic int8 quantization (``val_accuracy_int8``, ``val_loss_int8``,
    ``val_macro_f1_int8``; with ``noisy_val``, the perturbed validation texts of
    ``perturb_eval``, also ``val_accuracy_perturbed_int8``), on the CPU: the last epoch of a
    ``quantize`` trial reports them. ``val_accuracy`` and the best-epoch choice stay the fp32
    model's: training is fp32, and the model folder keeps fp32 weights and quantizes when loaded."""
    deployed = copy.deepcopy(model).to("cpu")
    deployed.load_state_dict(weights)
    deployed = quantize_int8(deployed.eval())
    kwargs = dict(batch_size=max(64, batch_size), pad_token_id=data.pad_token_id,
                  num_labels=data.num_labels, device=torch.device("cpu"), precision="fp32")
    result = evaluate(deployed, data.splits["validation"], **kwargs)
    scores = {"val_accuracy_int8": result.accuracy, "val_loss_int8": result.loss,
              "val_macro_f1_int8": result.macro_f1}
    if noisy_val is not None:
        scores["val_accuracy_perturbed_int8"] = evaluate(deployed, noisy_val, **kwargs).accuracy
    return scores


@dataclass
class _Trial:
    """What the steps of one fine-tuning trial share: the model and everything that trains it,
    and the first epoch (round, with ``eval_every``) left to train (after the one a resumed
    checkpoint saved)."""

    cfg: FinetuneConfig
    data: TokenizedData
    device: torch.device
    precision: str
    memory: PeakMemory
    model: TextClassifier
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Optional[torch.amp.GradScaler]
    average: Optional[WeightAverage]
    best: BestEpoch
    first_epoch: int = 1
    train_model: Any = None  # what trains: the model, or it in DistributedDataParallel
    rounds: Optional[RoundPlan] = None  # round mode (``eval_every``); None: per epoch
    teacher: Optional[TeacherTargets] = None  # with ``distill_teacher``: its train probabilities

    @property
    def last(self) -> int:
        """The epoch (round) training stops after."""
        return self.rounds.last_round if self.rounds is not None else self.cfg.last_epoch


def _build(cfg: FinetuneConfig, data: TokenizedData, device: torch.device) -> _Trial:
    """The model, its optimizer and schedule over all ``cfg.epochs``, the fp16 scaler and the
    weight averaging, seeded."""
    if not supports_precision(device, cfg.precision):
        raise ConfigError(f"`precision` {cfg.precision!r} is not supported on {device}; use fp32")
    seed_everything(cfg.seed)
    memory = PeakMemory(device)
    model = build_classifier(cfg, data.num_labels).to(device)
    total_steps = cfg.epochs * steps_per_epoch(len(data.splits["train"]), cfg.batch_size)
    optimizer, scheduler = build_optimization(model, cfg, total_steps=total_steps)
    precision = resolve_precision(device, cfg.precision)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" and device.type == "cuda" else None
    if data_parallel.world()[1] > 1 and (cfg.rdrop_alpha or cfg.supcon_lambda):
        raise ConfigError(f"`rdrop_alpha` ({cfg.rdrop_alpha}) and `supcon_lambda` ({cfg.supcon_lambda}) "
                          f"are not available to a trial spread over several workers yet (R-Drop's "
                          f"two passes and SupCon's in-batch pairs need the whole batch on one "
                          f"worker); set them to 0 or train the trial on one worker")
    return _Trial(cfg, data, device, precision, memory, model, optimizer, scheduler, scaler,
                  WeightAverage.for_config(cfg, model), BestEpoch(),
                  train_model=data_parallel.wrap(model, device),
                  rounds=plan_rounds(cfg, len(data.splits["train"])))


def _resume(run: _Trial, resume_dir: str) -> None:
    """Load a checkpoint's model, optimizer, scheduler, scaler, averaging, best-epoch and RNG
    states; the config's learning rates and weight decay apply from there on."""
    fresh = [(g["initial_lr"], g["weight_decay"]) for g in run.optimizer.param_groups]
    state = load_checkpoint(resume_dir)
    run.model.load_state_dict(state["model"])
    if state["optimizer"] is not None:  # None after the last epoch: nothing left to train
        run.optimizer.load_state_dict(state["optimizer"])
        run.scheduler.load_state_dict(state["scheduler"])
        reapply_hyperparameters(run.optimizer, run.scheduler, fresh)
    if run.scaler is not None and state["scaler"] is not None:
        run.scaler.load_state_dict(state["scaler"])
    if run.average is not None:
        run.average.load_state_dict(state["extra"].get("average"))
    run.best.restore(state["extra"].get("best"), state.get("best_model") or state["model"])
    restore_rng_states(state["rng"])
    run.first_epoch = state["epoch"] + 1
    saved = state["extra"].get("position")
    if (run.rounds is None) != (saved is None):
        raise ConfigError(
            f"checkpoint {resume_dir} was written {'with' if saved else 'without'} `eval_every`, but "
            f"this trial's `eval_every` is {run.cfg.eval_every!r}: a run counts either epochs or "
            f"rounds throughout; resume it with the `eval_every` it started with")
    if saved is not None:
        run.rounds.check_resumed(saved, run.first_epoch - 1, resume_dir)


def _train_one_epoch(run: _Trial, epoch: int, loss_fn: Callable,
                     progress: Optional[Callable[[int], None]], batches: Optional[list] = None):
    """One epoch of training (the averaging updated after each step and at the end), or the
    given ``batches`` (a round's); its stats and the averaged weights to evaluate (None without
    averaging)."""
    cfg, average = run.cfg, run.average
    rng, train = np.random.default_rng([cfg.seed, epoch]), run.data.splits["train"]
    weights = None
    if data_parallel.world()[1] > 1:  # the same global batches on every worker, each its part
        batches, weights = data_parallel.split_for_worker(
            batches if batches is not None else epoch_batches(train, cfg.batch_size, rng=rng))
    stats = train_epoch(
        run.train_model, train, batch_size=cfg.batch_size, rng=rng,
        pad_token_id=run.data.pad_token_id, optimizer=run.optimizer, scheduler=run.scheduler,
        loss_fn=loss_fn, device=run.device, precision=run.precision, grad_clip=cfg.grad_clip,
        scaler=run.scaler, progress=progress, make_batch=with_teacher(
            train_noise.batch_maker(cfg, run.data, epoch), train, run.data.pad_token_id, run.teacher),
        after_step=average.after_step if average is not None else None,
        batches=batches, loss_weights=weights)
    if weights is not None:
        stats = dataclasses.replace(stats, loss=data_parallel.global_mean(stats.loss, stats.samples, run.device))
    if average is not None:
        average.after_epoch(epoch)  # SWA's (refused in round mode); EMA's is a no-op
    return stats, average.weights() if average is not None else None


def _epoch_order(run: _Trial, epoch: int) -> list[np.ndarray]:
    """Epoch ``epoch``'s batches in the order epoch mode trains them."""
    rng = np.random.default_rng([run.cfg.seed, epoch])
    return epoch_batches(run.data.splits["train"], run.cfg.batch_size, rng=rng)


def _train_one_round(run: _Trial, round_number: int, loss_fn: Callable,
                     progress: Optional[Callable[[int], None]]):
    """Round ``round_number``'s optimizer steps (``RoundPlan.batches``: across epoch boundaries,
    a resumed round from the batch its checkpoint stopped at); its stats, averaged weights and
    where it ended (``RoundPlan.progress``)."""
    draw = functools.partial(_epoch_order, run)
    stats, averaged = _train_one_epoch(run, round_number, loss_fn, progress,
                                       batches=run.rounds.batches(round_number, draw))
    return stats, averaged, run.rounds.progress(round_number, len(run.data.splits["train"]), draw)


def _score_epoch(run: _Trial, epoch: int, stats, averaged: Optional[dict], costs: dict,
                 noisy_val: Optional[EncodedSplit], eval_kwargs: dict) -> dict:
    """The epoch's report: its validation (and perturbed validation) scores, the best epoch so far
    (updated here), timings, memory, serving costs and, after the last epoch with ``quantize``,
    the int8 model's scores."""
    cfg, model, best = run.cfg, run.model, run.best
    result = _evaluate_weights(model, averaged, run.data.splits["validation"], **eval_kwargs)
    metrics = {"epoch": epoch, "train_loss": stats.loss, **result.as_metrics("val"),
               "lr": top_lr(run.optimizer), "samples_per_s": stats.samples_per_s,
               "epoch_seconds": stats.seconds, "peak_memory_mb": run.memory.mb(), **costs}
    if noisy_val is not None:
        metrics["val_accuracy_perturbed"] = _evaluate_weights(model, averaged, noisy_val,
                                                              **eval_kwargs).accuracy
    best.update(epoch, metrics, averaged if averaged is not None else model.state_dict())
    metrics.update(best.as_metrics())
    if epoch == run.last and cfg.quantize:
        metrics.update(int8_scores(model, best.weights, run.data, cfg.batch_size, noisy_val))
    return metrics


def _checkpoint_writer(run: _Trial, epoch: int) -> Callable[[str], None]:
    """Writes ``epoch``'s checkpoint: resumable state before the last epoch, after it the
    handed-over model alone. In round mode ``epoch`` is the round, and ``extra["position"]``
    says where it ended (``_Rounds.where``: global step, epoch, batches of that epoch trained)."""
    cfg, best, average = run.cfg, run.best, run.average

    def write(directory: str) -> None:
        extra = {"best": best.state(),
                 "average": average.state_dict() if average is not None else None}
        if run.rounds is not None:
            extra["position"] = run.rounds.where(run.rounds.span(epoch)[1])
        if epoch < run.last:
            save_checkpoint(directory, model=run.model, optimizer=run.optimizer, scheduler=run.scheduler,
                            scaler=run.scaler, epoch=epoch, config=cfg.to_dict(),
                            label_map=run.data.label_map.to_dict(), extra=extra,
                            best_model=best.weights)
        else:  # nothing resumes after the last epoch: the handed-over model alone
            save_checkpoint(directory, model=best.weights, optimizer=None,
                            scheduler=None, scaler=None, epoch=epoch, config=cfg.to_dict(),
                            label_map=run.data.label_map.to_dict(), extra=extra)
    return write


def fit(cfg: FinetuneConfig, data: TokenizedData, *, device: torch.device, report: Reporter,
        resume_dir: Optional[str] = None,
        progress: Optional[Callable[[int], None]] = None,
        teacher: Optional[TeacherTargets] = None) -> TextClassifier:
    """Fine-tune for ``cfg.last_epoch`` epochs of a ``cfg.epochs``-epoch schedule, calling
    ``report`` after each one, and return the model of the best validation epoch.

    Each epoch is evaluated with the averaged weights when EMA or SWA is on (once SWA has
    averaged anything). Reports carry that epoch's ``val_*`` (with ``cfg.perturb_eval`` also
    ``val_accuracy_perturbed``, see ``perturbed_validation``), the best epoch so far
    (``best_epoch``, ``best_val_accuracy``, ...), the epoch's training time (``epoch_seconds``)
    the peak training memory so far (``peak_memory_mb``, ``trainables.deploy.PeakMemory``) and
    what the model costs to serve (``deployment_costs``, measured once before the first epoch);
    with ``quantize`` the last epoch adds the int8 model's scores (``int8_scores``).
    With ``resume_dir`` the model, optimizer, scheduler, averaging, best-epoch and RNG states come
    from that checkpoint and training continues with the epoch after the one it saved; the
    config's learning rates and weight decay apply from there on (``reapply_hyperparameters``).

    With ``cfg.eval_every`` (round mode, ``trainables.rounds``) every "epoch" above is a round of
    that many optimizer steps: ``epoch`` in the reports, ``best_epoch``, the checkpoints and
    ``stop_epoch`` count rounds, and each report adds ``step``, ``epoch_progress``,
    ``examples_seen`` and ``rounds`` (the round the run stops after). A resumed round goes on at
    the batch where its checkpoint stopped, inside an epoch if that is where it was.

    With ``cfg.distill_teacher`` the student trains on ``teacher``'s probabilities of the train
    split (``trainables.distill.fit`` computes them, the family's registered ``fit``) and every
    report adds ``distill_teacher_seconds``, the time that took.
    """
    if bool(cfg.distill_teacher) != (teacher is not None):
        raise ConfigError(f"`distill_teacher` is {cfg.distill_teacher!r} but fit was given "
                          f"{'no' if teacher is None else 'a'} teacher: train through "
                          f"trainables.distill.fit, which computes the teacher's probabilities")
    run = _build(cfg, data, device)
    run.teacher = teacher
    if resume_dir is not None:
        _resume(run, resume_dir)
    loss_fn = finetune_loss(cfg)
    costs = deployment_costs(cfg, run.model, data) if run.first_epoch <= run.last else {}
    costs.update(teacher.metrics() if teacher is not None else {})
    noisy_val = perturbed_validation(cfg.perturb_eval, data) if cfg.perturb_eval else None
    eval_kwargs = dict(batch_size=max(64, cfg.batch_size), pad_token_id=data.pad_token_id,
                       num_labels=data.num_labels, device=device, precision=run.precision)
    for epoch in range(run.first_epoch, run.last + 1):
        maybe_inject_failure(epoch)
        where = {}
        if run.rounds is not None:
            stats, averaged, where = _train_one_round(run, epoch, loss_fn, progress)
        else:
            stats, averaged = _train_one_epoch(run, epoch, loss_fn, progress)
        metrics = _score_epoch(run, epoch, stats, averaged, costs, noisy_val, eval_kwargs)
        report({**metrics, **where}, _checkpoint_writer(run, epoch))
    maybe_inject_failure(run.last + 1)
    if run.best.weights is not None:
        run.model.load_state_dict(run.best.weights)
    return run.model
