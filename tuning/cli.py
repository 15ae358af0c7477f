"""``tunebert``: run, resume and inspect sweeps; export and train the best configs.

User mistakes end with one message on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any, Optional

from trainables.errors import UserError
from trainables.hparams import HPARAMS, choices_of
from tuning.config import POPULATION_SCHEDULERS, SCHEDULERS, SEARCHERS, TRAINABLE_CHOICES
from tuning import console

EXIT_USER_ERROR = 2


def _default(name: str) -> Any:
    """A sweep setting's default, as ``SweepConfig`` declares it (said once, read here)."""
    import dataclasses

    from tuning.config import SweepConfig

    f = next(f for f in dataclasses.fields(SweepConfig) if f.name == name)
    return f.default


def _doc(name: str) -> str:
    """A hyperparameter's doc line and default, from the registry."""
    p = HPARAMS[name]
    return f"{p.doc} (default: {p.default})"


def _duration(text: str) -> float:
    """Seconds from '600', '90s', '45m', '2h' or '1h30m'."""
    match = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", text)
    if not text.strip() or not match or not any(match.groups()):
        raise argparse.ArgumentTypeError(f"expected a duration such as 600, 45m, 2h or 1h30m, got {text!r}")
    h, m, s = (float(g) if g else 0.0 for g in match.groups())
    return h * 3600 + m * 60 + s


def _add_data_args(p: argparse.ArgumentParser, *, defaults: bool = True) -> None:
    """``defaults=False`` (train): left unset, so that --from-sweep can tell given from default."""
    g = p.add_argument_group("data")
    default = ("demo", "text", "label") if defaults else (None, None, None)
    where = "" if defaults else "the sweep's own with --from-sweep, else "
    g.add_argument("--data", default=default[0],
                   help="'demo' (built-in), a folder with train/validation/test files (.jsonl, "
                        ".json, .csv, .tsv, .parquet), or hf:<hub dataset id> "
                        f"(default: {where}demo)")
    g.add_argument("--text-column", default=default[1],
                   help=f"column holding the text (default: {where}text)")
    g.add_argument("--label-column", default=default[2],
                   help=f"column holding the label (default: {where}label)")
    # the rest default to None ("not given"); DataConfig declares the defaults
    from trainables.data import DEFAULT_VAL_FRACTION

    g.add_argument("--val-fraction", type=float, default=None, metavar="F",
                   help="carve a stratified validation split of this share of train (for data "
                        "without one; refused when the data has one, unless --split-names "
                        f"validation=none) (default: {where}{DEFAULT_VAL_FRACTION}, only when the "
                        "data has no validation split)")
    g.add_argument("--split-seed", type=int, default=None,
                   help=f"seed of that validation split (default: {where}0)")
    g.add_argument("--delimiter", default=None,
                   help="CSV delimiter: , ; tab or | (default: detected; tab for .tsv)")
    g.add_argument("--split-names", default=None, metavar="ROLE=NAME,...",
                   help="the dataset's own split (or file) names, e.g. "
                        "train=train,validation=dev,test=eval; validation=none carves validation "
                        "from train (default: train; validation, val, dev or valid; test)")
    g.add_argument("--skip-bad-rows", action="store_true", default=None,
                   help="drop rows with an empty text or a missing label and list them "
                        "(default: refuse such data, naming the rows)")


def data_options(args) -> dict[str, Any]:
    """``DataConfig`` keyword arguments for the data options besides --data/--text-column/
    --label-column that were given (``_add_data_args``)."""
    given = {"val_fraction": args.val_fraction, "split_seed": args.split_seed,
             "delimiter": args.delimiter, "split_names": args.split_names,
             "skip_bad_rows": args.skip_bad_rows}
    return {k: v for k, v in given.items() if v is not None}


def _add_store_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("where results go")
    g.add_argument("--storage", default="tunebert-runs",
                   help="root folder for Ray Tune state, checkpoints and the default MLflow store "
                        "(default: ./tunebert-runs)")
    g.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
                        "sqlite:///<storage>/mlflow.db)")


