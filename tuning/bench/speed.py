"""Speed parts of the benchmark: (a) the trainer's throughput against a plain PyTorch loop on the
same batches, and (b) a sweep's wall time against the same trials run directly."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

from trainables.data import DataConfig, TokenizedData, bucketed_batches, collate
from trainables.hparams import FinetuneConfig
from tuning.bench.common import BenchReport, load_data, say, subset_folder
from tuning.config import SweepConfig

WARMUP = 2  # untimed batches before each throughput measurement
TRAINER_FP32 = "tunebert loop, fp32 (same batches as the reference)"
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


def throughput(data: TokenizedData, model_name: str, report: BenchReport, *, batches: int,
               batch_size: int, repeats: int, out: Path) -> None:
    """Samples/s of each variant on the same number of batches, interleaved over ``repeats``."""
    import torch

    # local: keeps torch off --help
    from trainables.finetune import build_classifier, build_optimization, classification_loss
    from trainables.loops import train_epoch

    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    train = data.splits["train"]
    n = batches * batch_size
    # a seeded random sample: data files are often sorted by label, and lengths differ by label
    keep = np.random.default_rng(0).permutation(len(train))[:n]
    part = type(train)([train.input_ids[i] for i in keep], train.labels[keep])
    pad = data.pad_token_id
    from trainables.runtime import resolve_precision  # local: keeps torch off --help

    auto = resolve_precision(device, "auto")

    def fresh(**changes):
        cfg = FinetuneConfig(model=model_name, batch_size=batch_size, **changes)
        model = build_classifier(cfg, data.num_labels).to(device)
        optimizer, scheduler = build_optimization(model, cfg, total_steps=10 * batches)
        return cfg, model, optimizer, scheduler

    def ours(**changes):
        cfg, model, optimizer, scheduler = fresh(**{k: v for k, v in changes.items() if k != "compile"})
        if changes.get("compile"):
            model = torch.compile(model)
        common = dict(batch_size=batch_size, pad_token_id=pad, optimizer=optimizer, scheduler=scheduler,
                      loss_fn=classification_loss(0.0), device=device, precision=cfg.precision,
                      grad_clip=cfg.grad_clip)
        warm = type(part)(part.input_ids[:WARMUP * batch_size], part.labels[:WARMUP * batch_size])
        train_epoch(model, warm, rng=np.random.default_rng(0), **common)  # untimed (compiles, if asked)
        stats = train_epoch(model, part, batch_size=batch_size, rng=np.random.default_rng(1),
                            pad_token_id=pad, optimizer=optimizer, scheduler=scheduler,
                            loss_fn=classification_loss(0.0), device=device, precision=cfg.precision,
                            grad_clip=cfg.grad_clip)
        return stats.samples_per_s

    def plain(order: str, fused: bool = True):
        cfg, model, optimizer, _ = fresh()
        # fused AdamW, as the trainer uses, so the ratio isolates the loop itself
        plain_opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, fused=fused)
        rng = np.random.default_rng(1)
        if order == "bucketed":
            idx = bucketed_batches(part.lengths(), batch_size, rng=rng)
            made = [collate(part, b, pad) for b in idx]
        elif order == "random":
            perm = rng.permutation(len(part))
            made = [collate(part, perm[i:i + batch_size], pad) for i in range(0, len(part), batch_size)]
        else:  # fixed width 64, as a tokenizer with padding="max_length" would give
            perm = rng.permutation(len(part))
            made = [_fixed_padding(part, perm[i:i + batch_size], pad, 64) for i in range(0, len(part), batch_size)]
        return _plain_loop(model, made, plain_opt, device)

    variants = {
        REFERENCE: lambda: plain("bucketed"),
        "plain loop, same batches, torch's default AdamW (not fused)": lambda: plain("bucketed", fused=False),
        "plain loop, random batches, dynamic padding": lambda: plain("random"),
        "plain loop, random batches, padded to 64": lambda: plain("fixed64"),
        TRAINER_FP32: lambda: ours(precision="fp32"),
        f"tunebert loop, default (precision auto = {auto})": lambda: ours(),
        "tunebert default + frozen word embeddings": lambda: ours(freeze_embeddings=True),
        "tunebert default + torch.compile": lambda: ours(compile=True),
    }
    if auto != "fp32":
        default_name = f"tunebert loop, default (precision auto = {auto})"
    else:
        default_name = TRAINER_FP32
    results: dict[str, list[float]] = {k: [] for k in variants}
    say(f"throughput: {len(variants)} variants x {repeats} rounds of {batches} batches of {batch_size} on {device}")
    for round_ in range(repeats):
        for name, run in variants.items():
            try:
                results[name].append(run())
            except Exception as exc:  # e.g. torch.compile without a compiler toolchain
                say(f"  {name}: failed ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})")
                results[name].append(float("nan"))
            say(f"  round {round_ + 1}: {name}: {results[name][-1]:.1f} samples/s")
    ref = statistics.median(results[REFERENCE])
    report.add("a. Trainer throughput", "| variant | samples/s (median) | ratio to plain loop |")
    report.add("a. Trainer throughput", "|---|---:|---:|")
    for name, values in results.items():
        med = statistics.median(values)
        report.add("a. Trainer throughput", f"| {name} | {med:.1f} | {med / ref:.3f} |")
    ours_fp32 = statistics.median(results[TRAINER_FP32])
    ours_default = statistics.median(results[default_name])
    frozen = statistics.median(results["tunebert default + frozen word embeddings"])
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

    # local: keeps torch, mlflow and ray off --help
    from trainables.finetune import fit
    from tuning.tracking.best import top_k
    from tuning.sweep.runner import run_sweep

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


