"""Text-classification data: loading, label maps, tokenizing once, and length-bucketed batches.

A dataset source is one of:
- ``demo``: the small built-in intent dataset shipped in ``trainables/demo_data``;
- a local folder with ``train`` / ``validation`` / ``test`` files (``.jsonl``, ``.json`` or ``.csv``);
- ``hf:<id>`` or a bare hub id such as ``SetFit/amazon_massive_intent_en-US`` (``datasets``).

Raw splits are validated before anything expensive starts. ``tokenize_splits`` runs once per sweep;
its result (plain numpy arrays) is what trials receive through Ray's object store.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from trainables.errors import DataError

SPLITS = ("train", "validation", "test")
SPLIT_ALIASES = {"train": ("train",), "validation": ("validation", "val", "dev", "valid"),
                 "test": ("test",)}
EXTENSIONS = (".jsonl", ".json", ".csv")
DEMO_DIR = Path(__file__).resolve().parent / "demo_data"


@dataclass(frozen=True)
class DataConfig:
    """Where the data comes from and which columns hold text and label."""

    source: str = "demo"
    text_column: str = "text"
    label_column: str = "label"

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "text_column": self.text_column,
                "label_column": self.label_column}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DataConfig":
        return cls(**d)

    def anchored(self) -> "DataConfig":
        """The same data with a local folder given as an absolute path, so that a saved sweep
        finds it again from any working directory ('demo' and hub ids stay as they are)."""
        if self.source == "demo" or self.source.startswith("hf:"):
            return self
        path = Path(self.source).expanduser()
        if not path.exists():
            return self
        return DataConfig(str(path.resolve()), self.text_column, self.label_column)


@dataclass
class RawSplit:
    texts: list[str]
    labels: list[Any]
    origin: str  # file or dataset the split came from, for error messages


@dataclass
class LabelMap:
    """Label value ↔ class index, built from the training split (sorted, so it is stable)."""

    names: list[str]
    raw_values: list[Any]

    @classmethod
    def from_labels(cls, labels: list[Any]) -> "LabelMap":
        values = sorted(set(labels), key=lambda v: (not isinstance(v, (int, float)), v if isinstance(v, (int, float)) else str(v)))
        return cls(names=[str(v) for v in values], raw_values=list(values))

    def index(self) -> dict[Any, int]:
        return {v: i for i, v in enumerate(self.raw_values)}

    def encode(self, labels: list[Any], *, split: str, origin: str) -> np.ndarray:
        lookup = self.index()
        unseen = sorted({str(v) for v in labels if v not in lookup})
        if unseen:
            shown = unseen[:20] + (["..."] if len(unseen) > 20 else [])
            raise DataError(
                f"{split} split ({origin}) has {len(unseen)} label(s) that the train split does not "
                f"have: {shown}. A classifier cannot predict classes it never saw: add examples of "
                f"them to train, or remove those rows."
            )
        return np.asarray([lookup[v] for v in labels], dtype=np.int64)

    def to_dict(self) -> dict[str, Any]:
        return {"names": self.names, "raw_values": self.raw_values}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LabelMap":
        return cls(names=list(d["names"]), raw_values=list(d["raw_values"]))

    def __len__(self) -> int:
        return len(self.names)


# --------------------------------------------------------------------------- loading


def _read_rows(path: Path) -> list[dict]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{path}: not valid UTF-8 (byte {exc.start}, line {line}). Re-save the file as UTF-8."
        ) from exc
    if path.suffix == ".csv":
        return list(csv.DictReader(text.splitlines()))
    if path.suffix == ".json" and text.lstrip().startswith("["):
        rows = json.loads(text)
    else:
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}, line {number}: not valid JSON ({exc.msg}).") from exc
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise DataError(f"{path}, row {number}: expected a JSON object, got {type(row).__name__}")
    return rows


def _find_split_file(folder: Path, split: str) -> Optional[Path]:
    for stem in SPLIT_ALIASES[split]:
        for ext in EXTENSIONS:
            candidate = folder / f"{stem}{ext}"
            if candidate.is_file():
                return candidate
    return None


def _rows_to_split(rows: list[dict], config: DataConfig, origin: str, split: str) -> RawSplit:
    if not rows:
        raise DataError(f"{split} split ({origin}) is empty: it needs at least one row.")
    available = sorted(rows[0].keys())
    for kind, column in (("text", config.text_column), ("label", config.label_column)):
        if column not in rows[0]:
            option = "--text-column" if kind == "text" else "--label-column"
            raise DataError(
                f"{split} split ({origin}) has no {kind} column {column!r}; its columns are "
                f"{available}. Name the right one with {option}."
            )
    texts, labels, empty = [], [], []
    for number, row in enumerate(rows, start=1):
        text, label = row.get(config.text_column), row.get(config.label_column)
        if not isinstance(text, str) or not text.strip():
            empty.append(number)
        if label is None or (isinstance(label, str) and not label.strip()):
            raise DataError(f"{split} split ({origin}), row {number}: the label is missing.")
        if isinstance(label, str) and label.strip().lstrip("-").isdigit():
            label = int(label)  # CSV gives every cell as text
        texts.append(text if isinstance(text, str) else "")
        labels.append(label)
    if empty:
        shown = empty[:20] + (["..."] if len(empty) > 20 else [])
        raise DataError(
            f"{split} split ({origin}) has {len(empty)} empty or missing text(s) in column "
            f"{config.text_column!r}, at row(s) {shown}. Remove or fill those rows."
        )
    return RawSplit(texts=texts, labels=labels, origin=origin)


def _load_folder(folder: Path, config: DataConfig) -> dict[str, RawSplit]:
    splits = {}
    for split in SPLITS:
        path = _find_split_file(folder, split)
        if path is None:
            names = [f"{s}{e}" for s in SPLIT_ALIASES[split] for e in EXTENSIONS]
            raise DataError(
                f"data folder {folder} has no {split} file; expected one of {names[:6]}..."
            )
        splits[split] = _rows_to_split(_read_rows(path), config, str(path), split)
    return splits


def _load_hub(dataset_id: str, config: DataConfig) -> dict[str, RawSplit]:
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover
        raise DataError("loading a hub dataset needs the `datasets` package") from exc
    try:
        loaded = datasets.load_dataset(dataset_id)
    except Exception as exc:  # the hub raises many types (ConnectionError, OSError, HfHubHTTPError)
        raise DataError(
            f"could not load dataset {dataset_id!r} from the Hugging Face hub "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}). "
            f"Without network access, pass a local folder holding train/validation/test "
            f".jsonl or .csv files instead (--data path/to/folder)."
        ) from exc
    splits = {}
    for split in SPLITS:
        name = next((n for n in SPLIT_ALIASES[split] if n in loaded), None)
        if name is None:
            raise DataError(
                f"hub dataset {dataset_id!r} has splits {sorted(loaded.keys())}; it needs "
                f"train, validation and test."
            )
        splits[split] = _rows_to_split(list(loaded[name]), config, f"{dataset_id}[{name}]", split)
    return splits


def load_raw_splits(config: DataConfig) -> dict[str, RawSplit]:
    """Read and validate the three splits. Raises ``DataError`` with a fix for every problem."""
    splits = _load_splits(config)
    _check_train_labels(splits["train"], config)
    return splits


def _load_splits(config: DataConfig) -> dict[str, RawSplit]:
    source = config.source
    if source == "demo":
        return _load_folder(DEMO_DIR, config)
    if source.startswith("hf:"):
        return _load_hub(source[3:], config)
    path = Path(source).expanduser()
    if path.is_dir():
        return _load_folder(path, config)
    if path.exists():
        raise DataError(f"--data {source!r} is a file; pass the folder that holds train/validation/test files.")
    looks_like_hub_id = source.count("/") == 1 and not source.startswith((".", "/", "~"))
    if looks_like_hub_id:
        return _load_hub(source, config)
    raise DataError(
        f"data folder {source!r} does not exist. Pass a folder with train/validation/test "
        f".jsonl or .csv files, 'demo' for the built-in demo data, or hf:<dataset id>."
    )


def _check_train_labels(train: RawSplit, config: DataConfig) -> None:
    """A classifier needs two classes to tell apart; with one, every loss is zero (Ray used to
    start and die inside a trial instead)."""
    values = set(train.labels)
    if len(values) < 2:
        raise DataError(
            f"train split ({train.origin}) has a single label, {next(iter(values))!r}, in column "
            f"{config.label_column!r} ({len(train.labels)} rows): a classifier needs at least 2 "
            f"classes. Check --label-column (is {config.label_column!r} the label?), or add "
            f"examples of the other classes to the train split.")


def data_fingerprint(splits: dict[str, RawSplit]) -> str:
    """sha256 of the texts and labels of every split, in order: what a sweep trained and was
    validated on, whatever the files' format or place. Resume compares it (``tuning.runner``)."""
    import hashlib

    digest = hashlib.sha256()
    for split in SPLITS:
        part = splits[split]
        digest.update(json.dumps([split, part.texts, part.labels], ensure_ascii=False,
                                 default=str).encode("utf-8"))
    return f"sha256:{digest.hexdigest()}"


