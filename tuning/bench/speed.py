"""Speed parts of the benchmark: (a) the trainer's throughput against a plain PyTorch loop on the
same batches, and (b) a sweep's wall time against the same trials run directly."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from trainables.data import DataConfig, EncodedSplit, TokenizedData, bucketed_batches, collate
from trainables.finetune import build_classifier, build_optimization, classification_loss, fit
from trainables.hparams import FinetuneConfig
from trainables.loops import train_epoch
from trainables.runtime import resolve_precision
from tuning.bench.common import BenchReport, load_data, say, subset_folder
from tuning.config import SweepConfig
from tuning.sweep.runner import run_sweep
from tuning.tracking.best import top_k

WARMUP = 2  # untimed batches before each throughput measurement
TRAINER_FP32 = "tunebert loop, fp32 (same batches as the reference)"
TRAINER_DEFAULT = "tunebert loop, default (precision auto = {})"
FROZEN = "tunebert default + frozen word embeddings"
REFERENCE = "plain loop, bucketed batches, fused AdamW, fp32 (reference)"



def _plain_loop(model, batches, optimizer, device) -> float:
    """The reference: a minimal PyTorch loop (forward, cross-entropy, backward, step)."""
    import torch
    import torch.nn.functional as F

    model.train()
    start, seen = time.perf_counter(), 0
    for step, (ids, mask, labels) in enumerate(batches[:WARMUP] + batches):
        if step == WARMUP:  # the first batches warm caches up and are not timed
            start, seen = time.perf_counter(), 0
        ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
        loss = F.cross_entropy(model(ids, mask), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seen += len(labels)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start)


def _fixed_padding(split, indices, pad_id, width):
    import torch

    ids, mask, labels = collate(split, indices, pad_id)
    extra = width - ids.shape[1]
    if extra > 0:
        ids = torch.nn.functional.pad(ids, (0, extra), value=pad_id)
        mask = torch.nn.functional.pad(mask, (0, extra), value=0)
    return ids, mask, labels


@dataclass
class _Setup:
    """What every throughput variant trains on: the same sampled examples, model and device."""

    data: TokenizedData
    part: EncodedSplit  # the sampled train examples every variant trains on
    model_name: str
    device: Any  # torch.device
    batches: int
    batch_size: int


def _sample(train: EncodedSplit, n: int) -> EncodedSplit:
    # a seeded random sample: data files are often sorted by label, and lengths differ by label
    keep = np.random.default_rng(0).permutation(len(train))[:n]
    return type(train)([train.input_ids[i] for i in keep], train.labels[keep])


def _fresh(setup: _Setup, **changes):
    """A new model with the trainer's optimizer and schedule: (cfg, model, optimizer, scheduler)."""
    cfg = FinetuneConfig(model=setup.model_name, batch_size=setup.batch_size, **changes)
    model = build_classifier(cfg, setup.data.num_labels).to(setup.device)
    optimizer, scheduler = build_optimization(model, cfg, total_steps=10 * setup.batches)
    return cfg, model, optimizer, scheduler


def _trainer_speed(setup: _Setup, **changes) -> float:
    """Samples/s of tunebert's own epoch loop (``train_epoch``) with the config ``changes``
    (``compile=True``: the model through ``torch.compile``), after untimed warm-up batches."""
    import torch

    cfg, model, optimizer, scheduler = _fresh(setup, **{k: v for k, v in changes.items() if k != "compile"})
    if changes.get("compile"):
        model = torch.compile(model)
    part, batch_size, pad = setup.part, setup.batch_size, setup.data.pad_token_id
    common = dict(batch_size=batch_size, pad_token_id=pad, optimizer=optimizer, scheduler=scheduler,
                  loss_fn=classification_loss(0.0), device=setup.device, precision=cfg.precision,
                  grad_clip=cfg.grad_clip)
    warm = type(part)(part.input_ids[:WARMUP * batch_size], part.labels[:WARMUP * batch_size])
    train_epoch(model, warm, rng=np.random.default_rng(0), **common)  # untimed (compiles, if asked)
    stats = train_epoch(model, part, batch_size=batch_size, rng=np.random.default_rng(1),
                        pad_token_id=pad, optimizer=optimizer, scheduler=scheduler,
                        loss_fn=classification_loss(0.0), device=setup.device, precision=cfg.precision,
                        grad_clip=cfg.grad_clip)
    return stats.samples_per_s