def add_sweep_arguments(p: argparse.ArgumentParser, *, time_budget_default: Optional[float] = None,
                        time_budget_help: str = "stop starting/running trials after this long "
                                                "(e.g. 2h, 45m)") -> None:
    """The options that define a sweep (read back by ``sweep_settings``); `sweep` and `tune` use them."""
    p.add_argument("--name", help="sweep name (default: sweep-<date>-<time>); resume uses it")
    p.add_argument("--trainable", choices=TRAINABLE_CHOICES, default=_default("trainable"),
                   help="what each trial trains: fine-tuning, contrastive pretraining + classifier "
                        "(SupCon/SimCLR), or any (the family is searched too)")
    p.add_argument("--model", default=_default("model"), help=_doc("model"))
    p.add_argument("--max-length", type=int, default=_default("max_length"), help=_doc("max_length"))
    p.add_argument("--trials", type=int, default=_default("num_trials"),
                   help="number of trials (default: %(default)s)")
    p.add_argument("--time-budget", type=_duration, default=time_budget_default, help=time_budget_help)
    p.add_argument("--epochs", type=int, default=_default("epochs"), help=_doc("epochs"))
    p.add_argument("--space", dest="space_file", help="YAML file that narrows/widens/fixes/drops "
                                                      "parameters (see `tunebert space`)")
    p.add_argument("--warm-start", default="",
                   help="comma-separated presets or config files to try first, e.g. "
                        "llrd_warmup,warmup or best.yaml (see `tunebert presets`)")
    p.add_argument("--searcher", choices=SEARCHERS, default=_default("searcher"))
    p.add_argument("--scheduler", choices=SCHEDULERS, default=_default("scheduler"),
                   help="asha: stop weak trials early; none: run every trial to the end; pbt/pb2: "
                        "population based training, weak trials clone strong ones and mutate "
                        "--mutate (for clusters with many workers) (default: %(default)s)")
    p.add_argument("--grace-period", type=int, default=_default("grace_period"),
                   help="ASHA: epochs before a trial can be stopped (default: %(default)s)")
    p.add_argument("--reduction-factor", type=int, default=_default("reduction_factor"),
                   help="ASHA: keep the best 1/N of the trials at each rung (default: %(default)s)")
    p.add_argument("--perturbation-interval", type=int, default=_default("perturbation_interval"),
                   help="pbt/pb2: epochs between perturbations (default: %(default)s)")
    p.add_argument("--quantile-fraction", type=float, default=_default("quantile_fraction"),
                   help="pbt/pb2: the worst fraction of the population clones the best fraction "
                        "(default: %(default)s)")
    p.add_argument("--mutate", default=",".join(_default("mutate")),
                   help="pbt/pb2: comma-separated numeric parameters of the space to mutate "
                        "(default: %(default)s)")
    p.add_argument("--asynchronous", dest="synchronous", action="store_false",
                   help="pbt/pb2: rank each trial when it reaches an interval, against the others' "
                        "latest scores, instead of waiting until all members reach the same epoch")
    p.add_argument("--seed", type=int, default=_default("seed"), help="seed of the sampler and of every trial")
    p.add_argument("--precision", choices=choices_of("precision"), default=_default("precision"),
                   help=_doc("precision"))
    g = p.add_argument_group("resources")
    g.add_argument("--address", help="join an existing Ray cluster (e.g. auto or ray://host:10001); "
                                     "default: start Ray locally")
    g.add_argument("--cpus-per-trial", type=float, default=_default("cpus_per_trial"))
    g.add_argument("--gpus-per-trial", type=float, default=_default("gpus_per_trial"),
                   help="fractions allowed, e.g. 0.5")
    g.add_argument("--max-concurrent", type=int, default=None, help="cap on trials running at once")
    g.add_argument("--wait-for-nodes", action="store_true",
                   help="with --address: queue trials even when no node has --cpus-per-trial/"
                        "--gpus-per-trial yet, because an autoscaler will add one (otherwise "
                        "refused: the trials would wait forever)")
    g.add_argument("--max-failures", type=int, default=_default("max_failures"),
                   help="retries of a crashed trial from its checkpoint")
    g.add_argument("--keep-checkpoints", type=int, default=_default("keep_checkpoints"),
                   help="checkpoints kept per running trial; a trial that has ended keeps only "
                        "its best epoch's model (default: %(default)s)")
    _add_data_args(p)
    _add_store_args(p)


