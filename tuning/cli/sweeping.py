"""``tunebert sweep`` and ``tunebert resume``: run or continue a sweep and print its summary."""

from __future__ import annotations

from typing import Any

import tuning.results.pipeline as pipeline
from trainables import registry
from tuning.config import POPULATION_SCHEDULERS, SweepConfig
from tuning.credentials import redact
from tuning.settings import objective_settings, sweep_settings
import tuning.sweep.runner as runner


def sweep(args) -> int:
    """``tunebert sweep``."""
    settings = {**sweep_settings(args), **objective_settings(args)}
    if args.smoke_test:  # PBT perturbs after epoch 1: its smoke test trains a second one
        settings.update(num_trials=2, epochs=2 if settings["scheduler"] in POPULATION_SCHEDULERS else 1,
                        grace_period=1, perturbation_interval=1)
    outcome = runner.run_sweep(SweepConfig(**settings))
    _print_outcome(outcome, args.storage)
    return 0


def changed_from_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """The values of ``config`` that differ from its trainable's defaults: what a sweep chose."""
    defaults = registry.resolve_config({"trainable": config.get("trainable", "finetune")})
    return {k: v for k, v in config.items()
            if k not in ("model", "max_length", "seed") and defaults.get(k, object()) != v}


# the best trial's scores the summary shows, those it has (a multitask trial's val_accuracy is its
# intent accuracy, shown once)
SUMMARY_METRICS = ("val_sentence_accuracy", "val_task_mean", "val_accuracy", "val_intent_accuracy",
                   "val_slot_f1", "val_macro_f1")


def _wrapped(pairs: list[str], width: int = 96, indent: str = "  ") -> list[str]:
    lines, line = [], ""
    for pair in pairs:
        if line and len(line) + 1 + len(pair) > width:
            lines.append(indent + line)
            line = pair
        else:
            line = f"{line} {pair}".strip()
    return lines + ([indent + line] if line else [])


def _print_outcome(outcome, storage: str) -> None:
    """The sweep's summary, printed also with -q: counts, the best trial, where everything is,
    what to run next, the best config (what it changes from the defaults) and the UI command."""
    uri = outcome.tracking_uri
    where = "" if storage == "tunebert-runs" else f" --storage {storage}"
    print()
    print(f"[tunebert] sweep {outcome.name!r} done in {outcome.wall_s / 60:.1f} min: "
          f"{outcome.counts['FINISHED']} finished, {outcome.counts['FAILED']} failed, "
          f"{outcome.counts['KILLED']} killed")
    if outcome.best is None:
        print("[tunebert] no trial finished with a finite metric; nothing to recommend")
        return
    best = outcome.best
    print(f"[tunebert] best trial {best.trial_id}: " + ", ".join(
        f"{key} {best.score(key):.4f}" for key in SUMMARY_METRICS if f"best_{key}" in best.metrics
        and not (key == "val_accuracy" and "best_val_intent_accuracy" in best.metrics)))
    print(f"[tunebert] results:   {outcome.sweep_dir} (Ray Tune state, checkpoints, best_config.yaml)")
    print(f"[tunebert] MLflow:    {redact(uri)} (experiment {outcome.name!r})")
    print(f"[tunebert] next:      tunebert train --from-sweep {outcome.name}{where}"
          f"   # retrain the best config and evaluate it on test")
    changed = changed_from_defaults(best.config)
    print(f"[tunebert] best config (its values that differ from the defaults; all of them in "
          f"best_config.yaml, `tunebert best {outcome.name}{where}`):")
    for line in _wrapped([f"{k}={_short(v)}" for k, v in sorted(changed.items())]) or ["  (the defaults)"]:
        print(line)
    print(f"[tunebert] MLflow UI: tunebert ui --name {outcome.name}{where}"
          f"   # the sweep's runs table, its trials and their curves")


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def resume(args) -> int:
    """``tunebert resume``: a sweep, or a ``tunebert tune`` run (all of it)."""
    if pipeline.exists(args.name, args.storage):  # started by `tunebert tune`: continue all of it
        return pipeline.resume(args)
    changes = {}
    if args.tracking_uri:
        changes["tracking_uri"] = args.tracking_uri
    if args.address:
        changes["address"] = args.address
    outcome = runner.resume_sweep(args.name, args.storage, **changes)
    _print_outcome(outcome, args.storage)
    return 0
