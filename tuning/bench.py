"""`tunebert bench`: speed and search quality measured side by side in one run, on one machine.

Parts (each writes rows of the markdown table and a PNG):
- ``throughput``: samples/s of the trainable's training loop against a minimal plain PyTorch loop
  on the same model, batches and device, and the speed-up of each data-path option;
- ``overhead``: wall time of a sweep of N short trials against the same trials run directly;
- ``search``: ASHA + TPE against random search without early stopping at the same time budget
  (best validation accuracy over elapsed time, and each one's chosen config on test);
- ``table``: the study's presets trained with several seeds, mean ± std test accuracy, beside the
  study's numbers (bert-base-uncased), and the best config of the ``search`` part under them.

Everything is measured as ratios within one run; absolute numbers depend on the machine and are
reported for context only. ``--train-subset`` and ``--epochs`` scale the expensive parts down
(the table says when they did).

The jobs of ``table``, ``ablation`` and the hand baseline of ``compare`` are resumable
(``tuning.jobs.run_bench_jobs``): the same command run again skips the jobs MLflow holds as
finished, continues the others from their last epoch's checkpoint in their own runs, says
the progress and the time left after every job, then writes its results from what MLflow holds.
"""

from __future__ import annotations

import logging
import argparse
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from trainables.data import DataConfig, TokenizedData, bucketed_batches, collate, load_raw_splits, tokenize_splits
from trainables.errors import UserError

log = logging.getLogger(__name__)

PARTS = ("throughput", "overhead", "search", "table", "ablation", "compare")
WARMUP = 2  # untimed batches before each throughput measurement
TRAINER_FP32 = "tunebert loop, fp32 (same batches as the reference)"
REFERENCE = "plain loop, bucketed batches, fused AdamW, fp32 (reference)"


def say(message: str) -> None:
    log.info(f"bench: {message}")


@dataclass
class BenchReport:
    sections: dict[str, list[str]] = field(default_factory=dict)
    figures: list[str] = field(default_factory=list)
    numbers: dict[str, float] = field(default_factory=dict)

    def add(self, section: str, line: str) -> None:
        self.sections.setdefault(section, []).append(line)

    def markdown(self, command: str) -> str:
        out = ["# tunebert benchmark", "", f"Command: `{command}`", "",
               f"Machine: {_machine()}", ""]
        for section, lines in self.sections.items():
            out += [f"## {section}", "", *lines, ""]
        for fig in self.figures:
            out += [f"![{Path(fig).stem}]({Path(fig).name})", ""]
        return "\n".join(out)


def _machine() -> str:
    import os
    import platform

    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {gpu}, torch {torch.__version__}"


# --------------------------------------------------------------------------- data


def load_data(data: DataConfig, model: str, max_length: int, subset: Optional[int]) -> TokenizedData:
    from trainables.models import load_tokenizer

    raw = load_raw_splits(data)
    tokenized = tokenize_splits(raw, load_tokenizer(model), model=model, max_length=max_length)
    if subset:
        train = tokenized.splits["train"]
        keep = np.random.default_rng(0).permutation(len(train))[:subset]
        tokenized.splits["train"] = type(train)([train.input_ids[i] for i in keep], train.labels[keep])
    return tokenized


# --------------------------------------------------------------------------- a. throughput


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

    from trainables.finetune import build_classifier, build_optimization, classification_loss
    from trainables.hparams import FinetuneConfig
    from trainables.loops import train_epoch

    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    train = data.splits["train"]
    n = batches * batch_size
    # a seeded random sample: data files are often sorted by label, and lengths differ by label
    keep = np.random.default_rng(0).permutation(len(train))[:n]
    part = type(train)([train.input_ids[i] for i in keep], train.labels[keep])
    pad = data.pad_token_id
    from trainables.runtime import resolve_precision

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

    from trainables.finetune import fit
    from trainables.hparams import FinetuneConfig
    from tuning.best import top_k
    from tuning.config import SweepConfig
    from tuning.runner import run_sweep

    name = f"bench-overhead-{int(time.time())}"
    space = storage / "overhead-space.yaml"
    space.parent.mkdir(parents=True, exist_ok=True)
    space.write_text("optimizer: adamw\nhead: linear\n")
    sub_dir = _subset_folder(data_cfg, subset, storage / "overhead-data")
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