def add_objective_arguments(p: argparse.ArgumentParser) -> None:
    """What `sweep` and `tune` optimise (read back by ``objective_settings``)."""
    g = p.add_argument_group("objectives and constraints")
    g.add_argument("--metric", default=None,
                   help=f"the metric to optimise (default: {_default('metric')}); see --objective "
                        f"for several")
    g.add_argument("--mode", choices=["max", "min"], default=None,
                   help=f"direction of --metric (default: {_default('mode')})")
    g.add_argument("--objective", action="append", default=[], metavar="METRIC:MODE",
                   help="repeatable: optimise several metrics at once, e.g. --objective "
                        "val_accuracy:max --objective latency_ms_p50:min (Optuna multi-objective "
                        "TPE; ASHA stops on the first, which must be reported every epoch; "
                        "`tunebert best --front` lists the Pareto front)")
    g.add_argument("--constraint", action="append", default=[], metavar="METRIC<=X",
                   help="repeatable: a trial must meet METRIC<=X or METRIC>=X to be feasible, e.g. "
                        "latency_ms_p50<=5, size_mb<=100, peak_memory_mb<=4000; an infeasible "
                        "trial (or one that never reported METRIC) is never best")


def objective_settings(args) -> dict[str, Any]:
    """``SweepConfig`` keyword arguments from ``add_objective_arguments``' options."""
    from trainables.errors import ConfigError
    from tuning.config import Constraint, Objective

    objectives = [Objective.parse(text) for text in args.objective]
    settings: dict[str, Any] = {"constraints": tuple(str(Constraint.parse(c)) for c in args.constraint)}
    if objectives:
        first = objectives[0]
        if (args.metric or first.metric, args.mode or first.mode) != (first.metric, first.mode):
            raise ConfigError(f"--metric/--mode ({args.metric}:{args.mode}) disagree with the first "
                              f"--objective ({first}); give one or the other")
        settings.update(metric=first.metric, mode=first.mode,
                        objectives=tuple(str(o) for o in objectives) if len(objectives) > 1 else ())
    else:
        settings.update(metric=args.metric or _default("metric"), mode=args.mode or _default("mode"))
    return settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tunebert",
        description="Hyperparameter sweeps for BERT-family text classifiers on Ray Tune, with "
                    "Optuna search and every trial in MLflow.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    # ---------------------------------------------------------------- sweep
    p = sub.add_parser("sweep", help="run a hyperparameter sweep",
                       description="Run a sweep: Optuna (TPE) proposes configs, ASHA stops weak "
                                   "trials early, every trial is logged to MLflow.")
    add_sweep_arguments(p)
    add_objective_arguments(p)
    p.add_argument("--smoke-test", action="store_true",
                   help="2 trials x 1 epoch, to check that everything is wired up")

    # ---------------------------------------------------------------- resume
    p = sub.add_parser("resume", help="resume a stopped or crashed sweep, or `tunebert tune` run, by name")
    p.add_argument("name")
    p.add_argument("--address", default=None)
    _add_store_args(p)

    # ---------------------------------------------------------------- best
    p = sub.add_parser("best", help="print or export the best config of a sweep (reads MLflow)")
    p.add_argument("name")
    p.add_argument("--metric", default=None,
                   help="rank by this one metric (default: the sweep's own objectives)")
    p.add_argument("--mode", choices=["max", "min"], default=None,
                   help="direction of --metric (default: the sweep's for it, else max)")
    p.add_argument("--front", action="store_true",
                   help="print the Pareto front of a sweep's objectives as a table (feasible, "
                        "non-dominated trials, best on the first objective first)")
    p.add_argument("--prefer", metavar="METRIC", default=None,
                   help="several objectives: hand back the front's point best on this objective "
                        "(default: the first objective)")
    p.add_argument("--top", type=int, default=1, help="show the top K trials instead of one config")
    p.add_argument("--format", choices=["yaml", "json"], default="yaml")
    p.add_argument("--output", "-o", help="write the config to this file instead of stdout")
    _add_store_args(p)

    # ---------------------------------------------------------------- train
    p = sub.add_parser("train", help="train one config and evaluate it on the test split",
                       description="Train one config (a YAML/JSON file, a preset, or a sweep's "
                                   "best) and report validation and test metrics to MLflow.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="YAML or JSON config file (e.g. from `tunebert best -o`)")
    src.add_argument("--preset", help="a named preset (see `tunebert presets`)")
    src.add_argument("--from-sweep", help="the best config of this sweep")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value (YAML syntax), repeatable: --set epochs=2")
    p.add_argument("--model", help="override the config's model")
    p.add_argument("--output-dir", help="also keep the trained model in this folder (a "
                                        "self-contained Hugging Face style model folder)")
    p.add_argument("--register-model", metavar="NAME", default=None,
                   help="also register the trained model in the MLflow Model Registry as a new "
                        "version of NAME, tagged with its sweep, trial, run and data fingerprint")
    p.add_argument("--experiment", default=None,
                   help="MLflow experiment (default: the sweep's for --from-sweep, else tunebert-train)")
    p.add_argument("--other-data", action="store_true",
                   help="with --from-sweep: train on --data/--text-column/--label-column although "
                        "the sweep was tuned on other data (refused without this flag)")
    _add_data_args(p, defaults=False)
    _add_store_args(p)
    p.add_argument("--smoke-test", action="store_true", help="1 epoch on at most 64 training examples")

    # ---------------------------------------------------------------- bench
    from tuning import bench

    p = sub.add_parser("bench", help="measure throughput, sweep overhead, search efficiency and "
                                     "the study's table (markdown + PNGs)")
    bench.add_arguments(p)

    # ---------------------------------------------------------------- select / report
    from tuning import pipeline
    from tuning import report as report_command
    from tuning import selection

    p = sub.add_parser("select", help=selection.HELP, description=selection.DESCRIPTION)
    selection.add_arguments(p)
    p = sub.add_parser("tune", help=pipeline.HELP, description=pipeline.DESCRIPTION)
    pipeline.add_arguments(p)
    p = sub.add_parser("report", help="HTML + PNG report of a sweep (history, importances, "
                                      "parallel coordinates, curves, confusion matrix)",
                       description="Write an HTML report with figures for a sweep to "
                                   "<storage>/reports/<name>/ and log it to the sweep's parent "
                                   "MLflow run under report/.")
    report_command.add_arguments(p)
    from tuning import predict

    p = sub.add_parser("predict", help=predict.HELP, description=predict.DESCRIPTION)
    predict.add_arguments(p)
    from tuning import evaluate

    p = sub.add_parser("evaluate", help=evaluate.HELP, description=evaluate.DESCRIPTION)
    evaluate.add_arguments(p)
    from tuning import ui

    p = sub.add_parser("ui", help=ui.HELP, description=ui.DESCRIPTION)
    ui.add_arguments(p)
    _add_store_args(p)

    # ---------------------------------------------------------------- presets / space
    sub.add_parser("presets", help="list the named presets (the study's configurations)")
    p = sub.add_parser("space", help="print the search space as YAML (with --space applied)")
    p.add_argument("--space", dest="space_file")
    p.add_argument("--trainable", choices=TRAINABLE_CHOICES, default=_default("trainable"))
    p.add_argument("--table", action="store_true",
                   help="print every hyperparameter as a Markdown table (default, allowed values, "
                        "default search range, phase) instead of the space")
    for command in sub.choices.values():
        console.add_arguments(command)
    return parser


def sweep_settings(args) -> dict[str, Any]:
    """``SweepConfig`` keyword arguments from the options ``add_sweep_arguments`` added."""
    from trainables.data import DataConfig

    settings: dict[str, Any] = dict(
        trainable=args.trainable,
        data=DataConfig(args.data, args.text_column, args.label_column, **data_options(args)),
        model=args.model,
        max_length=args.max_length, epochs=args.epochs, num_trials=args.trials,
        time_budget_s=args.time_budget, max_concurrent=args.max_concurrent,
        cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
        storage=args.storage, tracking_uri=args.tracking_uri, address=args.address,
        max_failures=args.max_failures, keep_checkpoints=args.keep_checkpoints, seed=args.seed,
        precision=args.precision, space_file=args.space_file,
        warm_start=tuple(s.strip() for s in args.warm_start.split(",") if s.strip()),
        searcher=args.searcher, scheduler=args.scheduler, grace_period=args.grace_period,
        reduction_factor=args.reduction_factor, perturbation_interval=args.perturbation_interval,
        quantile_fraction=args.quantile_fraction, synchronous=args.synchronous,
        wait_for_nodes=args.wait_for_nodes,
        mutate=tuple(s.strip() for s in args.mutate.split(",") if s.strip()))
    if args.name:
        settings["name"] = args.name
    return settings


def _sweep(args) -> int:
    from tuning.config import SweepConfig
    from tuning.runner import run_sweep

    settings = {**sweep_settings(args), **objective_settings(args)}
    if args.smoke_test:  # PBT perturbs after epoch 1: its smoke test trains a second one
        settings.update(num_trials=2, epochs=2 if settings["scheduler"] in POPULATION_SCHEDULERS else 1,
                        grace_period=1, perturbation_interval=1)
    outcome = run_sweep(SweepConfig(**settings))
    _print_outcome(outcome, args.storage)
    return 0


def changed_from_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """The values of ``config`` that differ from its trainable's defaults: what a sweep chose."""
    from trainables import registry

    defaults = registry.resolve_config({"trainable": config.get("trainable", "finetune")})
    return {k: v for k, v in config.items()
            if k not in ("model", "max_length", "seed") and defaults.get(k, object()) != v}


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
    from tuning.tracking import redact

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
    f1 = best.score('val_macro_f1') if 'val_macro_f1' in best.metrics else float('nan')
    print(f"[tunebert] best trial {best.trial_id}: val_accuracy {best.score('val_accuracy'):.4f}, "
          f"val_macro_f1 {f1:.4f}")
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


def _resume(args) -> int:
    from tuning import pipeline
    from tuning.runner import resume_sweep

    if pipeline.exists(args.name, args.storage):  # started by `tunebert tune`: continue all of it
        return pipeline.resume(args)
    changes = {}
    if args.tracking_uri:
        changes["tracking_uri"] = args.tracking_uri
    if args.address:
        changes["address"] = args.address
    outcome = resume_sweep(args.name, args.storage, **changes)
    _print_outcome(outcome, args.storage)
    return 0


def reachable_store(tracking_uri: Optional[str], storage: str) -> str:
    """The MLflow store a command reads, refused within seconds when MLflow cannot use or reach
    it (MLflow's own HTTP retries wait minutes)."""
    from tuning import tracking
    from tuning.config import resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri, Path(storage).expanduser().resolve())
    tracking.bound_http_waits()
    tracking.check_store(uri)
    return uri


