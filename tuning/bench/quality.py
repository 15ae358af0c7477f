"""Quality parts of the benchmark: (c) ASHA + TPE against random search at the same budget, and
(d) the study's table: its presets over seeds, resumable job by job."""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

import tuning.bench.compare as compare
import tuning.results.jobs as training_jobs
import tuning.tracking as tracking
from search_spaces.presets import STUDY_TEST_ACCURACY, get_preset
from trainables.data import DataConfig
from tuning.bench.common import BenchReport, pm, say
from tuning.config import SweepConfig, resolve_tracking_uri
from tuning.results.jobs import bench_job, job_key, job_tags, pick_jobs, threads_per_worker
from tuning.results.pipeline import exists, load_pipeline
from tuning.results.selection import evaluate_on_test
from tuning.sweep.runner import run_sweep
from tuning.tracking.best import best_run


def search(data_cfg: DataConfig, model: str, report: BenchReport, *, budget_s: float, epochs: int,
           storage: Path, out: Path) -> dict[str, Any]:
    """ASHA + TPE vs random search (no early stopping), same wall-clock budget each."""

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


    uri = cfg.resolved_tracking_uri()
    parent = tracking.sweep_run(uri, cfg.name)
    with tempfile.TemporaryDirectory() as tmp:
        folder = tracking.download_artifacts(uri, parent.info.run_id, "best_checkpoint", tmp)
        return evaluate_on_test([folder], data_cfg, config)[0]["test_accuracy"]


def outcome_start(runs) -> int:
    return min(r.info.start_time for r in runs)


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
# The product's default pipeline given what the study's best configuration costs: each seed of
# `tunebert tune` gets the mean wall time of that configuration's own runs in this table.
ANCHOR = "llrd_warmup"
PIPELINE = f"tunebert tune, {ANCHOR}'s compute"


def table_job_name(row: str, seed: int) -> str:
    """``baseline-seed0``: what ``--jobs`` matches (``tuned-seed0`` for the search's config,
    ``tune-seed0`` for the pipeline's row)."""
    short = {TUNED: "tuned", PIPELINE: "tune"}
    return f"{short.get(row, row)}-seed{seed}"


def table_job_names(presets: tuple[str, ...], seeds: int, tuned: bool) -> list[str]:
    rows = [*presets, *([TUNED] if tuned else []), *([PIPELINE] if ANCHOR in presets else [])]
    return [table_job_name(row, seed) for row in rows for seed in range(seeds)]


def pipeline_budget(records: dict[str, Optional[dict]], seeds: int, core_share: float = 1.0) -> Optional[float]:
    """The pipeline row's time budget: the compute of the anchor configuration's row, i.e. the
    wall seconds of all its ``seeds`` runs times ``core_share`` (the share of the machine's cores
    each ran on: 1/2 for one of two table workers, while the pipeline has all of them), once all
    of them finished (None before).

    The row, not one run: the anchor's row reports a mean over ``seeds`` runs, and a pipeline's
    handed-over model comes out of its own seeds (the selection retrains its chosen config on
    fresh seeds). One run's compute is also below what the default pipeline can plan with on a
    CPU: on MASSIVE, 6.5 minutes against `tunebert tune`'s floor of about 15 (one sweep trial
    and one selection training)."""
    runs = [records.get(table_job_name(ANCHOR, seed)) for seed in range(seeds)]
    if any(run is None for run in runs):
        return None
    return core_share * sum(run["seconds"] for run in runs)


