"""Every ``tunebert`` command, defined one way: a ``Command`` record with its name, help,
description, the function that adds its arguments and the dotted path of the function that runs it.

``tuning.cli.build_parser`` loops over ``COMMANDS``; ``tuning.cli.main`` imports only the chosen
command's run function, so ``tunebert --help`` (and ``tunebert predict``) never import what the
other commands need (torch, Ray, MLflow). Nothing here may import a command's run module.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable

from trainables.perturb import KINDS
from tuning.bench import PARTS
from tuning.cli.arguments import (_add_data_args, _add_store_args, _default, add_objective_arguments,
                                  add_sweep_arguments)
from tuning.config import (DEFAULT_ROOT, DEFAULT_WARM_START, EVALUATE_SPLITS, MODEL_DATA_FILE,
                           MULTITASK_WARM_START,
                           TRAINABLE_CHOICES, TUNE_BUDGET_S, TUNE_SEEDS, TUNE_TOP_K, UI_HOST, UI_PORT,
                           UI_START_TIMEOUT_S)


@dataclass(frozen=True)
class Command:
    """One ``tunebert`` command: ``run`` is "module:function", imported only when it runs."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: str
    description: str | None = None


def _sweep(p: argparse.ArgumentParser) -> None:
    add_sweep_arguments(p)
    add_objective_arguments(p)
    p.add_argument("--smoke-test", action="store_true",
                   help="2 trials x 1 epoch, to check that everything is wired up")


def _resume(p: argparse.ArgumentParser) -> None:
    p.add_argument("name")
    p.add_argument("--address", default=None)
    _add_store_args(p)


def _best(p: argparse.ArgumentParser) -> None:
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


def _train(p: argparse.ArgumentParser) -> None:
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


def _bench(p: argparse.ArgumentParser) -> None:
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
                   help="compare, joint-tune: seconds of the `tunebert tune` pipeline (default 7200 "
                        "= 2h)")
    p.add_argument("--ablation-epochs", type=int, default=None,
                   help="ablation, joint-knobs: epochs per run (default: the hand config's 4)")
    p.add_argument("--ablation-workers", type=int, default=1,
                   help="ablation, joint-knobs: runs at a time, each on its share of the CPU cores "
                        "(default 1)")
    p.add_argument("--joint-subset", type=int, default=None, metavar="N",
                   help="joint-knobs: train each knob run on a seeded N-utterance subset of train "
                        "(default: all of train)")
    p.add_argument("--front-budget", type=float, default=1800.0,
                   help="deploy: seconds of the two-objective sweep (accuracy, latency) whose Pareto "
                        "front is reported (default 1800; 0 skips it)")
    p.add_argument("--scale-sizes", default="0.25,1,4", metavar="GIB,...",
                   help="scale: corpus sizes in GiB of JSON Lines (default 0.25,1,4)")
    p.add_argument("--smoke-test", action="store_true",
                   help="tiny sizes everywhere (checks the wiring, numbers mean nothing)")


def add_handover_arguments(p: argparse.ArgumentParser, *, tune: bool) -> None:
    """The hand-over candidates beyond the best seed model and the seed ensemble, and the rule
    that picks one (``tuning.results.handover``); ``tune`` builds them by default."""
    g = p.add_argument_group("hand-over candidates and rule")
    if tune:
        g.add_argument("--no-cross-config", dest="cross_config", action="store_false",
                       help="do not try the ensemble of the top configs' best models")
        g.add_argument("--no-distill", dest="distill", action="store_false",
                       help="do not distil the better ensemble into one student model")
    else:
        g.add_argument("--cross-config", action="store_true",
                       help="also try the ensemble of the top configs' best seed models")
        g.add_argument("--distill", action="store_true",
                       help="also distil the better ensemble (--ensemble, --cross-config) into one "
                            "student model of the chosen config, trained on train with the "
                            "teacher's softened probabilities")
    g.add_argument("--distill-temperature", type=float, default=2.0, metavar="T",
                   help="temperature of the teacher's probabilities (default: %(default)s)")
    g.add_argument("--distill-alpha", type=float, default=0.5, metavar="A",
                   help="weight of the teacher's term; 1 - A is the labels' (default: %(default)s)")
    g.add_argument("--student-layers", type=int, default=0, metavar="K",
                   help="a smaller student: keep the encoder's bottom K layers (default 0: the "
                        "chosen config's encoder)")
    g.add_argument("--prefer", choices=["accuracy", "latency"], default="accuracy",
                   help="hand over the most accurate candidate (default), or the fastest within "
                        "--within points of it")
    g.add_argument("--keep-candidates", action="store_true",
                   help="also keep every candidate's model folder in <output-dir>/candidates/<kind>/ "
                        "(best single, ensemble, cross, student), e.g. to compare them on test later")
    g.add_argument("--within", type=float, default=0.3, metavar="POINTS",
                   help="with --prefer latency: how many points (hundredths of the metric) below "
                        "the most accurate the fastest may score (default: %(default)s)")