def _best(args) -> int:
    import yaml

    from tuning.best import front, front_rows, sweep_goal, top_k

    reachable_store(args.tracking_uri, args.storage)
    goal = sweep_goal(args.name, tracking_uri=args.tracking_uri, storage=args.storage).preferring(args.prefer)
    if args.front:
        if args.metric:
            raise UserError("--front lists the Pareto front of the sweep's own objectives; leave "
                            "out --metric (or use --top K to rank by one metric)")
        runs = front(args.name, goal=goal, tracking_uri=args.tracking_uri, storage=args.storage)
        if not runs:
            raise UserError(f"sweep {args.name!r} has no finished trial with {goal.wanted()} yet "
                            f"(val_accuracy_int8 is reported at a trial's last epoch: trials "
                            f"ASHA stopped early have none)")
        rows = front_rows(runs, goal)
        text = json.dumps(rows, indent=2) if args.format == "json" else _front_table(args.name, goal, rows)
    else:
        runs = top_k(args.name, max(1, args.top), args.metric, args.mode, goal=goal,
                     tracking_uri=args.tracking_uri, storage=args.storage)
        if not runs:
            ranked_by = f"a finite {args.metric!r}" if args.metric else goal.wanted()
            raise UserError(f"sweep {args.name!r} has no finished trial with {ranked_by} yet")
        metrics = [args.metric] if args.metric else goal.metrics
        if args.top > 1:
            rows = [{"rank": i + 1, "trial_id": r.trial_id, "run_id": r.run_id,
                     **{m: r.score(m) for m in metrics},
                     "epoch": int(r.metrics.get("best_epoch", 0)) or None, "config": r.config}
                    for i, r in enumerate(runs)]
            text = json.dumps(rows, indent=2) if args.format == "json" else yaml.safe_dump(rows, sort_keys=False)
        else:
            config = runs[0].config
            text = json.dumps(config, indent=2, sort_keys=True) if args.format == "json" \
                else yaml.safe_dump(config, sort_keys=True)
    if args.output:
        Path(args.output).write_text(text)
        what = "Pareto front" if args.front else "best config"
        scores = ", ".join(f"{m} {runs[0].score(m):.4g}" for m in ([args.metric] if args.metric else goal.metrics))
        print(f"[tunebert] wrote the {what} of {args.name!r} ({scores}) to {args.output}", file=sys.stderr)
    else:
        print(text, end="" if text.endswith("\n") else "\n")
    return 0