def _plain_batches(part: EncodedSplit, order: str, batch_size: int, pad: int, rng) -> list:
    """The reference loop's batches: ``bucketed`` (the trainer's batches), ``random`` (dynamic
    padding) or else fixed width 64, as a tokenizer with padding="max_length" would give."""
    if order == "bucketed":
        return [collate(part, b, pad) for b in bucketed_batches(part.lengths(), batch_size, rng=rng)]
    perm = rng.permutation(len(part))
    if order == "random":
        return [collate(part, perm[i:i + batch_size], pad) for i in range(0, len(part), batch_size)]
    return [_fixed_padding(part, perm[i:i + batch_size], pad, 64) for i in range(0, len(part), batch_size)]


def _plain_speed(setup: _Setup, order: str, fused: bool = True) -> float:
    """Samples/s of the reference loop on batches made as ``order`` says."""
    import torch

    cfg, model, optimizer, _ = _fresh(setup)
    # fused AdamW, as the trainer uses, so the ratio isolates the loop itself
    plain_opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, fused=fused)
    made = _plain_batches(setup.part, order, setup.batch_size, setup.data.pad_token_id,
                          np.random.default_rng(1))
    return _plain_loop(model, made, plain_opt, setup.device)


def _variants(setup: _Setup, auto: str) -> dict[str, Callable[[], float]]:
    """Every variant measured, by its row in the report (``REFERENCE`` first)."""
    return {
        REFERENCE: lambda: _plain_speed(setup, "bucketed"),
        "plain loop, same batches, torch's default AdamW (not fused)": lambda: _plain_speed(setup, "bucketed", fused=False),
        "plain loop, random batches, dynamic padding": lambda: _plain_speed(setup, "random"),
        "plain loop, random batches, padded to 64": lambda: _plain_speed(setup, "fixed64"),
        TRAINER_FP32: lambda: _trainer_speed(setup, precision="fp32"),
        TRAINER_DEFAULT.format(auto): lambda: _trainer_speed(setup),
        FROZEN: lambda: _trainer_speed(setup, freeze_embeddings=True),
        "tunebert default + torch.compile": lambda: _trainer_speed(setup, compile=True),
    }


