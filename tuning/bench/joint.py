"""Joint intent + slot (``tunebert bench --parts joint``), on SNIPS or any joint dataset:

- the hand joint baseline (preset ``joint-hand``, JointBERT's recipe) over seeds, each trained as
  `tunebert train` trains it and tested once;
- each multi-task knob alone on the hand baseline, over seeds, on VALIDATION only (optionally on a
  seeded subset of train and fewer epochs, said in the table): what the default search space is
  chosen from;
- the default ``tunebert tune --trainable multitask`` under one time budget, its handed-over model
  tested once.

Targets (issue 23, SNIPS with the packaged MiniLM-L6 on 2 CPU cores, a 2-hour budget): the handed-
over model >= 98.5 % intent accuracy, >= 96.5 slot F1, >= 92.0 % sentence accuracy, and its
sentence accuracy >= 0.5 points above the hand baseline's mean. Every (row, seed) is a resumable
job (``tuning.results.jobs.run_bench_jobs``): the same command run again continues.
"""

from __future__ import annotations

import json
import logging
import statistics
from pathlib import Path
from typing import Any, Optional

import tuning.results.jobs as training_jobs
from search_spaces.presets import PRESETS
from trainables.data import DataConfig
from tuning.results.jobs import bench_job

log = logging.getLogger(__name__)

HAND_EXPERIMENT = "bench-joint-hand"
KNOB_EXPERIMENT = "bench-joint-knobs"
HAND_CONFIG: dict[str, Any] = dict(PRESETS["joint-hand"])
TARGETS = {"intent_accuracy": 0.985, "slot_f1": 0.965, "sentence_accuracy": 0.920,
           "margin_over_hand": 0.005}
SCORES = ("intent_accuracy", "slot_f1", "sentence_accuracy")

# Each multi-task knob moved once from the hand baseline, to a value the literature or the
# multi-task report uses: the measured effects decide the default search space.
KNOBS: dict[str, dict[str, Any]] = {
    "base (joint-hand)": {},
    "slot loss weight 2": {"slot_loss_weight": 2.0},
    "intent loss weight 0.5": {"intent_loss_weight": 0.5},
    "heads at lr x30": {"head_lr_multiplier": 30.0, "slot_lr_multiplier": 30.0},
    "token head at lr x1": {"slot_lr_multiplier": 1.0},
    "LLRD 0.8": {"llrd_decay": 0.8},
    "norm_gelu heads": {"head": "norm_gelu", "slot_head": "norm_gelu"},
    "bottom 2 layers frozen": {"freeze_layers": 2},
    "gradual unfreezing, 1 layer per epoch": {"unfreeze_every": 1},
    "L2-normalised sentence embedding": {"sentence_norm": "l2"},
    "lr 2e-4": {"lr": 2e-4},
}


def _say(message: str) -> None:
    log.info(f"bench: joint: {message}")


def _best(metrics: dict, key: str) -> float:
    return metrics.get(f"best_val_{key}", metrics.get(f"val_{key}", float("nan")))


def hand_baseline(data: DataConfig, model: str, *, seeds: int, uri: str,
                  epochs: Optional[int] = None, storage: Optional[Path] = None) -> list[dict]:
    """The hand joint baseline, one seed after another on every core: per seed the best epoch's
    validation scores, the test scores and the wall seconds."""
    jobs = [bench_job(f"joint-hand-seed{seed}",
                      {**HAND_CONFIG, "model": model, "seed": seed, **({"epochs": epochs} if epochs else {})},
                      data, uri=uri, experiment=HAND_EXPERIMENT, storage=storage, log_model=False)
            for seed in range(seeds)]
    _say(f"hand baseline: {seeds} seed(s) of joint-hand")
    records = training_jobs.run_bench_jobs(jobs, uri=uri, experiment=HAND_EXPERIMENT, workers=1,
                                           say=lambda message: _say(f"hand baseline: {message}"))
    rows = []
    for job in jobs:
        metrics = records[job.name]["metrics"]
        rows.append({**{f"val_{k}": _best(metrics, k) for k in SCORES},
                     **{f"test_{k}": metrics[f"test_{k}"] for k in SCORES},
                     "seconds": records[job.name]["seconds"]})
    return rows