def _front_table(name: str, goal, rows: list[dict]) -> str:
    """``front_rows`` as an aligned text table under a line that says how to read it."""
    columns = [c for c in rows[0] if c != "config"]
    cells = [[f"{row[c]:.4g}" if isinstance(row[c], float) else str(row[c]) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    line = lambda values: "  ".join(v.ljust(w) for v, w in zip(values, widths)).rstrip()  # noqa: E731
    return "\n".join([f"# Pareto front of sweep {name!r}: {goal}. Feasible finished trials that no "
                      f"other one beats on every objective, best on {goal.metrics[0]} first; row 1 is "
                      f"what `tunebert best {name}` hands back.",
                      line(columns), line(["-" * w for w in widths]), *map(line, cells)]) + "\n"


def _parse_set(items: list[str]) -> dict[str, Any]:
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set expects KEY=VALUE, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _train(args) -> int:
    from search_spaces.presets import get_preset
    from tuning.best import best_run
    from tuning.config import load_config_file
    from tuning.train import check_output_dir, train_config

    uri = reachable_store(args.tracking_uri, args.storage)
    experiment = args.experiment or "tunebert-train"
    tags = {}
    if args.config:
        config = load_config_file(args.config)
    elif args.preset:
        config = get_preset(args.preset)
    else:
        best = best_run(args.from_sweep, tracking_uri=args.tracking_uri, storage=args.storage)
        config = dict(best.config)
        experiment = args.experiment or args.from_sweep
        tags.update({"tunebert.from_sweep": args.from_sweep, "tunebert.from_trial_id": best.trial_id,
                     "tunebert.from_trial_run_id": best.run_id})
    config.update(_parse_set(args.set))
    if args.model:
        config["model"] = args.model
    if args.smoke_test:
        config.update(epochs=1, stop_epoch=None)
    check_output_dir(args.output_dir)
    outcome = train_config(config, _train_data(args), tracking_uri=uri, experiment=experiment,
                           output_dir=args.output_dir, tags=tags,
                           max_train_examples=64 if args.smoke_test else None,
                           register_model=args.register_model)
    if outcome.checkpoint_dir:
        print(f"[tunebert] model folder: {outcome.checkpoint_dir} "
              f"(tunebert predict {outcome.checkpoint_dir} TEXT)")
    print(f"[tunebert] MLflow model: {outcome.model_uri}"
          + (f", registered as {outcome.registered_uri}" if outcome.registered_uri else ""),
          flush=True)
    return 0


def _train_data(args):
    """The data `tunebert train` uses: with --from-sweep the sweep's own (as `select`), where other
    data, or the same folder with changed contents, is refused unless --other-data says it is
    meant; else --data or the demo."""
    import dataclasses

    from trainables.data import DataConfig, data_fingerprint, load_raw_splits
    from trainables.errors import ConfigError
    from tuning.config import load_saved_sweep
    from tuning.selection import resolve_data

    given = {k: v for k, v in (("source", args.data), ("text_column", args.text_column),
                               ("label_column", args.label_column)) if v is not None}
    given.update(data_options(args))
    if not args.from_sweep:
        return DataConfig(**given)
    try:
        swept = resolve_data(args.from_sweep, args.storage)
    except ConfigError:
        if "source" not in given:
            raise
        return DataConfig(**given)  # the sweep's settings are not here: the data given is all we know
    asked = DataConfig(**{**swept.to_dict(), **given})
    if args.other_data:  # other data: the rows the sweep carved as validation are not its own
        return dataclasses.replace(asked, validation_ids=None)
    if asked.anchored() != swept.anchored():
        split_changes = {k: v for k, v in asked.to_dict().items()
                         if k in data_options(args) and swept.to_dict()[k] != v}
        raise ConfigError(
            f"sweep {args.from_sweep!r} was tuned on --data {swept.source!r} (text column "
            f"{swept.text_column!r}, label column {swept.label_column!r}), but this command asks "
            f"for {asked.source!r} ({asked.text_column!r}/{asked.label_column!r}"
            f"{''.join(f', {k}={v!r}' for k, v in split_changes.items())}): the test score "
            f"would not be the tuned config's on its own data, yet it would be logged in the "
            f"sweep's experiment. Leave out --data/--text-column/--label-column (and the other "
            f"data options) to train on the "
            f"sweep's data, or add --other-data to train on other data on purpose.")
    fingerprint = load_saved_sweep(args.from_sweep, args.storage).data_fingerprint
    if fingerprint and data_fingerprint(load_raw_splits(asked)) != fingerprint:
        raise ConfigError(
            f"the data of sweep {args.from_sweep!r} ({swept.source!r}) changed since the sweep ran "
            f"(its fingerprint differs): the test score would not be the tuned config's on the data "
            f"it was tuned on. Put the original files back, or add --other-data to train on the "
            f"data as it is now.")
    return asked


def _presets(args) -> int:
    import yaml

    from search_spaces.presets import PRESETS, STUDY_TEST_ACCURACY

    for name, values in PRESETS.items():
        if name in STUDY_TEST_ACCURACY:
            print(f"# {name} (study, bert-base-uncased on MASSIVE: {STUDY_TEST_ACCURACY[name]} % "
                  f"test accuracy)")
        else:
            print(f"# {name} (a careful hand-written config, not from the study: MiniLM-L6 on "
                  f"MASSIVE 88.9 % test; `tunebert tune` tries it first)")
        print(yaml.safe_dump({name: values}, sort_keys=False))
    return 0


def _space(args) -> int:
    import yaml

    if args.table:
        from trainables.hparams import markdown_table

        print(markdown_table(), end="")
        return 0
    from tuning.config import SweepConfig
    from tuning.runner import build_space

    space = build_space(SweepConfig(trainable=args.trainable, space_file=args.space_file))
    described = space.describe()
    described.pop("trainable", None)  # the family is chosen with --trainable, not in the file
    print(f"# tunebert search space (--trainable {args.trainable}); copy, edit, pass with --space FILE")
    print(yaml.safe_dump(described, sort_keys=False), end="")
    return 0


def _bench(args) -> int:
    from tuning import bench

    return bench.run(args)


def _select(args) -> int:
    from tuning import selection

    reachable_store(args.tracking_uri, args.storage)
    return selection.run(args)


def _report(args) -> int:
    from tuning import report

    reachable_store(args.tracking_uri, args.storage)
    return report.run(args)


def _tune(args) -> int:
    from tuning import pipeline

    return pipeline.run(args)


def _predict(args) -> int:
    from tuning import predict

    return predict.run(args)


def _evaluate(args) -> int:
    from tuning import evaluate

    return evaluate.run(args)


def _ui(args) -> int:
    from tuning import ui

    return ui.run(args, reachable_store(args.tracking_uri, args.storage))


COMMANDS = {"sweep": _sweep, "resume": _resume, "best": _best, "train": _train,
            "presets": _presets, "space": _space, "bench": _bench, "select": _select,
            "report": _report, "tune": _tune, "predict": _predict,
            "evaluate": _evaluate, "ui": _ui}


def refuse_password_arguments(args) -> None:
    """A password on the command line is readable by everyone on the machine (``ps``,
    ``/proc/PID/cmdline``), kept in shell history and recorded by Ray with the driver's job:
    tunebert takes passwords from the environment only (issue 11 item 12)."""
    from tuning.credentials import has_password, redact

    uri = getattr(args, "tracking_uri", None)
    if uri and has_password(uri):
        raise UserError(
            f"--tracking-uri {redact(uri)} carries a password on the command line, where anyone on "
            f"this machine can read it (ps, /proc) and the shell keeps it in its history. Pass it "
            f"in the environment instead: export MLFLOW_TRACKING_URI='<the URI with its "
            f"password>' and leave --tracking-uri out; or leave the password out of the URI and "
            f"set PGPASSWORD (or ~/.pgpass) for PostgreSQL, MLFLOW_TRACKING_USERNAME and "
            f"MLFLOW_TRACKING_PASSWORD for an MLflow server")


def main(argv: Optional[list[str]] = None) -> int:
    from tuning.interrupt import Interrupted, exit_soon, raise_on_sigterm

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # the exact command line, for outputs that record how they were made
    console.setup(args.verbosity)
    raise_on_sigterm()  # docker stop, Kubernetes: stop as cleanly as Ctrl-C does
    try:
        refuse_password_arguments(args)
        return COMMANDS[args.command](args)
    except UserError as exc:  # a password in any URI it names (--address ray://u:pw@h) is masked
        from tuning.credentials import redact

        print(f"tunebert {args.command}: error: {redact(str(exc))}", file=sys.stderr)
        return EXIT_USER_ERROR
    except BrokenPipeError:  # output piped into `head` and the like
        return 0
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM as interrupt.Interrupted
        signame = f" by {exc.args[0]}" if isinstance(exc, Interrupted) else ""
        if getattr(exc, "resume_hint", None):  # a sweep: its runs are marked KILLED in MLflow
            hint = f"; the sweep stopped and is marked KILLED in MLflow; resume with: {exc.resume_hint}"
        else:
            name = getattr(args, "name", None)
            hint = f"; resume with: tunebert resume {name}" if name and args.command in ("sweep", "resume") else ""
        print(f"\ntunebert {args.command}: interrupted{signame}{hint}", file=sys.stderr)
        if not isinstance(exc, Interrupted):
            return 130
        exit_soon(exc.exit_status)  # a real stop signal: do not wait a minute for a Ray that is gone
        return exc.exit_status


if __name__ == "__main__":
    sys.exit(main())
