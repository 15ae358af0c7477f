"""`tunebert bench`: its options and the run that calls each part and writes results.md,
results.json and the PNGs (then logs them to MLflow as a ``tunebert-bench`` run)."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import tuning.bench.ablation as ablation
import tuning.bench.compare as compare
import tuning.bench.deploy as deploy
import tuning.bench.joint as joint
import tuning.bench.scale as scale
import tuning.bench.ship as ship
import tuning.tracking as tracking
from trainables.data import DataConfig
from trainables.errors import UserError
from trainables.models import load_encoder, num_encoder_layers
from trainables.task_data import is_multitask_data
from tuning.bench import PARTS, parts_of
from tuning.bench.common import BenchReport, load_data, say, subset_folder
from tuning.bench.quality import search, study_table, table_job_names
from tuning.bench.speed import overhead, throughput
from tuning.config import resolve_tracking_uri
from tuning.results.jobs import pick_jobs

# the options that count something: each must be at least 1 (None: the option's own default)
COUNTS = ("batches", "batch_size", "repeats", "overhead_trials", "overhead_subset",
          "search_epochs", "seeds", "table_epochs", "table_workers", "ablation_epochs",
          "ablation_workers", "joint_subset")
# the options that are seconds of search: each must be finite and > 0 (front: >= 0, 0 skips it)
BUDGETS = ("search_budget", "tune_budget")


def check_sizes(args) -> None:
    """Refuse, before any work, a count below 1 or a budget that is no positive number of
    seconds: zero batches or repeats left nothing to time, and zero seeds nothing to average."""
    import math

    def option(name: str) -> str:
        return "--" + name.replace("_", "-")

    for name in COUNTS:
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UserError(f"{option(name)} must be at least 1, but got {value}")
    for name in BUDGETS:
        value = getattr(args, name)
        if not (math.isfinite(value) and value > 0):
            raise UserError(f"{option(name)} must be a number of seconds > 0, but got {value:g}")
    if not (math.isfinite(args.front_budget) and args.front_budget >= 0):
        raise UserError(f"--front-budget must be a number of seconds >= 0 (0 skips the front "
                        f"sweep), but got {args.front_budget:g}")


def run(args) -> int:
    import shlex
    import sys

    parts = parts_of(args.parts)
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise UserError(f"--parts: unknown part(s) {unknown}; choose from {list(PARTS)}")
    check_sizes(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    storage = Path(args.storage).expanduser().resolve()
    data_cfg = DataConfig(args.data, args.text_column, args.label_column)
    if args.smoke_test:
        args.batches, args.repeats, args.overhead_trials, args.overhead_subset = 3, 1, 2, 64
        args.search_budget, args.search_epochs, args.seeds = 20, 1, 1
        args.front_budget = min(args.front_budget, 20)
        args.table_epochs = args.table_epochs or 1
    presets = tuple(p.strip() for p in args.presets.split(",") if p.strip())
    if args.jobs is not None:
        if "table" not in parts:
            raise UserError(f"--jobs picks jobs of the table part, but --parts {args.parts!r} has no "
                            f"table; add it, or leave --jobs out")

        pick_jobs(table_job_names(presets, args.seeds, tuned="search" in parts), args.jobs)
    if args.smoke_test:
        args.scale_sizes = "0.002,0.004"
    if args.smoke_test and not is_multitask_data(data_cfg):  # joint jobs cut train themselves
        data_cfg = DataConfig(str(subset_folder(data_cfg, 128, storage / "smoke-data")))
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
                    workers=args.table_workers, pick=args.jobs, smoke=args.smoke_test)
    if "ablation" in parts:
        _ablation_part(data_cfg, args, report, storage, out)
    if "compare" in parts:
        _compare_part(data_cfg, args, report, storage, out)
    if "deploy" in parts:
        _deploy_part(data_cfg, args, report, storage, out)
    if {"joint-hand", "joint-knobs", "joint-tune"} & set(parts):
        _joint_parts(data_cfg, args, parts, report, storage, out)
    if "scale" in parts:
        scale.run_part(data_cfg, args, report, storage, out)
    if {"ship-knobs", "ship-tune"} & set(parts):
        _ship_parts(data_cfg, args, parts, report, storage, out)
    text = report.markdown(command)
    (out / "results.md").write_text(text)
    (out / "results.json").write_text(json.dumps(report.numbers, indent=2))
    _log_to_mlflow(storage, out)
    print(text)
    say(f"wrote {out / 'results.md'}")
    return 0


def _compare_part(data_cfg: DataConfig, args, report: BenchReport, storage: Path, out: Path) -> None:
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


def _deploy_part(data_cfg: DataConfig, args, report: BenchReport, storage: Path, out: Path) -> None:

    layers = num_encoder_layers(load_encoder(args.model))
    fewer = tuple(k for k in (deploy.LAYERS if not args.smoke_test else (1,)) if k < layers)
    rows = deploy.run_variants(data_cfg, args.model, seeds=args.seeds,
                               uri=resolve_tracking_uri(None, storage), storage=storage, layers=fewer,
                               epochs=1 if args.smoke_test else None)
    front = None
    if args.front_budget > 0:
        front = deploy.front_sweep(data_cfg, args.model, budget_s=args.front_budget, storage=storage,
                                   out=out, max_layers=layers, epochs=1 if args.smoke_test else None)
    report.add("g. Deployment trade-offs", deploy.markdown(rows, seeds=args.seeds, front=front,
                                                           front_budget_s=args.front_budget))
    for row in rows:
        key = row["variant"].replace(", ", "_").replace(" ", "_")
        report.numbers[f"deploy_{key}_val_mean"] = statistics.mean(row["val_accuracy"])
        report.numbers[f"deploy_{key}_latency_ms_p50"] = row["latency_ms_p50"]
    (out / "deploy.json").write_text(json.dumps({"variants": rows, "front": front}, indent=2, default=str))
    report.figures.append(str(deploy.plot(rows, out / "deploy.png")))
    if (out / "pareto.png").is_file():
        report.figures.append(str(out / "pareto.png"))


def _joint_parts(data_cfg: DataConfig, args, parts: list[str], report: BenchReport, storage: Path,
                 out: Path) -> None:
    """h. Joint intent + slot: the hand baseline (also for joint-tune's margin), the knobs, tune."""
    uri, smoke = resolve_tracking_uri(None, storage), args.smoke_test
    hand = joint.hand_baseline(data_cfg, args.model, seeds=args.seeds, uri=uri,
                               epochs=1 if smoke else None, storage=storage)
    report.add("h. Joint intent + slot: the hand baseline", joint.hand_markdown(hand))
    numbers = {f"joint_hand_test_{k}_mean": statistics.mean(r[f"test_{k}"] for r in hand)
               for k in joint.SCORES}
    if "joint-knobs" in parts:
        epochs = args.ablation_epochs or (1 if smoke else joint.HAND_CONFIG["epochs"])
        subset = 64 if smoke else args.joint_subset
        rows = joint.knob_effects(data_cfg, args.model, seeds=args.seeds, uri=uri, epochs=epochs,
                                  workers=args.ablation_workers, max_train_examples=subset,
                                  storage=storage)
        report.add("h. Joint intent + slot: each knob alone",
                   joint.knobs_markdown(rows, seeds=args.seeds, epochs=epochs, subset=subset))
        (out / "joint-knobs.json").write_text(json.dumps(rows, indent=2))
        report.figures.append(str(joint.plot_knobs(rows, out / "joint-knobs.png")))
    tuned = None
    if "joint-tune" in parts:
        tuned = compare.tune_pipeline(data_cfg, args.model, budget_s=args.tune_budget, storage=storage,
                                      name=f"bench-joint-tune-{time.strftime('%Y%m%d-%H%M%S')}",
                                      smoke=smoke, extra=["--trainable", "multitask"])
        report.add("h. Joint intent + slot: tunebert tune against the targets",
                   joint.tune_markdown(hand, tuned, args.tune_budget))
        numbers.update({f"joint_tuned_test_{k}": tuned.get(f"test_{k}") for k in joint.SCORES})
    report.numbers.update(numbers)
    (out / "joint.json").write_text(json.dumps({"hand": hand, "tuned": tuned}, indent=2, default=str))


def _ship_parts(data_cfg: DataConfig, args, parts: list[str], report: BenchReport, storage: Path,
                out: Path) -> None:
    uri = resolve_tracking_uri(None, storage)
    if "ship-knobs" in parts:
        # two seeds at least: the teacher is the ensemble of the hand config's seed models
        knobs = ship.run_knobs(data_cfg, args.model, seeds=max(2, args.seeds), uri=uri, storage=storage,
                               epochs=1 if args.smoke_test else None,
                               max_train_examples=64 if args.smoke_test else None,
                               workers=args.ablation_workers)
        report.add("i. The model worth shipping: typo-robust training, distillation, baselines",
                   ship.knobs_markdown(knobs))
        for row in knobs["rows"]:
            key = row["variant"].split(" (")[0].replace(" + ", "_").replace(" ", "_").replace(":", "").lower()
            report.numbers[f"ship_{key}_test_mean"] = ship._mean(row["test_accuracy"])
        (out / "ship-knobs.json").write_text(json.dumps(knobs, indent=2))
    if "ship-tune" in parts:
        tuned = ship.run_tune(data_cfg, args.model, budget_s=args.tune_budget, storage=storage,
                              smoke=args.smoke_test)
        report.add("j. The model worth shipping: `tunebert tune` and its hand-over candidates",
                   ship.tune_markdown(tuned, args.tune_budget))
        report.numbers["ship_tune_handed_over_test"] = tuned["test_accuracy"]
        (out / "ship-tune.json").write_text(json.dumps(tuned, indent=2, default=str))


def _log_to_mlflow(storage: Path, out: Path) -> None:

    run = tracking.TrainRun(resolve_tracking_uri(None, storage), "tunebert-bench",
                            {"trainable": "bench"}, f"bench-{time.strftime('%Y%m%d-%H%M%S')}",
                            tags={"tunebert.kind": "bench"})
    run.log_artifacts(str(out), "bench")
    run.end("FINISHED")
