"""Predict labels with a handed-over model: ``load_model(source)`` and ``tunebert predict``.

``source`` is a model folder, or the URI of an MLflow model tunebert logged:

- a folder ``tunebert train --output-dir`` wrote, or one ``tunebert select --output-dir DIR``
  kept (``DIR/seed-<seed>``, and with ``--ensemble`` ``DIR/model``): a self-contained Hugging Face
  style model folder or an ensemble of them (``trainables.export``), or an older checkpoint folder;
- ``runs:/<run id>/model`` (a ``tunebert train`` run, or a selection's re-training run),
  ``runs:/<selection run id>/handed_over_model``, ``models:/<registered name>/<version>`` (or
  ``models:/<name>@<alias>``): the model is downloaded from the MLflow store
  (``tuning.tracking.download_model``) and its model folder loaded.

The label map, the tokenizer, the encoder's architecture and the config (``max_length``,
precision) come from the folder itself, so no sweep, Ray, MLflow run or base encoder is needed;
texts are encoded exactly as training encoded them (``trainables.data.encode_texts``).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from trainables import registry
from trainables.data import EncodedSplit, bucketed_batches, collate, encode_texts
from trainables.errors import UserError
from trainables.model_files import MULTITASK_KIND

MODEL_URI_SCHEMES = ("runs:/", "models:/")



class Predictor:
    """A loaded model (``trainables.export.LoadedModel``): ``predict(texts)`` → labels,
    ``predict_proba(texts)`` → (n, labels) probabilities in the order of ``labels``."""

    def __init__(self, loaded, *, device=None, batch_size: int = 64, source: Optional[str] = None):
        import torch

        if device is None:
            device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
        self.device = torch.device(device)
        self.model = loaded.model.to(self.device).eval()
        self.config = registry.config_class(loaded.config["trainable"]).from_dict(loaded.config)
        self.labels: list[str] = list(loaded.label_map["names"])
        self.kind = loaded.kind     # "single" or "ensemble"
        self.folder = str(loaded.folder)
        self.source = source or self.folder  # the folder or URI it was loaded from
        self.batch_size = batch_size
        self.tokenizer = loaded.tokenizer
        self._download = None       # a downloaded model's temporary folder, kept while in use

    def predict_proba(self, texts: Iterable[str]) -> np.ndarray:
        """(len(texts), len(labels)) float32 class probabilities (an ensemble's: the mean of its
        members'). Batches of similar length, answered in the order given."""
        import torch

        from trainables.loops import autocast_context  # local: keeps torch off --help

        texts = checked_texts(texts)
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


def checked_texts(texts: Iterable[str]) -> list[str]:
    """``texts`` as a list, refused (``UserError``) unless each is a string of UTF-8 text."""
    texts = list(texts)
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise UserError(f"texts must be strings, but text {bad[0]} is {texts[bad[0]]!r}")
    bad = [i for i, t in enumerate(texts) if not _is_unicode(t)]
    if bad:  # bytes that were not UTF-8, kept as surrogates (a shell's argv, sys.stdin)
        raise UserError(f"text {bad[0]} ({texts[bad[0]]!r}) holds bytes that are not UTF-8 "
                        f"text; pass it as UTF-8 (set the terminal or file to UTF-8)")
    return texts


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def is_model_uri(source: str | Path) -> bool:
    return isinstance(source, str) and source.startswith(MODEL_URI_SCHEMES)


def load_model(source: str | Path, *, device=None, batch_size: int = 64,
               tracking_uri: Optional[str] = None):
    """The model in ``source`` (a model folder, an ensemble folder, an older checkpoint folder, or
    a ``runs:/`` or ``models:/`` URI of a model tunebert logged to MLflow, read from
    ``tracking_uri``: default ``$MLFLOW_TRACKING_URI``), ready to predict on ``device`` (default:
    the first GPU if there is one, else the CPU) in batches of ``batch_size`` texts: a
    ``Predictor``, or for a multi-task model folder a ``trainables.joint_predict.MultitaskPredictor``
    (``predict(texts)``: intent, probability and slot spans per text)."""
    from trainables import export, joint_predict  # local: keeps torch off --help

    def ready(loaded):
        kind = joint_predict.MultitaskPredictor if loaded.kind == MULTITASK_KIND else Predictor
        return kind(loaded, device=device, batch_size=batch_size, source=str(source))

    if not is_model_uri(source):
        return ready(export.load_model(source))
    import tuning.tracking as tracking  # local: keeps mlflow and ray off --help

    download = tempfile.TemporaryDirectory(prefix="tunebert-model-")
    try:
        folder = tracking.download_model(str(source), tracking_uri, download.name)
        predictor = ready(export.load_model(folder))
    except BaseException:
        download.cleanup()
        raise
    predictor._download = download  # removed when the predictor is garbage-collected
    return predictor


# --------------------------------------------------------------------------- the CLI subcommand


def _utf8(data: bytes, where: str) -> str:
    """``data`` as UTF-8 text (a leading byte-order mark dropped), or a ``UserError`` that says
    where the first byte that is not UTF-8 sits and how to convert the file."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise UserError(f"{where} is not UTF-8 text: byte {exc.start} (line {line}) is "
                        f"0x{data[exc.start]:02x}. Convert it to UTF-8 first, e.g. "
                        f"`iconv -f latin1 -t utf-8 FILE > FILE.utf8` for Latin-1 text") from None


def _read_file_lines(name: str) -> list[str]:
    if name == "-":
        stdin = getattr(sys.stdin, "buffer", None)  # bytes, so that the decoding is ours
        text = sys.stdin.read() if stdin is None else _utf8(stdin.read(), "stdin (--file -)")
        return text.splitlines()
    path = Path(name).expanduser()
    if not path.is_file():
        raise UserError(f"--file {name!r}: no such file; pass a text file with one "
                        f"text a line, or '-' for stdin")
    return _utf8(path.read_bytes(), f"--file {name!r}").splitlines()


def _read_texts(args) -> list[str]:
    texts = list(args.texts)
    if args.file:
        texts += [line for line in _read_file_lines(args.file) if line.strip()]
    if not texts:
        raise UserError("no texts to classify: give them as arguments after MODEL, or with "
                        "--file FILE (one text a line)")
    return texts


def run(args) -> int:
    import torch

    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, but got {args.batch_size}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no GPU is visible here; use --device cpu or auto")
    tracking_uri = None
    if is_model_uri(args.model_dir):
        import tuning.tracking as tracking  # local: keeps mlflow and ray off predict with a folder

        tracking_uri = tracking.reachable_store(getattr(args, "tracking_uri", None),
                                       getattr(args, "storage", "tunebert-runs"))
    predictor = load_model(args.model_dir, device=None if args.device == "auto" else args.device,
                           batch_size=args.batch_size, tracking_uri=tracking_uri)
    texts = _read_texts(args)
    if predictor.kind == MULTITASK_KIND:  # one JSON object a line: intent and slot spans
        for answer in predictor.predict(checked_texts(texts), probabilities=args.proba):
            print(json.dumps(answer, ensure_ascii=False))
        sys.stdout.flush()
        return 0
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