def knob_effects(data: DataConfig, model: str, *, seeds: int, uri: str, epochs: Optional[int],
                 workers: int = 1, max_train_examples: Optional[int] = None,
                 storage: Optional[Path] = None, knobs: Optional[dict[str, dict]] = None) -> list[dict]:
    """One row per knob: its per-seed validation scores (best epoch) and mean wall seconds."""
    knobs = knobs or KNOBS
    base = {**HAND_CONFIG, "model": model, **({"epochs": epochs} if epochs else {})}
    jobs = {name: [bench_job(f"{name} seed{seed}", {**base, **changes, "seed": seed}, data, uri=uri,
                             experiment=KNOB_EXPERIMENT, storage=storage,
                             max_train_examples=max_train_examples, evaluate_test=False,
                             log_model=False)
                   for seed in range(seeds)] for name, changes in knobs.items()}
    _say(f"knobs: {len(knobs)} variants x {seeds} seeds, {workers} at a time")
    records = training_jobs.run_bench_jobs([job for mine in jobs.values() for job in mine], uri=uri,
                                           experiment=KNOB_EXPERIMENT, workers=workers, say=_say)
    rows = []
    for name, changes in knobs.items():
        mine = [records[job.name] for job in jobs[name]]
        rows.append({"variant": name, "changes": changes,
                     **{f"val_{k}": [_best(r["metrics"], k) for r in mine] for k in SCORES},
                     "seconds": statistics.mean(r["seconds"] for r in mine)})
    return rows


def _pm(values: list[float]) -> str:
    mean = statistics.mean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * mean:.2f} ± {100 * std:.2f}"


def hand_markdown(rows: list[dict]) -> str:
    lines = ["| hand joint baseline (joint-hand) | intent acc % | slot F1 | sentence acc % | min |",
             "|---|---:|---:|---:|---:|"]
    for seed, row in enumerate(rows):
        lines.append(f"| seed {seed}, test (dev) | " + " | ".join(
            f"{100 * row[f'test_{k}']:.2f} ({100 * row[f'val_{k}']:.2f})" for k in SCORES)
            + f" | {row['seconds'] / 60:.0f} |")
    lines.append("| mean ± std, test | " + " | ".join(
        _pm([r[f"test_{k}"] for r in rows]) for k in SCORES) + " | |")
    return "\n".join(lines)