def pipeline_job(data_cfg: DataConfig, model: str, *, seed: int, budget_s: float, uri: str,
                 storage: Path, smoke: bool = False) -> dict[str, float]:
    """One seed of the pipeline row, resumable as the table's other jobs: ``tunebert tune
    --time-budget budget_s --seed seed`` under a name derived from its job key; a pipeline a
    kill interrupted is resumed (``tunebert resume``), a finished one is not run again; the
    outcome is then one FINISHED run in the table's experiment, tagged with the job key."""

    # a smoke run's anchor takes seconds, less than any pipeline can plan with; its 2 trials end
    # the sweep long before this floor does
    budget_s = float(round(max(budget_s, 600.0) if smoke else budget_s))
    spec = {"pipeline": "tune", "time_budget_s": budget_s, "seed": seed, "model": model, "smoke": smoke}
    key = job_key(spec, data_cfg)
    record = tracking.finished_job(uri, TABLE_EXPERIMENT, key)
    if record is not None:
        say(f"table: {table_job_name(PIPELINE, seed)}: finished before (MLflow run {record['run_id']})")
        return record["metrics"]
    name = f"bench-table-tune-seed{seed}-{key[:8]}"
    if exists(name, str(storage)) and load_pipeline(name, str(storage)).state.phase != "done":
        say(f"table: {table_job_name(PIPELINE, seed)}: resuming pipeline {name}")
        if compare.run_tunebert(["resume", name, "--storage", str(storage)]) != 0:
            raise RuntimeError(f"tunebert resume {name} failed")
    if not exists(name, str(storage)):
        say(f"table: {table_job_name(PIPELINE, seed)}: tunebert tune for {budget_s / 60:.1f} min")
        compare.tune_pipeline(data_cfg, model, budget_s=budget_s, storage=storage, name=name, smoke=smoke,
                      extra=["--seed", str(seed)])
    pipeline = load_pipeline(name, str(storage))
    result = pipeline.state.result or {}
    metrics = {"test_accuracy": result["test_accuracy"], "val_accuracy": result["val"],
               "wall_s": pipeline.state.total_s, "time_budget_s": budget_s,
               "sweep_s": pipeline.state.sweep_actual_s, "select_s": pipeline.state.select_actual_s}
    run = tracking.TrainRun(uri, TABLE_EXPERIMENT, {"trainable": "pipeline", **spec},
                            table_job_name(PIPELINE, seed), tags={**job_tags(key), "tunebert.pipeline": name})
    run.log_metrics(metrics, step=0)
    run.end("FINISHED")
    return metrics


def ours_cell(tests: list[float], seeds: int) -> str:
    """Mean ± std over the seeds; a row short of seeds says so rather than giving a mean that
    is not comparable with the complete rows."""
    if len(tests) == seeds:
        return pm(tests)
    found = f": {', '.join(f'{100 * t:.2f}' for t in tests)} %" if tests else ""
    return f"— ({len(tests)} of {seeds} seeds{found})"