def _select(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="the sweep")
    p.add_argument("--top-k", type=int, default=3,
                   help="how many of the sweep's best configs (default: 3)")
    p.add_argument("--seeds", type=int, default=3,
                   help="fresh seeds per config: the config's seed + 1..SEEDS (default: 3)")
    p.add_argument("--metric", default=None,
                   help="validation metric to rank and choose by (default: val_accuracy; for a "
                        "multitask sweep its own ranking metric, e.g. val_sentence_accuracy)")
    p.add_argument("--mode", choices=["max", "min"], default="max")
    p.add_argument("--epochs", type=int, default=None, help="override every config's epochs")
    p.add_argument("--output-dir", help="also keep the chosen config's seed models here "
                                        "(seed-<seed>/), and with --ensemble the handed-over "
                                        "model (model/); an earlier tunebert model there is "
                                        "replaced, nothing else in the folder is touched")
    p.add_argument("--ensemble", action="store_true",
                   help="also try the chosen config's seed models as one ensemble (mean of their "
                        "probabilities); it is handed over unless it scores below the seed "
                        "models' mean on validation (needs --seeds >= 2)")
    add_handover_arguments(p, tune=False)
    p.add_argument("--workers", type=int, default=1,
                   help="trainings at a time, each in its own process on its share of the CPU "
                        "cores (default: 1)")
    p.add_argument("--register-model", metavar="NAME", default=None,
                   help="also register the handed-over model in the MLflow Model Registry as a "
                        "new version of NAME, tagged with its sweep, trial, run and data "
                        "fingerprint")
    g = p.add_argument_group("data (default: the sweep's own)")
    g.add_argument("--data", default=None, help="'demo', a folder with train/validation/test files, "
                                                "or hf:<hub dataset id>")
    g.add_argument("--text-column", default=None, help="column holding the text")
    g.add_argument("--label-column", default=None, help="column holding the label")
    g = p.add_argument_group("where results go")
    g.add_argument("--storage", default=DEFAULT_ROOT,
                   help="the sweep's storage root (default: ./tunebert-runs)")
    g.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
                        "sqlite:///<storage>/mlflow.db)")
    p.add_argument("--smoke-test", action="store_true",
                   help="top 2 x 1 seed (2 with --ensemble), 1 epoch on at most 64 training "
                        "examples (checks the wiring)")


def _tune(p: argparse.ArgumentParser) -> None:
    """``tunebert tune``: the sweep's options (``--time-budget`` is the whole job's) and the
    selection's."""
    add_sweep_arguments(p, time_budget_default=TUNE_BUDGET_S, time_budget_help=(
        "the whole job's time: sweep, final selection and test (default: 2h); e.g. 45m, 1h30m"))
    add_objective_arguments(p)
    p.set_defaults(trials=None, warm_start=None)  # `tune` fills its budget: see BUDGET_TRIALS
    for action in p._actions:
        if action.dest == "trials":
            action.help = ("number of trials (default: as many as the sweep's share of the time "
                           "budget allows)")
        if action.dest == "warm_start":
            action.help = (f"comma-separated presets or config files to try first (default for "
                           f"fine-tuning: {DEFAULT_WARM_START}, the careful hand-written config, "
                           f"so the search starts from it; for multitask: {MULTITASK_WARM_START}; "
                           f"'' for none; see `tunebert presets`)")
    g = p.add_argument_group("final selection")
    g.add_argument("--top-k", type=int, default=TUNE_TOP_K,
                   help="re-train this many of the sweep's best configs (default: %(default)s; "
                        "fewer if the budget left after the sweep cannot fit them)")
    g.add_argument("--seeds", type=int, default=TUNE_SEEDS,
                   help="seeds per config (default: %(default)s; fewer if they do not fit)")
    g.add_argument("--no-ensemble", dest="ensemble", action="store_false",
                   help="hand over the best single model; by default the ensemble of the chosen "
                        "config's seed models is handed over when it scores better on validation")
    g.add_argument("--select-workers", type=int, default=None,
                   help="selection trainings at a time (default: as many as the sweep runs trials "
                        "at once on this machine's CPUs, i.e. cores // --cpus-per-trial; 1 with GPUs)")
    g.add_argument("--output-dir", default=None,
                   help="new or empty folder for the handed-over model (default: "
                        "<storage>/models/<name>)")
    add_handover_arguments(p, tune=True)
    p.add_argument("--smoke-test", action="store_true",
                   help="2 trials x 1 epoch, then top 2 x 2 seeds x 1 epoch on 64 examples")


