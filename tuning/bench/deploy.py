"""Deployment trade-offs on real data (``tunebert bench --parts deploy``): what keeping fewer
encoder layers and dynamic int8 quantization cost in accuracy and buy in CPU latency and size,
and the Pareto front a two-objective sweep finds on its own.

Variants: the hand config (``tuning.bench.ablation.HAND_CONFIG``) with its bottom k encoder
layers (``num_layers``: all, then ``LAYERS``), each trained once per seed and served fp32 or
int8 (``quantize``: the same fp32 training, quantized after it). Each (variant, seed) is one
resumable job (``tuning.results.jobs.run_bench_jobs``). Everything is read on VALIDATION, as a sweep
ranks: accuracy (the best epoch's), accuracy on perturbed texts (``PERTURB``, the same noisy
texts for every variant), and what the served model costs: parameters, serialized size, CPU
latency p50 at batch 1 and throughput at batch 32 (``trainables.deploy``, measured on the
threads each job trains with; compare the rows of one run, not machines).

The front: a sweep with ``--objective val_accuracy:max --objective latency_ms_p50:min`` over the
default space plus ``num_layers`` and ``quantize`` for ``front_budget_s`` seconds; its front as
``tunebert best --front`` gives it, and the report's ``pareto.png``.
"""

from __future__ import annotations

import logging
import shutil
import statistics
import time
from pathlib import Path
from typing import Any, Optional

import tuning.results.jobs as training_jobs
from trainables.data import DataConfig
from tuning.bench.ablation import HAND_CONFIG
from tuning.bench.common import pm
from tuning.config import SweepConfig
from tuning.report import build_report
from tuning.results.jobs import bench_job
from tuning.sweep.runner import run_sweep
from tuning.tracking.best import front, front_rows, sweep_goal

log = logging.getLogger(__name__)

EXPERIMENT = "bench-deploy"
PERTURB = "typo:0.1,delete:0.05"  # keyboard typos in 10 % of the words, 5 % of characters deleted
LAYERS = (4, 2)  # besides all of them (MiniLM-L6 has 6)
FRONT_SPACE = "num_layers: {low: 1, high: %d}\nquantize: [false, true]\n"


def _say(message: str) -> None:
    log.info(f"bench: deploy: {message}")


def variants(layers: tuple[int, ...]) -> dict[str, dict[str, Any]]:
    """``{"all layers, fp32": {"num_layers": 0, "quantize": False}, ...}``: all layers first."""
    out = {}
    for k in (0, *layers):
        for quantize in (False, True):
            size = "all layers" if k == 0 else f"{k} layer{'s' if k > 1 else ''}"
            name = f"{size}, {'int8' if quantize else 'fp32'}"
            out[name] = {"num_layers": k, "quantize": quantize}
    return out


def run_variants(data: DataConfig, model: str, *, seeds: int, uri: str, storage: Optional[Path],
                 layers: tuple[int, ...] = LAYERS, epochs: Optional[int] = None,
                 max_train_examples: Optional[int] = None) -> list[dict[str, Any]]:
    """One row per variant, from its jobs' MLflow runs: per-seed validation accuracy and
    perturbed accuracy (of the int8 model for an int8 row) and the mean costs of the served
    model."""
    base = {**HAND_CONFIG, "model": model, "perturb_eval": PERTURB,
            **({"epochs": epochs} if epochs else {})}
    table = variants(layers)
    jobs = {name: [bench_job(f"{name} seed{seed}", {**base, **changes, "seed": seed}, data, uri=uri,
                             experiment=EXPERIMENT, storage=storage,
                             max_train_examples=max_train_examples, evaluate_test=False,
                             log_model=False)
                   for seed in range(seeds)] for name, changes in table.items()}
    _say(f"{len(table)} variants x {seeds} seed(s)")
    records = training_jobs.run_bench_jobs([job for mine in jobs.values() for job in mine], uri=uri,
                             experiment=EXPERIMENT, workers=1, say=_say)
    rows = []
    for name, changes in table.items():
        metrics = [records[job.name]["metrics"] for job in jobs[name]]
        if changes["quantize"]:
            accuracy = [m["val_accuracy_int8"] for m in metrics]
            perturbed = [m["val_accuracy_perturbed_int8"] for m in metrics]
        else:
            accuracy = [m.get("best_val_accuracy", m["val_accuracy"]) for m in metrics]
            perturbed = [m.get("best_val_accuracy_perturbed", m["val_accuracy_perturbed"]) for m in metrics]
        rows.append({"variant": name, **changes, "val_accuracy": accuracy,
                     "val_accuracy_perturbed": perturbed,
                     **{key: statistics.mean(m[key] for m in metrics)
                        for key in ("params_m", "size_mb", "latency_ms_p50", "throughput_b32")}})
    return rows