def study_table(data_cfg: DataConfig, model: str, report: BenchReport, *, seeds: int,
                epochs: Optional[int], storage: Path, tuned: Optional[dict], out: Path,
                presets: tuple[str, ...], workers: int = 1, pick: Optional[str] = None,
                smoke: bool = False) -> None:
    """Each preset (and the search's chosen config) over ``seeds`` seeds; ``workers`` runs at a
    time (on a CPU, two one-thread runs get through more than one two-thread run).

    Each (configuration, seed) is one resumable job (``tuning.results.jobs.run_bench_jobs``); ``pick``
    (``--jobs``) trains only the jobs it matches. The table is then written from the runs MLflow
    holds, so jobs finished by earlier invocations count, and a row short of seeds is marked."""
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
    pipeline_names = [table_job_name(PIPELINE, seed) for seed in range(seeds)] if ANCHOR in presets else []
    picked = set(pick_jobs(names + pipeline_names, pick)) if pick else set(names + pipeline_names)
    records = training_jobs.run_bench_jobs([job for _, job in jobs], uri=uri, experiment=TABLE_EXPERIMENT,
                             workers=workers, say=lambda message: say(f"table: {message}"),
                             selected=[n for n in names if n in picked])
    rows = []
    for name, _ in configs:
        tests = [records[job.name]["metrics"]["test_accuracy"] for row, job in jobs
                 if row == name and records[job.name] is not None]
        rows.append((name, tests, STUDY_TEST_ACCURACY.get(name)))
        if len(tests) == seeds:
            report.numbers[f"table_{name.split(' ')[0]}_test_mean"] = statistics.mean(tests)
    cores = os.cpu_count() or 1
    share = min(1.0, threads_per_worker(workers) / cores)
    budget_s = pipeline_budget(records, seeds, share) if pipeline_names else None
    pipeline_errors: list[str] = []
    if pipeline_names:
        tests = []
        for seed, job_name in enumerate(pipeline_names):
            if budget_s is None or job_name not in picked:
                continue
            try:
                metrics = pipeline_job(data_cfg, model, seed=seed, budget_s=budget_s, uri=uri,
                                       storage=storage, smoke=smoke)
            except compare.PipelineRefused as err:  # e.g. a budget below what `tunebert tune` accepts;
                # an interrupted or failed pipeline stops the bench (the next run resumes it)
                refused = f"{job_name}: {err}"
                say(f"table: {refused}; the table is written without it")
                pipeline_errors.append(refused)
                continue
            tests.append(metrics["test_accuracy"])
        rows.append((PIPELINE, tests, None))
        if len(tests) == seeds:
            report.numbers["table_pipeline_test_mean"] = statistics.mean(tests)
            report.numbers["table_pipeline_budget_s"] = budget_s
    scaled = (f" (presets scaled down: at most {epochs} epochs of encoder training per run; the "
              f"classifier epochs on a frozen encoder keep the preset's number; the tuned config "
              f"trains as long as in its sweep)") if epochs else ""
    report.add("d. The study's table", f"Test accuracy on MASSIVE en-US, {model}, {seeds} seeds{scaled}; "
               f"study: bert-base-uncased, one run each.\n")
    if pipeline_names:
        per_run = (f"the compute of the {ANCHOR} row here (the wall time of its {seeds} runs x {share:g} "
                   f"of the cores each had)")
        spent = f"{budget_s / 60:.1f} min, {per_run}" if budget_s else \
            f"{per_run}, known once its {seeds} seeds have finished"
        report.add("d. The study's table", f"Row \"{PIPELINE}\": the default `tunebert tune` "
                   f"(sweep, then selection; its handed-over model tested once), one pipeline per "
                   f"seed, each with `--time-budget` = {spent}.\n")
    report.add("d. The study's table", "| configuration | ours (mean ± std) | study |\n|---|---:|---:|")
    for name, tests, study in rows:
        report.add("d. The study's table", f"| {name} | {ours_cell(tests, seeds)} | {f'{study} %' if study else '—'} |")
    for refused in pipeline_errors:
        report.add("d. The study's table", f"\nNot run: {refused} (its message above says why).")
    if any(len(tests) < seeds for _, tests, _ in rows):
        report.add("d. The study's table", "\nA row marked — lacks finished runs: `--jobs` left them "
                   "out. Run the command again without `--jobs` (finished jobs are not trained again).")
    _table_plot(out / "study_table.png", rows, model, seeds)
    report.figures.append(str(out / "study_table.png"))


def _table_plot(path: Path, rows, model: str, seeds: int) -> None:
    """Ours (mean ± std over seeds) beside the study's single runs, one group per configuration,
    each bar with its value; a row short of seeds has no bar of ours and says how many it has.
    Long row names are wrapped so that they stay clear of each other and of the legend, which
    sits below the axis labels."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5))
    x = np.arange(len(rows))
    means = [100 * statistics.mean(t) if len(t) == seeds else np.nan for _, t, _ in rows]
    stds = [100 * statistics.stdev(t) if len(t) == seeds > 1 else 0.0 for _, t, _ in rows]
    ours = ax.bar(x - 0.2, means, 0.4, yerr=stds, capsize=4, label=f"ours: {model}, mean ± std of {seeds} seeds",
                  color="#4477aa")
    study = [s if s else np.nan for _, _, s in rows]
    theirs = ax.bar(x + 0.2, study, 0.4, label="study: bert-base-uncased, one run", color="#cc6677")
    for bars, values, errors in ((ours, means, stds), (theirs, study, [0.0] * len(rows))):
        for bar, value, error in zip(bars, values, errors):
            if not np.isnan(value):
                ax.annotate(f"{value:.1f}", (bar.get_x() + bar.get_width() / 2, value + error),
                            xytext=(0, 2), textcoords="offset points", ha="center", va="bottom", fontsize=8)
    names = [r[0].replace(" (search part)", "") + (f" ({len(r[1])} of {seeds} seeds)" if len(r[1]) < seeds else "")
             for r in rows]
    ax.set_xticks(x, ["\n".join(textwrap.wrap(name, 16)) for name in names])
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 105)
    ax.set_title("MASSIVE en-US test accuracy")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.legend(handles=[ours, theirs], loc="lower center", ncol=2, frameon=False)  # below the row names
    fig.savefig(path, dpi=110)
    plt.close(fig)
