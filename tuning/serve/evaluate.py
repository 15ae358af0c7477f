"""Robustness to perturbed input: ``tunebert evaluate MODEL --perturb typo:0.1,delete:0.05``.

A model folder (single or ensemble, as ``tuning.serve.predict.load_model`` reads it) is scored on one
split of a dataset as it is, then on copies of that split whose texts are perturbed
(``trainables.perturb``): one row per kind and rate of the spec, and with more than one a row for
all of them applied together. The texts perturbed here are the split's own texts; each text's
perturbation is seeded by ``(--seed, its index)``, so a rerun gives the same table.

The data: ``--data`` (with ``--text-column``/``--label-column``), else the folder's
``data.json`` (a ``trainables.data.DataConfig`` dict) when it has one. ``tunebert train`` and
``select`` do not write that file (the folder holds the config and the label map only), so for
their folders ``--data`` is needed.

A multi-task model (``trainables.joint_export``, or an ensemble of them) is scored on joint data
(``--data`` with word tags: ``seq.in``/``seq.out`` folders, token rows, CoNLL files): intent
accuracy, slot F1 over exact spans (micro, and per slot type), sentence accuracy (intent and every
tag right), each where the split has what it needs; the perturbation table then gives the intent
accuracy on the perturbed texts (word tags are not scored under perturbation: deleting words moves
them). Words are encoded as training encodes them (``MultitaskPredictor.predict_words``).
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from trainables import task_data
from trainables.data import DataConfig, load_raw_splits
from trainables.errors import DataError, UserError
from trainables.model_files import MULTITASK_KIND
from trainables.perturb import Perturbation, describe, parse_spec, perturb_texts
from trainables.spans import sentence_accuracy, span_scores
from tuning.config import EVALUATE_SPLITS, MODEL_DATA_FILE
from tuning.serve.predict import load_model

DATA_FILE, SPLITS = MODEL_DATA_FILE, EVALUATE_SPLITS  # said in tuning.config (the parser reads them)


@dataclass(frozen=True)
class RobustnessRow:
    """The model's accuracy on one version of the split."""

    perturbation: str   # "clean", "typo:0.1", ... or "all combined (typo:0.1,delete:0.05)"
    accuracy: float
    drop: float         # clean accuracy minus this one
    changed: float      # share of texts the perturbation changed (0 for clean)


def saved_data_config(folder: str | Path):
    """The ``DataConfig`` in ``folder/data.json``, or None when the folder has none."""
    path = Path(folder).expanduser() / DATA_FILE
    if not path.is_file():
        return None
    try:
        return DataConfig.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, TypeError) as exc:
        raise UserError(f"{path}: not a data config ({exc}); fix or remove it, or pass --data") from None


def load_split(data_config, split: str) -> tuple[list[str], list]:
    """(texts, labels) of ``split`` of the data, or a ``UserError`` that says what is missing."""
    try:
        splits = load_raw_splits(data_config)
    except DataError as exc:
        raise DataError(f"cannot read --data {data_config.source!r}: {exc}") from None
    if split not in splits:
        raise DataError(f"--data {data_config.source!r} has no {split} split (it has "
                        f"{sorted(splits)}); choose one with --split")
    part = splits[split]
    if not part.texts:  # e.g. a validation split carved from a train file too small to give one
        raise DataError(f"the {split} split of --data {data_config.source!r} ({part.origin}) has "
                        f"no rows, so there is nothing to score; add rows to it, or choose "
                        f"another split with --split")
    return list(part.texts), list(part.labels)


def robustness_rows(predict, texts: Sequence[str], labels: Sequence, perturbations, *,
                    seed: int) -> list[RobustnessRow]:
    """Accuracy of ``predict(texts) -> label names`` on the clean texts, on each perturbation
    alone and, with more than one, on all of them applied in order. ``labels`` are compared as
    strings (a label map's names are ``str`` of the raw values)."""
    gold = [str(label) for label in labels]

    def accuracy(batch: list[str]) -> float:
        predicted = predict(batch)
        return sum(p == g for p, g in zip(predicted, gold)) / len(gold)

    clean = accuracy(list(texts))
    rows = [RobustnessRow("clean", clean, 0.0, 0.0)]
    variants = [(Perturbation(*p).describe(), [p]) for p in perturbations]
    if len(perturbations) > 1:
        variants.append((f"all combined ({describe(perturbations)})", list(perturbations)))
    for name, applied in variants:
        noisy = perturb_texts(texts, applied, seed=seed)
        changed = sum(a != b for a, b in zip(texts, noisy)) / len(texts)
        score = accuracy(noisy)
        rows.append(RobustnessRow(name, score, clean - score, changed))
    return rows