def markdown(rows: list[dict], *, seeds: int, front: Optional[list[dict]] = None,
             front_budget_s: float = 0.0) -> str:
    full = rows[0]
    lines = [f"Validation split, {seeds} seed(s) per variant (mean ± std); perturbed: the validation "
             f"texts with `{PERTURB}` (`trainables.perturb`, seed 0). Latency: p50 of batch-1 calls on "
             f"texts padded to `max_length`, on this machine's training threads; size: the serialized "
             f"weights. Δ against all layers, fp32.\n",
             "| variant | accuracy | perturbed | parameters | size | latency p50 | throughput b32 | "
             "Δ accuracy | latency × |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        delta = 100 * (statistics.mean(row["val_accuracy"]) - statistics.mean(full["val_accuracy"]))
        speed = row["latency_ms_p50"] / full["latency_ms_p50"]
        relative = "— | —" if row is full else f"{delta:+.2f} | {speed:.2f}"
        lines.append(
            f"| {row['variant']} | {pm(row['val_accuracy'])} | {pm(row['val_accuracy_perturbed'])} | "
            f"{row['params_m']:.1f} M | {row['size_mb']:.1f} MB | {row['latency_ms_p50']:.2f} ms | "
            f"{row['throughput_b32']:.0f}/s | {relative} |")
    if front is not None:
        lines += ["", f"The front a sweep found in {front_budget_s / 60:.0f} min (`--objective "
                  f"val_accuracy:max --objective latency_ms_p50:min`, space plus `num_layers` and "
                  f"`quantize`), as `tunebert best --front` lists it:\n",
                  "| point | trial | val accuracy | latency p50 | layers | int8 |",
                  "|---:|---|---:|---:|---:|---|"]
        for point in front:
            config = point.get("config", {})
            lines.append(f"| {point['point']} | {point['trial_id']} | {100 * point['val_accuracy']:.2f} % | "
                         f"{point['latency_ms_p50']:.2f} ms | {config.get('num_layers') or 'all'} | "
                         f"{'yes' if config.get('quantize') else 'no'} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> Path:
    """Accuracy against latency, one point per variant (error bars over seeds), fp32 and int8
    marked apart: clean validation texts on the left, perturbed ones on the right, each panel on
    its own scale (the perturbed scores lie ~40 points lower: on one axis both would be flat)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, panels = plt.subplots(1, 2, figsize=(12, 4.8))
    for ax, key, title in ((panels[0], "val_accuracy", "clean validation texts"),
                           (panels[1], "val_accuracy_perturbed", f"perturbed: {PERTURB}")):
        for quantize, marker, color, label in ((False, "o", "tab:blue", "fp32"),
                                               (True, "s", "tab:orange", "int8")):
            mine = sorted((r for r in rows if r["quantize"] == quantize), key=lambda r: r["latency_ms_p50"])
            x = [r["latency_ms_p50"] for r in mine]
            y = [100 * statistics.mean(r[key]) for r in mine]
            err = [100 * statistics.stdev(r[key]) if len(r[key]) > 1 else 0.0 for r in mine]
            ax.errorbar(x, y, yerr=err, fmt=marker, ms=8, capsize=3, color=color,
                        label=f"{label} (mean ± std over seeds)")
            for i, (r, xi, yi) in enumerate(zip(mine, x, y)):
                # int8 labels below their points, fp32 above: the two never share a spot
                ax.annotate(r["variant"].split(",")[0], (xi, yi), xytext=(7, -13 if quantize else 6),
                            textcoords="offset points", fontsize=8, color=color)
        ax.margins(x=0.18, y=0.18)  # room for the labels beside the outermost points
        ax.set_xlabel("CPU latency p50 at batch 1 (ms)")
        ax.set_ylabel("validation accuracy (%)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    fig.suptitle("Fewer layers and int8: accuracy against latency")
    handles, labels = panels[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, frameon=False, bbox_to_anchor=(0.5, -0.02))
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def front_sweep(data: DataConfig, model: str, *, budget_s: float, storage: Path, out: Path,
                max_layers: int, epochs: Optional[int] = None) -> list[dict]:
    """A two-objective sweep (accuracy up, latency down) for ``budget_s`` seconds over the default
    space plus ``num_layers`` (1..``max_layers``) and ``quantize``; returns its front
    (``tuning.tracking.best.front_rows``) and copies the report's ``pareto.png`` to ``out``."""

    name = f"bench-deploy-front-{time.strftime('%Y%m%d-%H%M%S')}"
    space = storage / "deploy-front-space.yaml"
    space.parent.mkdir(parents=True, exist_ok=True)
    space.write_text(FRONT_SPACE % max_layers)
    settings = {"epochs": epochs} if epochs else {}
    cfg = SweepConfig(name=name, data=data, model=model, num_trials=1000, time_budget_s=budget_s,
                      storage=str(storage), objectives=("val_accuracy:max", "latency_ms_p50:min"),
                      space_file=str(space), seed=0, **settings)
    _say(f"front: a two-objective sweep for {budget_s / 60:.0f} min")
    run_sweep(cfg)
    goal = sweep_goal(name, storage=str(storage))
    rows = front_rows(front(name, goal=goal, storage=str(storage)), goal)
    report = build_report(name, storage=str(storage), log_to_mlflow=False)
    if "pareto" in report.figures:
        shutil.copy(report.figures["pareto"], out / "pareto.png")
    return rows
