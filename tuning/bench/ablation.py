"""The recipe ablation (``tunebert bench --parts ablation``): what each training-recipe knob is
worth on its own, at the same number of epochs, over several seeds, on VALIDATION only.

Every row is one base config plus one change; each (row, seed) is trained with ``train_config``
(best-epoch model, validation only: the test split is not even tokenized), so the numbers are the
ones a sweep would rank by. Two-pass knobs (R-Drop, joint SupCon) see the same examples but cost
about 1.7x the compute per epoch; the wall time per run is reported beside the score.
"""

from __future__ import annotations

import logging
import statistics
from pathlib import Path
from typing import Any, Optional

import tuning.results.jobs as training_jobs
from search_spaces.presets import PRESETS
from trainables.data import DataConfig
from tuning.results.jobs import bench_job

# The hand-written config: AdamW, lr 1e-4, batch 32, 4 epochs, mean pooling, linear
# head, 10 % linear warm-up, weight decay 0.01 (these are also the trainable's defaults).
HAND_CONFIG: dict[str, Any] = dict(PRESETS["hand"])

# One typical value per knob (the literature's defaults): EMA 0.999 (timm), SWA over the last
# half of the epochs (Izmailov et al. average the last quarter to half), R-Drop alpha 1 (Liang et
# al. use 0.3..5 for GLUE-sized tasks), joint SupCon lambda 0.1 at temperature 0.3 (Gunel et
# al.'s best full-data settings).
VARIANTS: dict[str, dict[str, Any]] = {
    "base (hand config)": {},
    "+ EMA of weights (decay 0.999)": {"ema_decay": 0.999},
    "+ SWA over the last 2 epochs": {"swa_epochs": 2},
    "+ R-Drop (alpha 1)": {"rdrop_alpha": 1.0},
    "+ joint SupCon (lambda 0.1, tau 0.3)": {"supcon_lambda": 0.1, "supcon_temperature": 0.3},
}

log = logging.getLogger(__name__)

EXPERIMENT = "bench-ablation"


def _say(message: str) -> None:
    log.info(f"bench: ablation: {message}")


def run_ablation(data: DataConfig, model: str, *, seeds: int, epochs: Optional[int], uri: str,
                 workers: int = 1, variants: Optional[dict[str, dict]] = None,
                 max_train_examples: Optional[int] = None,
                 storage: Optional[Path] = None) -> list[dict[str, Any]]:
    """One row per variant: its per-seed validation accuracies (best epoch) and mean wall
    seconds, read from the jobs' MLflow runs. Each (row, seed) is a resumable job
    (``tuning.results.jobs.run_bench_jobs``; with ``storage`` it continues from its checkpoint)."""
    variants = variants or VARIANTS
    base = {**HAND_CONFIG, "model": model, **({"epochs": epochs} if epochs else {})}
    fit = {"swa_epochs": lambda k: min(k, base["epochs"])}  # a shortened run (smoke test)
    jobs = {name: [bench_job(f"{name} seed{seed}",
                             {**base, **{k: fit.get(k, lambda v: v)(v) for k, v in changes.items()},
                              "seed": seed}, data, uri=uri, experiment=EXPERIMENT, storage=storage,
                             max_train_examples=max_train_examples, evaluate_test=False,
                             log_model=False)
                   for seed in range(seeds)] for name, changes in variants.items()}
    _say(f"{len(variants)} variants x {seeds} seeds, {workers} at a time")
    records = training_jobs.run_bench_jobs([job for mine in jobs.values() for job in mine], uri=uri,
                             experiment=EXPERIMENT, workers=workers, say=_say)
    rows = []
    for name, changes in variants.items():
        mine = [records[job.name] for job in jobs[name]]
        metrics = [r["metrics"] for r in mine]
        rows.append({"variant": name, "changes": changes,
                     "val_accuracy": [m.get("best_val_accuracy", m["val_accuracy"]) for m in metrics],
                     "val_macro_f1": [m.get("best_val_macro_f1", m["val_macro_f1"]) for m in metrics],
                     "seconds": statistics.mean(r["seconds"] for r in mine)})
    return rows


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def markdown(rows: list[dict], *, seeds: int, epochs: int) -> str:
    base_mean = _mean_std(rows[0]["val_accuracy"])[0]
    lines = [f"Validation accuracy (best epoch) on MASSIVE en-US, {epochs} epochs, {seeds} seeds each "
             f"(0..{seeds - 1}); test not read. Δ is against the base row.\n",
             "| variant | val accuracy (mean ± std) | Δ vs base | val macro-F1 | s per run |",
             "|---|---:|---:|---:|---:|"]
    for row in rows:
        mean, std = _mean_std(row["val_accuracy"])
        f1 = statistics.mean(row["val_macro_f1"])
        delta = "—" if row is rows[0] else f"{100 * (mean - base_mean):+.2f}"
        lines.append(f"| {row['variant']} | {100 * mean:.2f} ± {100 * std:.2f} % | {delta} | "
                     f"{100 * f1:.2f} % | {row['seconds']:.0f} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["variant"] for r in rows]
    stats = [_mean_std(r["val_accuracy"]) for r in rows]
    fig, ax = plt.subplots(figsize=(8, 0.55 * len(rows) + 1.4))
    y = range(len(rows))[::-1]
    ax.barh(list(y), [100 * m for m, _ in stats], xerr=[100 * s for _, s in stats], color=[
        "tab:gray"] + ["tab:blue"] * (len(rows) - 1), capsize=4)
    for yi, row in zip(y, rows):
        ax.scatter([100 * v for v in row["val_accuracy"]], [yi] * len(row["val_accuracy"]),
                   color="black", s=12, zorder=3)
    low = min(100 * v for r in rows for v in r["val_accuracy"])
    high = max(100 * v for r in rows for v in r["val_accuracy"])
    ax.set_xlim(low - 1.0, high + 0.6)
    ax.set_yticks(list(y), names)
    ax.axvline(100 * stats[0][0], color="tab:gray", ls="--", lw=1)
    ax.set_xlabel("validation accuracy, % (bars: mean ± std; dots: seeds)")
    ax.set_title("Recipe ablation: each knob alone on the hand config")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