def _subset_folder(data_cfg: DataConfig, subset: int, folder: Path) -> Path:
    """A folder with ``subset`` training rows that cover every label (validation and test
    unchanged): shuffled, then taken round-robin over labels."""
    raw = load_raw_splits(data_cfg)
    folder.mkdir(parents=True, exist_ok=True)
    labels = raw["train"].labels
    order = np.random.default_rng(0).permutation(len(labels))
    seen: dict = {}
    rank = np.empty(len(labels), dtype=np.int64)
    for i in order:
        rank[i] = seen.get(labels[i], 0)
        seen[labels[i]] = rank[i] + 1
    keep = sorted(order, key=lambda i: rank[i])[:subset]
    for split, part in raw.items():
        idx = keep if split == "train" else range(len(part.texts))
        rows = ({"text": part.texts[i], "label": part.labels[i]} for i in idx)
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


# --------------------------------------------------------------------------- c. search efficiency


def search(data_cfg: DataConfig, model: str, report: BenchReport, *, budget_s: float, epochs: int,
           storage: Path, out: Path) -> dict[str, Any]:
    """ASHA + TPE vs random search (no early stopping), same wall-clock budget each."""
    from tuning.best import best_run
    from tuning.config import SweepConfig
    from tuning.runner import run_sweep
    from tuning import tracking

    curves, chosen = {}, {}
    stamp = int(time.time())
    report.add("c. Search efficiency",
               f"Each strategy had {budget_s / 60:.0f} min of wall time on this machine, trials of up to "
               f"{epochs} epochs. Trials are chosen on validation only; the chosen trial's own model "
               f"(its last checkpoint) is then evaluated once on test.\n")
    report.add("c. Search efficiency", "| strategy | trials | trial-epochs | minutes | best val_accuracy "
               "| chosen trial on test |\n|---|---:|---:|---:|---:|---:|")
    for label, searcher, scheduler in (("ASHA + TPE", "tpe", "asha"), ("random, no early stopping", "random", "none")):
        name = f"bench-search-{searcher}-{stamp}"
        cfg = SweepConfig(name=name, data=data_cfg, model=model, max_length=64, epochs=epochs,
                          num_trials=1000, time_budget_s=budget_s, storage=str(storage),
                          searcher=searcher, scheduler=scheduler, seed=0)
        say(f"search: {label} for {budget_s / 60:.0f} min")
        outcome = run_sweep(cfg)
        runs = tracking.trial_runs(cfg.resolved_tracking_uri(), name)
        points = []
        for run in runs:
            if run.info.status != "FINISHED" or "val_accuracy" not in run.data.metrics:
                continue
            points.append(((run.info.end_time - outcome_start(runs)) / 1000.0, run.data.metrics["val_accuracy"]))
        curves[label] = sorted(points)
        if not points:
            report.add("c. Search efficiency", f"| {label} | {len(runs)} | 0 | {outcome.wall_s / 60:.1f} "
                                               f"| no trial finished | — |")
            continue
        best = best_run(name, storage=str(storage))
        chosen[label] = best.config
        test = _chosen_on_test(cfg, data_cfg, best.config)
        # the epoch is each metric's step, not a metric of its own
        epochs_run = sum(len(tracking.metric_history(cfg.resolved_tracking_uri(), r.info.run_id, "val_accuracy"))
                         for r in runs)
        report.numbers[f"search_{searcher}_best_val"] = best.metrics["val_accuracy"]
        report.numbers[f"search_{searcher}_test"] = test
        report.add("c. Search efficiency",
                   f"| {label} | {len(runs)} | {epochs_run} | {outcome.wall_s / 60:.1f} | "
                   f"{best.metrics['val_accuracy']:.4f} | {100 * test:.2f} % |")
    _curves(out / "search_efficiency.png", curves)
    report.figures.append(str(out / "search_efficiency.png"))
    return chosen