def format_table(rows: Sequence[RobustnessRow]) -> str:
    width = max(len("perturbation"), *(len(r.perturbation) for r in rows))
    lines = [f"{'perturbation':<{width}}  accuracy     drop  texts changed"]
    for r in rows:
        drop = "       —" if r.perturbation == "clean" else f"{r.drop:+8.4f}"
        changed = "            —" if r.perturbation == "clean" else f"{100 * r.changed:12.1f}%"
        lines.append(f"{r.perturbation:<{width}}  {r.accuracy:8.4f} {drop}  {changed}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- the CLI subcommand


def _data_config(args):
    saved = saved_data_config(args.model_dir)
    if args.data is None and saved is None:
        raise UserError(f"which data? the model folder {args.model_dir!r} has no {DATA_FILE}; pass "
                        f"--data (a folder with train/validation/test files, 'demo' or hf:<id>)")
    base = saved.to_dict() if saved is not None else DataConfig().to_dict()
    given = {k: v for k, v in (("source", args.data), ("text_column", args.text_column),
                               ("label_column", args.label_column)) if v is not None}
    return DataConfig(**{**base, **given})


def output_path(output: str) -> Path:
    """``--output`` as a path to write to, refused before any work when it cannot be one: it names
    a folder, or a folder above it is a file. Missing folders above it are created on writing."""
    path = Path(output).expanduser()
    if path.is_dir():
        raise UserError(f"--output {output!r} is a folder; pass a file to write the JSON to, "
                        f"e.g. {str(path / 'robustness.json')!r}")
    above = next((p for p in path.parents if p.exists()), None)
    if above is not None and not above.is_dir():
        raise UserError(f"--output {output!r}: {str(above)!r} is a file, not a folder; pass a path "
                        f"in a folder")
    return path


def write_output(path: Path, out: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=2) + "\n")
    except OSError as exc:
        raise UserError(f"cannot write --output {str(path)!r} ({exc.strerror or exc}); the table "
                        f"above is the result: pass another --output to keep it as JSON") from None


def _predictor(args, folder: Path):
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no GPU is visible here; use --device cpu or auto")
    return load_model(folder, device=None if args.device == "auto" else args.device,
                      batch_size=args.batch_size)


# --------------------------------------------------------------------------- multi-task models


def load_joint_split(data_config, split: str):
    """``split`` of joint data (a ``JointRawSplit``: words, tags, labels), or a ``UserError``
    that says what is missing."""
    try:
        splits = task_data.load_raw(data_config, task_data.MULTITASK)
    except DataError as exc:
        raise DataError(f"cannot read --data {data_config.source!r}: {exc}") from None
    if split not in splits:
        raise DataError(f"--data {data_config.source!r} has no {split} split (it has "
                        f"{sorted(splits)}); choose one with --split")
    if not len(splits[split]):
        raise DataError(f"the {split} split of --data {data_config.source!r} has no examples, so "
                        f"there is nothing to score; choose another split with --split")
    return splits[split]


def _check_known(part, predictor, split: str) -> None:
    """Refuse gold intents or tags the model never learned (the wrong data, or columns)."""
    intents = {str(label) for label in part.labels if label is not None}
    tags = {tag for row in part.tags if row is not None for tag in row}
    known_tags = set(predictor.tag_map.names) if predictor.tag_map is not None else {"O"}
    for what, unknown in (("intent(s)", sorted(intents - set(predictor.labels))),
                          ("tag(s)", sorted(tags - known_tags))):
        if unknown:
            shown = unknown[:20] + (["..."] if len(unknown) > 20 else [])
            raise DataError(f"the {split} split ({part.origin}) has {len(unknown)} {what} the "
                            f"model never learned: {shown}. Is this the data it was trained on?")


def joint_scores(predictor, part) -> tuple[dict[str, float], dict[str, dict]]:
    """(scores, per slot type) of a multi-task ``predictor`` on a joint split: intent accuracy
    over the examples with a label, slot precision/recall/F1 over exact spans of those with tags,
    sentence accuracy over those with both; per type: precision, recall, f1, support."""
    proba, predicted_tags = predictor.predict_words(part.words)
    labelled = [i for i, label in enumerate(part.labels) if label is not None]
    tagged = [i for i, tags in enumerate(part.tags) if tags is not None]
    intents = ([predictor.labels[int(row.argmax())] for row in proba]
               if proba is not None else None)
    scores, per_type = {}, {}
    if intents is not None and labelled:
        scores["intent_accuracy"] = sum(intents[i] == str(part.labels[i])
                                        for i in labelled) / len(labelled)
    if predictor.tag_map is not None and tagged:
        spans = span_scores([part.tags[i] for i in tagged], [predicted_tags[i] for i in tagged])
        scores.update(slot_f1=spans.f1, slot_precision=spans.precision, slot_recall=spans.recall)
        per_type = {kind: asdict(s) for kind, s in spans.per_type.items()}
    both = sorted(set(labelled) & set(tagged))
    if intents is not None and predictor.tag_map is not None and both:
        scores["sentence_accuracy"] = sentence_accuracy(
            [str(part.labels[i]) for i in both], [intents[i] for i in both],
            [part.tags[i] for i in both], [predicted_tags[i] for i in both])
    return scores, per_type


SCORE_NAMES = {"intent_accuracy": "intent accuracy", "slot_f1": "slot F1 (micro, exact spans)",
               "slot_precision": "slot precision", "slot_recall": "slot recall",
               "sentence_accuracy": "sentence accuracy"}