def knobs_markdown(rows: list[dict], *, seeds: int, epochs: int, subset: Optional[int]) -> str:
    base = {k: statistics.mean(rows[0][f"val_{k}"]) for k in SCORES}
    where = f"a seeded {subset}-utterance subset of train" if subset else "all of train"
    lines = [f"Dev scores (best epoch) of each knob alone on joint-hand: {epochs} epochs on {where}, "
             f"{seeds} seeds each (0..{seeds - 1}); test not read. Δ is against the base row.\n",
             "| variant | sentence acc % | Δ | slot F1 | Δ | intent acc % | Δ | s per run |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        cells = []
        for key in ("sentence_accuracy", "slot_f1", "intent_accuracy"):
            mean = statistics.mean(row[f"val_{key}"])
            delta = "—" if row is rows[0] else f"{100 * (mean - base[key]):+.2f}"
            cells += [_pm(row[f"val_{key}"]), delta]
        lines.append(f"| {row['variant']} | " + " | ".join(cells) + f" | {row['seconds']:.0f} |")
    return "\n".join(lines)


def tune_markdown(hand: list[dict], tuned: dict, budget_s: float) -> str:
    """The handed-over model of ``tunebert tune`` against the targets and the hand baseline, the
    chosen config's seed models one by one, the phases' times and the chosen config."""
    hand_mean = statistics.mean(r["test_sentence_accuracy"] for r in hand)
    got = {k: tuned.get(f"test_{k}", float("nan")) for k in SCORES}
    margin = got["sentence_accuracy"] - hand_mean
    lines = [f"`tunebert tune --trainable multitask --time-budget {budget_s / 3600:g}h`: handed-over "
             f"model ({tuned.get('handed_over', '?')}), test read once.\n",
             "| target | measured | gap | met? |", "|---|---:|---:|---|"]
    for key in SCORES:
        target = TARGETS[key]
        lines.append(f"| {key.replace('_', ' ')} ≥ {100 * target:.1f} | {100 * got[key]:.2f} | "
                     f"{100 * (got[key] - target):+.2f} | {'yes' if got[key] >= target else 'no'} |")
    lines.append(f"| sentence acc ≥ hand mean + {100 * TARGETS['margin_over_hand']:.1f} points | "
                 f"{100 * margin:+.2f} points | {100 * (margin - TARGETS['margin_over_hand']):+.2f} | "
                 f"{'yes' if margin >= TARGETS['margin_over_hand'] else 'no'} |")
    lines += ["", "| test | intent acc % | slot F1 | sentence acc % |", "|---|---:|---:|---:|",
              f"| hand joint baseline, {len(hand)} seeds | "
              + " | ".join(_pm([r[f"test_{k}"] for r in hand]) for k in SCORES) + " |",
              "| handed-over model | " + " | ".join(f"{100 * got[k]:.2f}" for k in SCORES) + " |"]
    if all(f"config_test_{k}_mean" in tuned for k in SCORES):
        lines.append(f"| the chosen config's {len(tuned.get('seeds') or [])} seed models one by one | "
                     + " | ".join(f"{100 * tuned[f'config_test_{k}_mean']:.2f} ± "
                                  f"{100 * tuned[f'config_test_{k}_std']:.2f}" for k in SCORES) + " |")
    if tuned.get("wall_s") is not None:
        lines += ["", f"Validation ({tuned.get('metric', 'val_sentence_accuracy')}) of the handed-over "
                  f"model: {100 * (tuned.get('val') or float('nan')):.2f} %. Sweep "
                  f"{(tuned.get('sweep_s') or 0) / 60:.0f} min, selection + test "
                  f"{(tuned.get('select_s') or 0) / 60:.0f} min (top {tuned.get('select_top_k')} x "
                  f"{tuned.get('select_seeds')} seeds), {tuned['wall_s'] / 60:.0f} min in all."]
    if tuned.get("config"):
        lines += ["", "Chosen config:", "", "```json", json.dumps(tuned["config"], indent=1, sort_keys=True),
                  "```"]
    return "\n".join(lines)


def plot_knobs(rows: list[dict], path: Path, key: str = "sentence_accuracy") -> Path:
    """Each knob's dev score (bars: mean ± std over seeds, dots: the seeds), the base row grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stats = [(statistics.mean(r[f"val_{key}"]),
              statistics.stdev(r[f"val_{key}"]) if len(r[f"val_{key}"]) > 1 else 0.0) for r in rows]
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(rows) + 1.4))
    y = list(range(len(rows)))[::-1]
    ax.barh(y, [100 * m for m, _ in stats], xerr=[100 * s for _, s in stats], capsize=4,
            color=["tab:gray"] + ["tab:blue"] * (len(rows) - 1))
    for yi, row in zip(y, rows):
        ax.scatter([100 * v for v in row[f"val_{key}"]], [yi] * len(row[f"val_{key}"]), color="black",
                   s=12, zorder=3)
    values = [100 * v for r in rows for v in r[f"val_{key}"]]
    ax.set_xlim(min(values) - 1.0, max(values) + 0.6)
    ax.set_yticks(y, [r["variant"] for r in rows])
    ax.axvline(100 * stats[0][0], color="tab:gray", ls="--", lw=1)
    ax.set_xlabel(f"dev {key.replace('_', ' ')}, % (bars: mean ± std; dots: seeds)")
    ax.set_title("Multi-task knobs: each alone on the hand joint baseline")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