# --------------------------------------------------------------------------- tokenizing


@dataclass
class EncodedSplit:
    """Token ids without padding: one int32 array per text, and one label index per text."""

    input_ids: list[np.ndarray]
    labels: np.ndarray

    def lengths(self) -> np.ndarray:
        return np.fromiter((len(ids) for ids in self.input_ids), dtype=np.int64,
                           count=len(self.input_ids))

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class TokenizedData:
    """What every trial of a sweep receives (through Ray's object store)."""

    splits: dict[str, EncodedSplit]
    label_map: LabelMap
    model: str
    max_length: int
    pad_token_id: int
    truncated: dict[str, int] = field(default_factory=dict)  # texts cut to max_length, per split

    @property
    def num_labels(self) -> int:
        return len(self.label_map)

    def without_test(self) -> "TokenizedData":
        """The same data minus the test split: what tuning trials get, so they cannot peek."""
        splits = {k: v for k, v in self.splits.items() if k != "test"}
        return TokenizedData(splits, self.label_map, self.model, self.max_length,
                             self.pad_token_id, dict(self.truncated))


def encode_texts(tokenizer, texts: list[str], max_length: int) -> tuple[list[np.ndarray], int]:
    """Token ids of each text (special tokens added), cut to ``max_length`` keeping the closing
    special token; and how many texts were cut. Training and prediction both encode this way."""
    ids, cut = [], 0
    for seq in tokenizer(list(texts), add_special_tokens=True, truncation=False)["input_ids"]:
        if len(seq) > max_length:
            cut += 1
            seq = seq[: max_length - 1] + seq[-1:]  # keep the closing [SEP]
        ids.append(np.asarray(seq, dtype=np.int32))
    return ids, cut