def _measure(variants: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Each variant's samples/s in every round, the variants interleaved within a round (NaN
    where a variant fails, e.g. torch.compile without a compiler toolchain)."""
    results: dict[str, list[float]] = {k: [] for k in variants}
    for round_ in range(repeats):
        for name, run in variants.items():
            try:
                results[name].append(run())
            except Exception as exc:  # e.g. torch.compile without a compiler toolchain
                say(f"  {name}: failed ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})")
                results[name].append(float("nan"))
            say(f"  round {round_ + 1}: {name}: {results[name][-1]:.1f} samples/s")
    return results


def _report_throughput(report: BenchReport, results: dict[str, list[float]], *, auto: str,
                       batch_size: int, out: Path) -> None:
    """Part a. of the report: the table of medians and ratios, the headline numbers, the figure."""
    default_name = TRAINER_DEFAULT.format(auto) if auto != "fp32" else TRAINER_FP32
    ref = statistics.median(results[REFERENCE])
    report.add("a. Trainer throughput", "| variant | samples/s (median) | ratio to plain loop |")
    report.add("a. Trainer throughput", "|---|---:|---:|")
    for name, values in results.items():
        med = statistics.median(values)
        report.add("a. Trainer throughput", f"| {name} | {med:.1f} | {med / ref:.3f} |")
    ours_fp32 = statistics.median(results[TRAINER_FP32])
    ours_default = statistics.median(results[default_name])
    frozen = statistics.median(results[FROZEN])
    report.numbers["throughput_ratio"] = ours_fp32 / ref
    report.numbers["epoch_seconds_massive_train"] = 11514 / ours_default
    report.numbers["epoch_seconds_massive_train_frozen_embeddings"] = 11514 / frozen
    report.add("a. Trainer throughput", "")
    report.add("a. Trainer throughput",
               f"Trainer / plain loop, both fp32 on the same batches: **{ours_fp32 / ref:.3f}** "
               f"(target ≥ 0.95). One epoch of MASSIVE train (11,514 examples) at batch {batch_size} "
               f"with the default settings (precision auto = {auto}): **{11514 / ours_default:.0f} s** "
               f"(target ≤ 60 s); with frozen word embeddings as well: {11514 / frozen:.0f} s.")
    _bar(out / "throughput.png", {k: statistics.median(v) for k, v in results.items()},
         "samples/s (median over rounds)", "Training throughput, same model and device")
    report.figures.append(str(out / "throughput.png"))


def throughput(data: TokenizedData, model_name: str, report: BenchReport, *, batches: int,
               batch_size: int, repeats: int, out: Path) -> None:
    """Samples/s of each variant on the same number of batches, interleaved over ``repeats``."""
    import torch

    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    setup = _Setup(data, _sample(data.splits["train"], batches * batch_size), model_name, device,
                   batches, batch_size)
    auto = resolve_precision(device, "auto")
    variants = _variants(setup, auto)
    say(f"throughput: {len(variants)} variants x {repeats} rounds of {batches} batches of {batch_size} on {device}")
    results = _measure(variants, repeats)
    _report_throughput(report, results, auto=auto, batch_size=batch_size, out=out)


def _bar(path: Path, values: dict[str, float], xlabel: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 0.5 * len(values) + 1.5))
    names = list(values)[::-1]
    ax.barh(names, [values[n] for n in names], color="#4477aa")
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- b. sweep overhead


def overhead(data_cfg: DataConfig, model: str, report: BenchReport, *, trials: int, subset: int,
             storage: Path, out: Path) -> None:
    """A sweep of N one-epoch trials (one at a time) against the same configs run directly."""
    import torch


    name = f"bench-overhead-{int(time.time())}"
    space = storage / "overhead-space.yaml"
    space.parent.mkdir(parents=True, exist_ok=True)
    space.write_text("optimizer: adamw\nhead: linear\n")
    sub_dir = subset_folder(data_cfg, subset, storage / "overhead-data")
    cfg = SweepConfig(name=name, data=DataConfig(str(sub_dir), data_cfg.text_column, data_cfg.label_column),
                      model=model, max_length=64, epochs=1, num_trials=trials, storage=str(storage),
                      scheduler="none", max_concurrent=1, cpus_per_trial=float(torch.get_num_threads()),
                      space_file=str(space))
    say(f"overhead: sweep of {trials} one-epoch trials on {subset} examples")
    start = time.perf_counter()
    run_sweep(cfg)
    sweep_wall = time.perf_counter() - start
    configs = [r.config for r in top_k(name, trials, storage=str(storage))]
    data = load_data(cfg.data, model, 64, None)
    say("overhead: the same configs run directly")
    direct = 0.0
    for config in configs:
        t = time.perf_counter()
        fit(FinetuneConfig.from_dict(config), data.without_test(), device=torch.device("cpu"),
            report=lambda m, w: None)
        direct += time.perf_counter() - t
    ratio = sweep_wall / direct
    report.numbers["sweep_overhead"] = ratio - 1
    report.add("b. Sweep overhead", f"| | seconds |\n|---|---:|\n| sweep of {trials} trials (wall, incl. "
               f"validation, Ray start, MLflow, checkpoints) | {sweep_wall:.1f} |\n| the same {len(configs)} "
               f"trials run directly (sum) | {direct:.1f} |")
    report.add("b. Sweep overhead", f"\nOverhead: **{100 * (ratio - 1):.1f} %** (target ≤ 5 %).")