def _chosen_on_test(cfg, data_cfg: DataConfig, config: dict) -> float:
    """Test accuracy of the sweep's best trial's own model (the checkpoint the sweep logged)."""
    import tempfile

    from tuning import tracking
    from tuning.selection import evaluate_on_test

    uri = cfg.resolved_tracking_uri()
    parent = tracking.sweep_run(uri, cfg.name)
    with tempfile.TemporaryDirectory() as tmp:
        folder = tracking.download_artifacts(uri, parent.info.run_id, "best_checkpoint", tmp)
        return evaluate_on_test([folder], data_cfg, config)[0]["test_accuracy"]


def outcome_start(runs) -> int:
    return min(r.info.start_time for r in runs)


def _pm(values: list[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.2f} %"
    return f"{100 * statistics.mean(values):.2f} ± {100 * statistics.stdev(values):.2f} %"


def _curves(path: Path, curves: dict[str, list[tuple[float, float]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for label, points in curves.items():
        if not points:
            continue
        t = [p[0] / 60 for p in points]
        best = np.maximum.accumulate([p[1] for p in points])
        ax.step(t, best, where="post", label=label)
        ax.scatter(t, [p[1] for p in points], s=12, alpha=0.5)
    ax.set_xlabel("elapsed minutes")
    ax.set_ylabel("best validation accuracy so far")
    ax.set_title("Search efficiency at the same budget")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- d. the study's table


def _capped(config: dict, epochs: int) -> dict:
    """``config`` with the stages that train the encoder capped at ``epochs``. The classifier
    epochs of a two-stage contrastive run are kept: they train a head on cached features of the
    frozen encoder and cost next to nothing."""
    config = dict(config)
    if config.get("trainable") == "contrastive":
        config["contrastive_epochs"] = min(config.get("contrastive_epochs", epochs), epochs)
        if config.get("mode", "two-stage") != "two-stage":
            config["epochs"] = min(config.get("epochs", epochs), epochs)
    else:
        config["epochs"] = min(config.get("epochs", epochs), epochs)
    return config


TABLE_EXPERIMENT = "bench-study-table"
TUNED = "tuned best config (search part)"


def table_job_name(row: str, seed: int) -> str:
    """``baseline-seed0``: what ``--jobs`` matches (``tuned-seed0`` for the search's config)."""
    return f"{'tuned' if row == TUNED else row}-seed{seed}"


def table_job_names(presets: tuple[str, ...], seeds: int, tuned: bool) -> list[str]:
    rows = [*presets, *([TUNED] if tuned else [])]
    return [table_job_name(row, seed) for row in rows for seed in range(seeds)]


def ours_cell(tests: list[float], seeds: int) -> str:
    """Mean ± std over the seeds; a row short of seeds says so rather than giving a mean that
    is not comparable with the complete rows."""
    if len(tests) == seeds:
        return _pm(tests)
    found = f": {', '.join(f'{100 * t:.2f}' for t in tests)} %" if tests else ""
    return f"— ({len(tests)} of {seeds} seeds{found})"


def study_table(data_cfg: DataConfig, model: str, report: BenchReport, *, seeds: int,
                epochs: Optional[int], storage: Path, tuned: Optional[dict], out: Path,
                presets: tuple[str, ...], workers: int = 1, pick: Optional[str] = None) -> None:
    """Each preset (and the search's chosen config) over ``seeds`` seeds; ``workers`` runs at a
    time (on a CPU, two one-thread runs get through more than one two-thread run).

    Each (configuration, seed) is one resumable job (``tuning.jobs.run_bench_jobs``); ``pick``
    (``--jobs``) trains only the jobs it matches. The table is then written from the runs MLflow
    holds, so jobs finished by earlier invocations count, and a row short of seeds is marked."""
    from search_spaces.presets import STUDY_TEST_ACCURACY, get_preset
    from tuning.config import resolve_tracking_uri
    from tuning.jobs import bench_job, pick_jobs, run_bench_jobs

    uri = resolve_tracking_uri(None, storage)
    # the presets name no model: each trains --model (the study's own was bert-base-uncased)
    configs = [(name, {**get_preset(name), "model": model}) for name in presets]
    if tuned:
        configs.append((TUNED, dict(tuned)))
    # the tuned config keeps the length it was chosen at; the presets are capped when asked
    jobs = [(name, bench_job(table_job_name(name, seed),
                             {**(_capped(config, epochs) if epochs and name in presets else config), "seed": seed},
                             data_cfg, uri=uri, experiment=TABLE_EXPERIMENT, storage=storage))
            for name, config in configs for seed in range(seeds)]
    names = [job.name for _, job in jobs]
    records = run_bench_jobs([job for _, job in jobs], uri=uri, experiment=TABLE_EXPERIMENT,
                             workers=workers, say=lambda message: say(f"table: {message}"),
                             selected=pick_jobs(names, pick) if pick else None)
    rows = []
    for name, _ in configs:
        tests = [records[job.name]["metrics"]["test_accuracy"] for row, job in jobs
                 if row == name and records[job.name] is not None]
        rows.append((name, tests, STUDY_TEST_ACCURACY.get(name)))
        if len(tests) == seeds:
            report.numbers[f"table_{name.split(' ')[0]}_test_mean"] = statistics.mean(tests)
    scaled = (f" (presets scaled down: at most {epochs} epochs of encoder training per run; the "
              f"classifier epochs on a frozen encoder keep the preset's number; the tuned config "
              f"trains as long as in its sweep)") if epochs else ""
    report.add("d. The study's table", f"Test accuracy on MASSIVE en-US, {model}, {seeds} seeds{scaled}; "
               f"study: bert-base-uncased, one run each.\n")
    report.add("d. The study's table", "| configuration | ours (mean ± std) | study |\n|---|---:|---:|")
    for name, tests, study in rows:
        report.add("d. The study's table", f"| {name} | {ours_cell(tests, seeds)} | {f'{study} %' if study else '—'} |")
    if any(len(tests) < seeds for _, tests, _ in rows):
        report.add("d. The study's table", "\nA row marked — lacks finished runs: `--jobs` left them "
                   "out. Run the command again without `--jobs` (finished jobs are not trained again).")
    _table_plot(out / "study_table.png", rows, model, seeds)
    report.figures.append(str(out / "study_table.png"))


def _table_plot(path: Path, rows, model: str, seeds: int) -> None:
    """Ours (mean ± std over seeds) beside the study's single runs, one group per configuration;
    a row short of seeds has no bar of ours and says how many it has."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    x = np.arange(len(rows))
    means = [100 * statistics.mean(t) if len(t) == seeds else np.nan for _, t, _ in rows]
    stds = [100 * statistics.stdev(t) if len(t) == seeds > 1 else 0.0 for _, t, _ in rows]
    ax.bar(x - 0.2, means, 0.4, yerr=stds, capsize=4, label=f"ours: {model}, mean ± std", color="#4477aa")
    study = [s if s else np.nan for _, _, s in rows]
    ax.bar(x + 0.2, study, 0.4, label="study: bert-base-uncased, one run", color="#cc6677")
    ax.set_xticks(x, [r[0].replace(" (search part)", "") + (f" ({len(r[1])} of {seeds} seeds)" if len(r[1]) < seeds
                                                           else "") for r in rows], rotation=20, ha="right")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("MASSIVE en-US test accuracy")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.28), ncol=2, frameon=False)  # clear of short bars
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- command


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--parts", default="throughput,overhead",
                   help=f"comma-separated parts to run: {', '.join(PARTS)} (default: throughput,overhead)")
    p.add_argument("--data", default="../shared/data/massive-en")
    p.add_argument("--text-column", default="text")
    p.add_argument("--label-column", default="label")
    p.add_argument("--model", default="minilm-l6")
    p.add_argument("--out", default="bench", help="folder for results.md and the PNGs")
    p.add_argument("--storage", default="tunebert-runs/bench", help="where the benchmark's sweeps go")
    p.add_argument("--batches", type=int, default=40, help="throughput: batches per measurement")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3, help="throughput: interleaved rounds")
    p.add_argument("--overhead-trials", type=int, default=4)
    p.add_argument("--overhead-subset", type=int, default=1024)
    p.add_argument("--search-budget", type=float, default=3600.0, help="search: seconds per strategy")
    p.add_argument("--search-epochs", type=int, default=3)
    p.add_argument("--seeds", type=int, default=3, help="table: seeds per configuration")
    p.add_argument("--table-epochs", type=int, default=None, help="table: cap epochs (scaled-down run; --smoke-test: 1 unless given)")
    p.add_argument("--table-workers", type=int, default=1,
                   help="table: runs at a time, each on its share of the CPU cores (default 1)")
    p.add_argument("--presets", default="baseline,llrd,warmup,llrd_warmup,supcon,simclr")
    p.add_argument("--jobs", default=None, metavar="PATTERN[,PATTERN]",
                   help="table: train only the jobs whose names match, e.g. 'baseline-seed0', "
                        "'llrd*', '*-seed1' (glob patterns); jobs finished earlier still count, "
                        "rows missing jobs are marked (default: all jobs)")
    p.add_argument("--tune-budget", type=float, default=7200.0,
                   help="compare: seconds of the `tunebert tune` pipeline (default 7200 = 2h)")
    p.add_argument("--ablation-epochs", type=int, default=None,
                   help="ablation: epochs per run (default: the hand config's 4)")
    p.add_argument("--ablation-workers", type=int, default=1,
                   help="ablation: runs at a time, each on its share of the CPU cores (default 1)")
    p.add_argument("--smoke-test", action="store_true",
                   help="tiny sizes everywhere (checks the wiring, numbers mean nothing)")


def run(args) -> int:
    import shlex
    import sys

    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise UserError(f"--parts: unknown part(s) {unknown}; choose from {list(PARTS)}")
    if args.table_workers < 1:
        raise UserError(f"--table-workers must be at least 1, but got {args.table_workers}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    storage = Path(args.storage).expanduser().resolve()
    data_cfg = DataConfig(args.data, args.text_column, args.label_column)
    if args.smoke_test:
        args.batches, args.repeats, args.overhead_trials, args.overhead_subset = 3, 1, 2, 64
        args.search_budget, args.search_epochs, args.seeds = 20, 1, 1
        args.table_epochs = args.table_epochs or 1
    presets = tuple(p.strip() for p in args.presets.split(",") if p.strip())
    if args.jobs is not None:
        if "table" not in parts:
            raise UserError(f"--jobs picks jobs of the table part, but --parts {args.parts!r} has no "
                            f"table; add it, or leave --jobs out")
        from tuning.jobs import pick_jobs

        pick_jobs(table_job_names(presets, args.seeds, tuned="search" in parts), args.jobs)
    if args.smoke_test:
        data_cfg = DataConfig(str(_subset_folder(data_cfg, 128, storage / "smoke-data")))
    report = BenchReport()
    command = "tunebert " + " ".join(shlex.quote(a) for a in getattr(args, "argv", sys.argv[1:]))
    if "throughput" in parts:
        data = load_data(data_cfg, args.model, 64, None)
        throughput(data, args.model, report, batches=args.batches, batch_size=args.batch_size,
                   repeats=args.repeats, out=out)
    if "overhead" in parts:
        overhead(data_cfg, args.model, report, trials=args.overhead_trials, subset=args.overhead_subset,
                 storage=storage, out=out)
    tuned = None
    if "search" in parts:
        chosen = search(data_cfg, args.model, report, budget_s=args.search_budget, epochs=args.search_epochs,
                        storage=storage, out=out)
        tuned = chosen.get("ASHA + TPE")
    if "table" in parts:
        study_table(data_cfg, args.model, report, seeds=args.seeds, epochs=args.table_epochs,
                    storage=storage, tuned=tuned, out=out, presets=presets,
                    workers=args.table_workers, pick=args.jobs)
    if "ablation" in parts:
        _ablation_part(data_cfg, args, report, storage, out)
    if "compare" in parts:
        _compare_part(data_cfg, args, report, storage, out)
    text = report.markdown(command)
    (out / "results.md").write_text(text)
    (out / "results.json").write_text(json.dumps(report.numbers, indent=2))
    _log_to_mlflow(storage, out)
    print(text)
    say(f"wrote {out / 'results.md'}")
    return 0


def _compare_part(data_cfg: DataConfig, args, report: BenchReport, storage: Path, out: Path) -> None:
    from tuning import compare
    from tuning.config import resolve_tracking_uri

    hand = compare.hand_baseline(data_cfg, args.model, seeds=args.seeds,
                                 uri=resolve_tracking_uri(None, storage),
                                 epochs=1 if args.smoke_test else None, storage=storage)
    name = f"bench-tune-{time.strftime('%Y%m%d-%H%M%S')}"
    tuned = compare.tune_pipeline(data_cfg, args.model, budget_s=args.tune_budget, storage=storage,
                                  name=name, smoke=args.smoke_test)
    report.add("f. Search against hand-tuning", compare.markdown(hand, tuned, args.tune_budget))
    report.numbers.update({"compare_hand_test_mean": statistics.mean(r["test_accuracy"] for r in hand),
                           "compare_tuned_test": tuned["test_accuracy"],
                           "compare_tuned_config_test_mean": tuned["config_test_accuracy_mean"]})
    (out / "compare.json").write_text(json.dumps({"hand": hand, "tuned": tuned}, indent=2, default=str))


def _ablation_part(data_cfg: DataConfig, args, report: BenchReport, storage: Path, out: Path) -> None:
    from tuning import ablation
    from tuning.config import resolve_tracking_uri

    epochs = args.ablation_epochs or (1 if args.smoke_test else ablation.HAND_CONFIG["epochs"])
    rows = ablation.run_ablation(data_cfg, args.model, seeds=args.seeds, epochs=epochs,
                                 uri=resolve_tracking_uri(None, storage), workers=args.ablation_workers,
                                 max_train_examples=64 if args.smoke_test else None, storage=storage)
    report.add("e. Recipe ablation", ablation.markdown(rows, seeds=args.seeds, epochs=epochs))
    for row in rows:
        key = row["variant"].split(" (")[0].replace("+ ", "").replace(" ", "_").lower()
        report.numbers[f"ablation_{key}_val_mean"] = statistics.mean(row["val_accuracy"])
    (out / "ablation.json").write_text(json.dumps(rows, indent=2))
    ablation.plot(rows, out / "ablation.png")
    report.figures.append(str(out / "ablation.png"))


def _log_to_mlflow(storage: Path, out: Path) -> None:
    from tuning import tracking
    from tuning.config import resolve_tracking_uri

    run = tracking.TrainRun(resolve_tracking_uri(None, storage), "tunebert-bench",
                            {"trainable": "bench"}, f"bench-{time.strftime('%Y%m%d-%H%M%S')}",
                            tags={"tunebert.kind": "bench"})
    run.log_artifacts(str(out), "bench")
    run.end("FINISHED")
