"""Predict labels with a handed-over model: ``load_model(folder)`` and ``tunebert predict``.

A model folder is what ``tunebert select --output-dir DIR`` hands over (``DIR/model`` with
``--ensemble``, else ``DIR/seed-<seed>``) or ``tunebert train --output-dir`` keeps: a plain
checkpoint folder, or an ensemble folder (``ensemble.json`` + ``member-<i>/``, see
``trainables.ensemble``). The label map and the config (tokenizer, ``max_length``, precision)
come from the folder itself; texts are encoded exactly as training encoded them
(``trainables.data.encode_texts``). The encoder named by the config's ``model`` must be loadable
here (a hub id, a packaged alias or a folder): the checkpoint holds the fine-tuned weights, the
tokenizer and the encoder's architecture come from there.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Iterable

import numpy as np

from trainables.errors import UserError

HELP = "predict labels for texts with a trained or handed-over model folder"
DESCRIPTION = ("Classify texts with a model folder: one written by `tunebert train --output-dir`, "
               "or the model `tunebert select --output-dir` handed over (a single model or an "
               "ensemble). Prints one line per text: the label, a tab, the text; with --proba one "
               "JSON object per line with every label's probability.")


class Predictor:
    """A loaded model folder: ``predict(texts)`` → labels, ``predict_proba(texts)`` → (n, labels)
    probabilities in the order of ``labels``."""

    def __init__(self, model, config: dict, label_map: dict, *, kind: str, folder: str,
                 device=None, batch_size: int = 64):
        import torch

        from trainables import registry
        from trainables.models import load_tokenizer

        if device is None:
            device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.config = registry.config_class(config["trainable"]).from_dict(config)
        self.labels: list[str] = list(label_map["names"])
        self.kind = kind            # "single" or "ensemble"
        self.folder = folder
        self.batch_size = batch_size
        self.tokenizer = load_tokenizer(self.config.model)

    def predict_proba(self, texts: Iterable[str]) -> np.ndarray:
        """(len(texts), len(labels)) float32 class probabilities (an ensemble's: the mean of its
        members'). Batches of similar length, answered in the order given."""
        import torch

        from trainables.data import EncodedSplit, bucketed_batches, collate, encode_texts
        from trainables.loops import autocast_context

        texts = list(texts)
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise UserError(f"texts must be strings, but text {bad[0]} is {texts[bad[0]]!r}")
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        if not texts:
            return out
        ids, _ = encode_texts(self.tokenizer, texts, self.config.max_length)
        split = EncodedSplit(ids, np.zeros(len(ids), dtype=np.int64))
        pad = int(self.tokenizer.pad_token_id or 0)
        with torch.no_grad():
            for indices in bucketed_batches(split.lengths(), self.batch_size,
                                            rng=np.random.default_rng(0), shuffle=False):
                batch_ids, mask, _ = collate(split, indices, pad)
                with autocast_context(self.device, self.config.precision):
                    scores = self.model(batch_ids.to(self.device), mask.to(self.device))
                # softmax of an ensemble's log mean probabilities gives back the mean probabilities
                out[indices] = torch.softmax(scores.float(), dim=-1).cpu().numpy()
        return out

    def predict(self, texts: Iterable[str]) -> list[str]:
        """The most probable label of each text (first label on a tie)."""
        return [self.labels[i] for i in self.predict_proba(texts).argmax(axis=1)]


def load_model(folder: str | Path, *, device=None, batch_size: int = 64) -> Predictor:
    """The model in ``folder`` (plain checkpoint or ensemble), ready to predict on ``device``
    (default: the first GPU if there is one, else the CPU)."""
    from trainables.ensemble import is_ensemble_folder
    from tuning.selection import load_model_folder

    model, config, label_map = load_model_folder(folder)
    kind = "ensemble" if is_ensemble_folder(folder) else "single"
    return Predictor(model, config, label_map, kind=kind, folder=str(folder), device=device,
                     batch_size=batch_size)


# --------------------------------------------------------------------------- the CLI subcommand


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_dir", metavar="MODEL_DIR",
                   help="a model folder (tunebert train/select --output-dir)")
    p.add_argument("texts", nargs="*", metavar="TEXT", help="texts to classify")
    p.add_argument("--file", help="also classify each non-empty line of this file ('-': stdin)")
    p.add_argument("--proba", action="store_true",
                   help="print JSON lines with every label's probability")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto (default): the first GPU if there is one, else the CPU")
    p.add_argument("--batch-size", type=int, default=64)


def _read_texts(args) -> list[str]:
    texts = list(args.texts)
    if args.file:
        if args.file == "-":
            lines = sys.stdin.read().splitlines()
        else:
            path = Path(args.file).expanduser()
            if not path.is_file():
                raise UserError(f"--file {args.file!r}: no such file; pass a text file with one "
                                f"text a line, or '-' for stdin")
            lines = path.read_text(encoding="utf-8").splitlines()
        texts += [line for line in lines if line.strip()]
    if not texts:
        raise UserError("no texts to classify: give them as arguments after MODEL_DIR, or with "
                        "--file FILE (one text a line)")
    return texts


def run(args) -> int:
    import torch

    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, but got {args.batch_size}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no GPU is visible here; use --device cpu or auto")
    predictor = load_model(args.model_dir, device=None if args.device == "auto" else args.device,
                           batch_size=args.batch_size)
    texts = _read_texts(args)
    proba = predictor.predict_proba(texts)
    for text, row in zip(texts, proba):
        label = predictor.labels[int(row.argmax())]
        if args.proba:
            print(json.dumps({"text": text, "label": label,
                              "probabilities": dict(zip(predictor.labels, map(float, row)))},
                             ensure_ascii=False))
        else:
            print(f"{label}\t{text}")
    sys.stdout.flush()
    return 0
