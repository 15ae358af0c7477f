"""Search against hand-tuning (``tunebert bench --parts compare``): the issue's hand-written
config trained over seeds, against the default ``tunebert tune`` pipeline under one time budget,
on the same machine, both tested once on the test split after their choice.

Targets (this project's, for MASSIVE en-US with the packaged MiniLM-L6 on 2 CPU cores and a
2-hour budget): the handed-over model >= 90.0 % test accuracy; the chosen config's seed models
>= 89.5 % on average; the pipeline beats the hand baseline's mean by >= 0.5 points.
"""

from __future__ import annotations

import logging
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import tuning.results.jobs as training_jobs
from trainables.data import DataConfig
from tuning.settings import EXIT_USER_ERROR
from tuning.bench.ablation import HAND_CONFIG
from tuning.results.jobs import bench_job
from tuning.results.pipeline import load_pipeline

log = logging.getLogger(__name__)

HAND_EXPERIMENT = "bench-hand-baseline"
TARGETS = {"handed_over": 0.900, "config_mean": 0.895, "margin_over_hand": 0.005}


def _say(message: str) -> None:
    log.info(f"bench: compare: {message}")


def run_tunebert(argv: list[str]) -> int:
    """``tunebert ARGV`` as a child process (the command a user runs, with its own signal
    handling and logging), sharing this terminal and environment; its exit status."""
    return subprocess.run([sys.executable, "-m", "tuning.cli", *argv], check=False).returncode


def hand_baseline(data: DataConfig, model: str, *, seeds: int, uri: str,
                  epochs: Optional[int] = None, storage: Optional[Path] = None) -> list[dict[str, float]]:
    """The hand config (``tuning.bench.ablation.HAND_CONFIG``), one seed after another, each on every
    core, as `tunebert train --config` runs it: per seed the best epoch's validation accuracy,
    the test accuracy and the wall seconds, read from the jobs' MLflow runs. Each seed is a
    resumable job (``tuning.results.jobs.run_bench_jobs``; with ``storage`` it continues from its
    checkpoint)."""
    jobs = [bench_job(f"hand-seed{seed}",
                      {**HAND_CONFIG, "model": model, "seed": seed, **({"epochs": epochs} if epochs else {})},
                      data, uri=uri, experiment=HAND_EXPERIMENT, storage=storage, log_model=False)
            for seed in range(seeds)]
    _say(f"hand baseline: {seeds} seed(s) of the hand config")
    records = training_jobs.run_bench_jobs(jobs, uri=uri, experiment=HAND_EXPERIMENT, workers=1,
                             say=lambda message: _say(f"hand baseline: {message}"))
    results = []
    for job in jobs:
        record = records[job.name]
        metrics = record["metrics"]
        results.append({"val_accuracy": metrics.get("best_val_accuracy", metrics["val_accuracy"]),
                        "test_accuracy": metrics["test_accuracy"], "seconds": record["seconds"]})
    return results


class PipelineRefused(RuntimeError):
    """`tunebert tune` refused its arguments (exit 2, e.g. a budget below its floor) before it
    started anything; any other failure, an interruption included, is a plain RuntimeError."""


def tune_pipeline(data: DataConfig, model: str, *, budget_s: float, storage: Path, name: str,
                  max_train_examples: Optional[int] = None, smoke: bool = False,
                  extra: tuple[str, ...] | list[str] = ()) -> dict[str, Any]:
    """The default ``tunebert tune`` with ``budget_s``: its summary (``pipeline.state.result``)."""
    argv = ["tune", "--name", name, "--data", data.source, "--text-column", data.text_column,
            "--label-column", data.label_column, "--model", model, "--time-budget", f"{budget_s:.0f}",
            "--storage", str(storage)]
    argv += list(extra)
    if smoke:
        argv.append("--smoke-test")
    _say("tunebert " + " ".join(argv))
    start = time.time()
    code = run_tunebert(argv)
    if code == EXIT_USER_ERROR:
        raise PipelineRefused(f"tunebert tune exited with {code}")
    if code != 0:
        raise RuntimeError(f"tunebert tune exited with {code}")

    pipeline = load_pipeline(name, str(storage))
    return {**pipeline.state.result, "wall_s": time.time() - start,
            "sweep_s": pipeline.state.sweep_actual_s, "select_s": pipeline.state.select_actual_s,
            "select_top_k": pipeline.state.top_k, "select_seeds": pipeline.state.seeds}


def _pm(values: list[float]) -> str:
    mean = statistics.mean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * mean:.2f} ± {100 * std:.2f} %"


def markdown(hand: list[dict], tuned: dict, budget_s: float) -> str:
    hand_mean = statistics.mean(r["test_accuracy"] for r in hand)
    margin = tuned["test_accuracy"] - hand_mean
    rows = [
        "| | test accuracy | validation | wall time |", "|---|---:|---:|---:|",
        f"| hand config, {len(hand)} seeds (mean ± std) | {_pm([r['test_accuracy'] for r in hand])} | "
        f"{_pm([r['val_accuracy'] for r in hand])} | {sum(r['seconds'] for r in hand) / 60:.0f} min |",
        f"| `tunebert tune --time-budget {budget_s / 3600:g}h`: handed-over model "
        f"({tuned['handed_over']}) | **{100 * tuned['test_accuracy']:.2f} %** | "
        f"{100 * tuned['val']:.2f} % | {tuned['wall_s'] / 60:.0f} min |",
        f"| the same pipeline's chosen config, its {len(tuned['seeds'])} seed models one by one | "
        f"{100 * tuned['config_test_accuracy_mean']:.2f} ± {100 * tuned['config_test_accuracy_std']:.2f} % "
        f"| — | — |", "",
        "| target | measured | met? |", "|---|---:|---|",
        f"| handed-over model ≥ {100 * TARGETS['handed_over']:.1f} % | {100 * tuned['test_accuracy']:.2f} % | "
        f"{'yes' if tuned['test_accuracy'] >= TARGETS['handed_over'] else 'no'} |",
        f"| chosen config's seed mean ≥ {100 * TARGETS['config_mean']:.1f} % | "
        f"{100 * tuned['config_test_accuracy_mean']:.2f} % | "
        f"{'yes' if tuned['config_test_accuracy_mean'] >= TARGETS['config_mean'] else 'no'} |",
        f"| beats the hand mean by ≥ {100 * TARGETS['margin_over_hand']:.1f} points | {100 * margin:+.2f} | "
        f"{'yes' if margin >= TARGETS['margin_over_hand'] else 'no'} |", "",
        f"Sweep {tuned['sweep_s'] / 60:.0f} min, selection + test {tuned['select_s'] / 60:.0f} min "
        f"(top {tuned['select_top_k']} x {tuned['select_seeds']} seeds). Chosen config:", "", "```json",
        __import__("json").dumps(tuned["config"], indent=1, sort_keys=True), "```"]
    return "\n".join(rows)