def tokenize_splits(raw: dict[str, RawSplit], tokenizer, *, model: str, max_length: int,
                    include_test: bool = True) -> TokenizedData:
    """Build the label map from train, encode labels and texts of each split once."""
    label_map = LabelMap.from_labels(raw["train"].labels)
    splits, truncated = {}, {}
    for split in SPLITS:
        if split == "test" and not include_test:
            continue
        part = raw[split]
        labels = label_map.encode(part.labels, split=split, origin=part.origin)
        ids, truncated[split] = encode_texts(tokenizer, part.texts, max_length)
        splits[split] = EncodedSplit(ids, labels)
    return TokenizedData(splits, label_map, model, max_length, int(tokenizer.pad_token_id or 0),
                         truncated)


# --------------------------------------------------------------------------- batching


def bucketed_batches(lengths: np.ndarray, batch_size: int, *, rng: np.random.Generator,
                     shuffle: bool = True, bucket_batches: int = 50) -> list[np.ndarray]:
    """Index batches of similar length, so dynamic padding wastes little.

    Training order stays random: indices are shuffled, cut into chunks of ``bucket_batches``
    batches, sorted by length inside each chunk, batched, and the batches shuffled. Without
    ``shuffle`` (evaluation) the batches follow the sorted lengths (order does not matter there).
    """
    n = len(lengths)
    if not shuffle:
        order = np.argsort(lengths, kind="stable")
        return [order[i:i + batch_size] for i in range(0, n, batch_size)]
    order = rng.permutation(n)
    chunk = batch_size * bucket_batches
    batches = []
    for start in range(0, n, chunk):
        part = order[start:start + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches.extend(part[i:i + batch_size] for i in range(0, len(part), batch_size))
    rng.shuffle(batches)
    return batches


def collate(split: EncodedSplit, indices: np.ndarray, pad_token_id: int):
    """Pad one batch to its own longest text. Returns (input_ids, attention_mask, labels) tensors."""
    import torch

    seqs = [split.input_ids[i] for i in indices]
    width = max(len(s) for s in seqs)
    ids = np.full((len(seqs), width), pad_token_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for row, seq in enumerate(seqs):
        ids[row, :len(seq)] = seq
        mask[row, :len(seq)] = 1
    return (torch.from_numpy(ids), torch.from_numpy(mask),
            torch.from_numpy(split.labels[indices]))


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    return math.ceil(num_examples / batch_size)