def format_scores(scores: dict[str, float], per_type: dict[str, dict]) -> str:
    width = max(len(name) for name in SCORE_NAMES.values())
    lines = [f"{SCORE_NAMES[k]:<{width}}  {scores[k]:.4f}" for k in SCORE_NAMES if k in scores]
    if per_type:
        kind_width = max(len("slot type"), *(len(k) for k in per_type))
        lines += ["", f"{'slot type':<{kind_width}}      f1  precision  recall  support"]
        lines += [f"{k:<{kind_width}}  {s['f1']:6.4f}     {s['precision']:6.4f}  "
                  f"{s['recall']:6.4f}  {s['support']:7d}" for k, s in sorted(per_type.items())]
    return "\n".join(lines)


def _intent_rows(predictor, part, perturbations, seed: int) -> list[RobustnessRow]:
    """The robustness table of the intent head on the labelled examples' texts (words joined
    by spaces); [] without an intent head or labels."""
    labelled = [i for i, label in enumerate(part.labels) if label is not None]
    if not predictor.labels or not labelled:
        return []
    texts = [" ".join(part.words[i]) for i in labelled]
    return robustness_rows(lambda batch: [a["intent"] for a in predictor.predict(batch)], texts,
                           [part.labels[i] for i in labelled], perturbations, seed=seed)


def run_multitask(args, folder: Path, data_config, perturbations, output) -> int:
    """``tunebert evaluate`` of a multi-task model on joint data (see the module docstring)."""
    part = load_joint_split(data_config, args.split)
    predictor = _predictor(args, folder)
    if predictor.kind != MULTITASK_KIND:
        raise UserError(f"--data {data_config.source!r} holds word tags, but {str(folder)!r} holds "
                        f"a text classifier ({predictor.kind}); pass the data it was trained on, "
                        f"or a multi-task model folder")
    _check_known(part, predictor, args.split)
    scores, per_type = joint_scores(predictor, part)
    rows = _intent_rows(predictor, part, perturbations, args.seed)
    print(f"[tunebert] multitask model {str(folder)!r} on the {args.split} split of "
          f"{data_config.source!r} ({len(part)} examples), perturbation seed {args.seed}")
    print(format_scores(scores, per_type))
    if rows:
        print("\nintent accuracy under perturbation:")
        print(format_table(rows))
    if output is not None:
        write_output(output, {"model_dir": str(folder.resolve()), "kind": predictor.kind,
                              "data": data_config.to_dict(), "split": args.split,
                              "examples": len(part), "seed": args.seed,
                              "perturb": describe(perturbations), "scores": scores,
                              "per_type": per_type, "rows": [asdict(r) for r in rows]})
        print(f"[tunebert] wrote {args.output}", file=sys.stderr)
    sys.stdout.flush()
    return 0


def run(args) -> int:
    perturbations = parse_spec(args.perturb, what="--perturb")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, but got {args.batch_size}")
    if args.seed < 0:
        raise UserError(f"--seed must be >= 0, but got {args.seed}")
    output = output_path(args.output) if args.output else None
    folder = Path(args.model_dir).expanduser()
    if not folder.is_dir():
        raise UserError(f"model folder {args.model_dir!r} does not exist; pass the folder "
                        f"`tunebert train --output-dir` or `tunebert select --output-dir DIR` wrote")
    data_config = _data_config(args)
    if task_data.is_multitask_data(data_config):
        return run_multitask(args, folder, data_config, perturbations, output)
    texts, labels = load_split(data_config, args.split)
    predictor = _predictor(args, folder)
    if predictor.kind == MULTITASK_KIND:
        raise UserError(f"{str(folder)!r} holds a multi-task model, but --data "
                        f"{data_config.source!r} holds texts with labels only; pass the joint "
                        f"data it was trained on (seq.in/seq.out folders, token rows or CoNLL "
                        f"files)")
    unknown = sorted({str(label) for label in labels} - set(predictor.labels))
    if unknown:
        shown = unknown[:20] + (["..."] if len(unknown) > 20 else [])
        raise DataError(f"the {args.split} split of {data_config.source!r} has {len(unknown)} "
                        f"label(s) the model never learned: {shown}. Is this the data it was "
                        f"trained on (--data, --label-column)?")
    rows = robustness_rows(predictor.predict, texts, labels, perturbations, seed=args.seed)
    print(f"[tunebert] {predictor.kind} model {str(folder)!r} on the {args.split} split of "
          f"{data_config.source!r} ({len(texts)} texts), perturbation seed {args.seed}")
    print(format_table(rows))
    if output is not None:
        out = {"model_dir": str(folder.resolve()), "kind": predictor.kind,
               "data": data_config.to_dict(), "split": args.split, "examples": len(texts),
               "seed": args.seed, "perturb": describe(perturbations),
               "rows": [asdict(r) for r in rows]}
        write_output(output, out)
        print(f"[tunebert] wrote {args.output}", file=sys.stderr)
    sys.stdout.flush()
    return 0

