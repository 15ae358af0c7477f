"""``tunebert``: run, resume and inspect sweeps; export and train the best configs.

User mistakes end with one message on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional

import tuning.bench as bench
import tuning.console as console
import tuning.serve.evaluate as evaluate
import tuning.results.pipeline as pipeline
import tuning.serve.predict as predict
import tuning.report as report
import tuning.results.selection as selection
import tuning.tracking.ui as ui
from search_spaces.presets import PRESETS, STUDY_TEST_ACCURACY, get_preset
from trainables import registry
from trainables.data import DataConfig, data_fingerprint, load_raw_splits
from trainables.errors import ConfigError, UserError
from trainables.hparams import markdown_table
# the shared argument groups, named here too for the callers that import them from the CLI
from tuning.arguments import (EXIT_USER_ERROR, _add_data_args, _add_store_args, _default,  # noqa: F401
                              add_objective_arguments, add_sweep_arguments, data_options,
                              objective_settings, sweep_settings)
from tuning.config import (POPULATION_SCHEDULERS, SweepConfig, TRAINABLE_CHOICES, load_config_file,
                           load_saved_sweep)
from tuning.credentials import has_password, redact
from tuning.interrupt import Interrupted, exit_soon, raise_on_sigterm
from tuning.results.selection import resolve_data


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
    p = sub.add_parser("bench", help="measure throughput, sweep overhead, search efficiency and "
                                     "the study's table (markdown + PNGs)")
    bench.add_arguments(p)

    # ---------------------------------------------------------------- select / report
    p = sub.add_parser("select", help=selection.HELP, description=selection.DESCRIPTION)
    selection.add_arguments(p)
    p = sub.add_parser("tune", help=pipeline.HELP, description=pipeline.DESCRIPTION)
    pipeline.add_arguments(p)
    p = sub.add_parser("report", help="HTML + PNG report of a sweep (history, importances, "
                                      "parallel coordinates, curves, confusion matrix)",
                       description="Write an HTML report with figures for a sweep to "
                                   "<storage>/reports/<name>/ and log it to the sweep's parent "
                                   "MLflow run under report/.")
    report.add_arguments(p)

    p = sub.add_parser("predict", help=predict.HELP, description=predict.DESCRIPTION)
    predict.add_arguments(p)

    p = sub.add_parser("evaluate", help=evaluate.HELP, description=evaluate.DESCRIPTION)
    evaluate.add_arguments(p)

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


def _sweep(args) -> int:
    from tuning.sweep.runner import run_sweep  # local: keeps torch, mlflow and ray off --help

    settings = {**sweep_settings(args), **objective_settings(args)}
    if args.smoke_test:  # PBT perturbs after epoch 1: its smoke test trains a second one
        settings.update(num_trials=2, epochs=2 if settings["scheduler"] in POPULATION_SCHEDULERS else 1,
                        grace_period=1, perturbation_interval=1)
    outcome = run_sweep(SweepConfig(**settings))
    _print_outcome(outcome, args.storage)
    return 0


def changed_from_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """The values of ``config`` that differ from its trainable's defaults: what a sweep chose."""
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
    from tuning.sweep.runner import resume_sweep  # local: keeps torch, mlflow and ray off --help

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
    import tuning.tracking as tracking  # local: keeps mlflow and ray off --help

    return tracking.reachable_store(tracking_uri, storage)


def _best(args) -> int:
    import yaml

    from tuning.tracking.best import front, front_rows, sweep_goal, top_k  # local: keeps mlflow and ray off --help

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
    # local: keeps torch, mlflow and ray off --help
    from tuning.tracking.best import best_run
    from tuning.results.train import check_output_dir, train_config

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
        print(markdown_table(), end="")
        return 0
    from tuning.sweep.runner import build_space  # local: keeps torch, mlflow and ray off --help

    space = build_space(SweepConfig(trainable=args.trainable, space_file=args.space_file))
    described = space.describe()
    described.pop("trainable", None)  # the family is chosen with --trainable, not in the file
    print(f"# tunebert search space (--trainable {args.trainable}); copy, edit, pass with --space FILE")
    print(yaml.safe_dump(described, sort_keys=False), end="")
    return 0


def _bench(args) -> int:
    return bench.run(args)


def _select(args) -> int:
    reachable_store(args.tracking_uri, args.storage)
    return selection.run(args)


def _report(args) -> int:
    reachable_store(args.tracking_uri, args.storage)
    return report.run(args)


def _tune(args) -> int:
    return pipeline.run(args)


def _predict(args) -> int:
    return predict.run(args)


def _evaluate(args) -> int:
    return evaluate.run(args)


def _ui(args) -> int:
    return ui.run(args, reachable_store(args.tracking_uri, args.storage))


COMMANDS = {"sweep": _sweep, "resume": _resume, "best": _best, "train": _train,
            "presets": _presets, "space": _space, "bench": _bench, "select": _select,
            "report": _report, "tune": _tune, "predict": _predict,
            "evaluate": _evaluate, "ui": _ui}


def refuse_password_arguments(args) -> None:
    """A password on the command line is readable by everyone on the machine (``ps``,
    ``/proc/PID/cmdline``), kept in shell history and recorded by Ray with the driver's job:
    tunebert takes passwords from the environment only (issue 11 item 12)."""
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
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # the exact command line, for outputs that record how they were made
    console.setup(args.verbosity)
    raise_on_sigterm()  # docker stop, Kubernetes: stop as cleanly as Ctrl-C does
    try:
        refuse_password_arguments(args)
        return COMMANDS[args.command](args)
    except UserError as exc:  # a password in any URI it names (--address ray://u:pw@h) is masked

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