def _report(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``tunebert report``."""
    parser.add_argument("name", help="the sweep to report on")
    parser.add_argument("--output", "-o", default=None,
                        help="folder for report.html and the PNGs (default: <storage>/reports/<name>/)")
    parser.add_argument("--no-mlflow", action="store_true",
                        help="only write the local folder; do not log the report to the sweep's "
                             "parent MLflow run")
    g = parser.add_argument_group("where results are")
    g.add_argument("--storage", default=DEFAULT_ROOT,
                   help="root folder the sweep used: Ray Tune state, checkpoints and the default "
                        "MLflow store (default: ./tunebert-runs)")
    g.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
                        "sqlite:///<storage>/mlflow.db)")


def _predict(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_dir", metavar="MODEL",
                   help="a model folder (tunebert train/select --output-dir), or the URI of a "
                        "model tunebert logged to MLflow: runs:/RUN_ID/model, "
                        "runs:/RUN_ID/handed_over_model, models:/NAME/VERSION, models:/NAME@ALIAS")
    p.add_argument("texts", nargs="*", metavar="TEXT", help="texts to classify")
    p.add_argument("--file", help="also classify each non-empty line of this file ('-': stdin)")
    p.add_argument("--proba", action="store_true",
                   help="print JSON lines with every label's probability (a multi-task model "
                        "always prints JSON lines: intent, probability, slots with character "
                        "offsets; --proba adds every intent's probability)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto (default): the first GPU if there is one, else the CPU")
    p.add_argument("--batch-size", type=int, default=64,
                   help="texts per forward pass (default: %(default)s)")
    g = p.add_argument_group("where runs:/ and models:/ URIs are read")
    g.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
                        "sqlite:///<storage>/mlflow.db)")
    g.add_argument("--storage", default="tunebert-runs",
                   help="storage root whose MLflow store to read (default: ./tunebert-runs)")


def _evaluate(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_dir", metavar="MODEL",
                   help="a model folder (tunebert train --output-dir, or select --output-dir's "
                        "seed-<seed>/ or model/)")
    p.add_argument("--perturb", required=True, metavar="KIND:RATE[,KIND:RATE...]",
                   help="perturbations to measure, each at a rate in (0, 1] (the probability per "
                        f"letter or word), e.g. typo:0.1,delete:0.05; kinds: {', '.join(KINDS)}")
    p.add_argument("--data", default=None,
                   help="'demo', a folder with train/validation/test files, or hf:<id> (default: "
                        f"the model folder's {MODEL_DATA_FILE}, if it has one)")
    p.add_argument("--text-column", default=None, help="column holding the text (default: text)")
    p.add_argument("--label-column", default=None, help="column holding the label (default: label)")
    p.add_argument("--split", choices=EVALUATE_SPLITS, default="test", help="split to score (default: test)")
    p.add_argument("--seed", type=int, default=0, help="seed of the perturbations (default: 0)")
    p.add_argument("--output", "-o",
                   help="also write the table as JSON to this file (missing folders above it are "
                        "created; an existing file is replaced)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto (default): the first GPU if there is one, else the CPU")
    p.add_argument("--batch-size", type=int, default=64)


def _ui(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``tunebert ui`` (the store arguments are the CLI's shared ones)."""
    parser.add_argument("--name", default=None,
                        help="the sweep to open (default: the list of experiments)")
    parser.add_argument("--port", type=int, default=None,
                        help=f"port on {UI_HOST} (default: {UI_PORT}, or a free one if taken)")
    parser.add_argument("--start-timeout", type=float, default=UI_START_TIMEOUT_S,
                        help="seconds to wait for the MLflow server to answer (default: %(default)s)")
    parser.add_argument("--smoke-test", action="store_true",
                        help="start the server, check that the sweep's page answers, stop it")
    _add_store_args(parser)


def _presets(p: argparse.ArgumentParser) -> None:
    pass  # no options


def _space(p: argparse.ArgumentParser) -> None:
    p.add_argument("--space", dest="space_file")
    p.add_argument("--trainable", choices=TRAINABLE_CHOICES, default=_default("trainable"))
    p.add_argument("--table", action="store_true",
                   help="print every hyperparameter as a Markdown table (default, allowed values, "
                        "default search range, phase) instead of the space")


# in the order `tunebert --help` lists them
COMMANDS = (
    Command("sweep", "run a hyperparameter sweep", _sweep, "tuning.cli.sweeping:sweep",
            "Run a sweep: Optuna (TPE) proposes configs, ASHA stops weak trials early, every "
            "trial is logged to MLflow."),
    Command("resume", "resume a stopped or crashed sweep, or `tunebert tune` run, by name", _resume,
            "tuning.cli.sweeping:resume"),
    Command("best", "print or export the best config of a sweep (reads MLflow)", _best,
            "tuning.cli.best:run"),
    Command("train", "train one config and evaluate it on the test split", _train,
            "tuning.cli.train:run",
            "Train one config (a YAML/JSON file, a preset, or a sweep's best) and report "
            "validation and test metrics to MLflow."),
    Command("bench", "measure throughput, sweep overhead, search efficiency and the study's table "
                     "(markdown + PNGs); --parts gpu: the check for a GPU machine", _bench, "tuning.bench.entry:run"),
    Command("select", "re-train a sweep's top configs over seeds, choose by mean validation score, "
                      "then test", _select, "tuning.results.selection:run",
            "Final selection: re-train the sweep's top-k configs with several fresh seeds each (the "
            "config's seed + 1..seeds; the trial's own seed would only repeat the sweep's run), on "
            "train, measuring validation only; choose the config with the best mean validation "
            "score (ties: lower std, then sweep rank); only then evaluate the chosen config's "
            "models on test (mean ± std). The handed-over model is the chosen config's best seed "
            "model or, with --ensemble, the ensemble of its seed models unless that scores below "
            "the seed models' mean on validation. Everything is logged to the sweep's MLflow "
            "experiment."),
    Command("tune", "the whole job in one command: sweep, final selection, one test evaluation, one "
                    "time budget", _tune, "tuning.results.pipeline:run",
            "Run a sweep, then re-train its top configs over seeds (and their ensemble), choose on "
            "validation, evaluate the choice once on test, and hand over one model folder, all "
            "within --time-budget (default 2h), split between the phases from a measured training "
            "speed. Everything is logged to the sweep's MLflow experiment; `tunebert resume NAME` "
            "continues a stopped run."),
    Command("report", "HTML + PNG report of a sweep (history, importances, parallel coordinates, "
                      "curves, confusion matrix)", _report, "tuning.report:run",
            "Write an HTML report with figures for a sweep to <storage>/reports/<name>/ and log it "
            "to the sweep's parent MLflow run under report/."),
    Command("predict", "predict labels for texts with a trained or handed-over model folder",
            _predict, "tuning.serve.predict:run",
            "Classify texts with a model folder (one written by `tunebert train --output-dir`, or "
            "the model `tunebert select --output-dir` handed over: a single model or an ensemble) "
            "or an MLflow model URI (runs:/RUN_ID/model, models:/NAME/VERSION). Prints one line per "
            "text: the label, a tab, the text; with --proba one JSON object per line with every "
            "label's probability. A multi-task (intent + slot) model prints one JSON object per "
            "line: text, intent, probability, and slots as {slot, value, start, end} with "
            "character offsets in the text (end exclusive)."),
    Command("evaluate", "accuracy of a model folder on a clean split and on perturbed copies of it",
            _evaluate, "tuning.serve.evaluate:run",
            "Evaluate a model folder (`tunebert train/select --output-dir`) on a clean split and "
            "on the same split with typos, dropped letters, contractions or swapped words "
            f"(--perturb KIND:RATE,...; kinds: {', '.join(KINDS)}). Prints one row per "
            "perturbation and, with --output, writes them as JSON."),
    Command("ui", "open a sweep in the MLflow UI (starts a local MLflow server until Ctrl-C)", _ui,
            "tuning.tracking.ui:run",
            "Start the MLflow UI on 127.0.0.1 on the sweep's MLflow store (the SQLite file under "
            "--storage, or --tracking-uri / $MLFLOW_TRACKING_URI) and print the link to the "
            "sweep's runs table; stop it with Ctrl-C. For a tracking server (http://...), only "
            "print the link."),
    Command("presets", "list the named presets (the study's configurations)", _presets,
            "tuning.cli.catalog:presets"),
    Command("space", "print the search space as YAML (with --space applied)", _space,
            "tuning.cli.catalog:space"),
)
