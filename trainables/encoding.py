"""Tokenized data and batches: each split's texts encoded once (``tokenize_splits``, the label map
built from train), the model's position limit checked first, and length-bucketed batches padded
per batch (``bucketed_batches``, ``collate``). What trials receive is plain numpy arrays.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from trainables.aliases import resolve_model
from trainables.errors import ConfigError
from trainables.labels import SPLITS, LabelMap, RawSplit


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


def _model_config(model: str) -> Optional[dict]:
    """The model's config.json as a dict, from its folder or the local hub cache (never the
    network); None when neither has it (the model's own loading then says what is wrong)."""
    path = Path(resolve_model(model)).expanduser() / "config.json"
    if not path.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(model, "config.json")
        except Exception:  # not a valid hub id, or no hub client: nothing to read
            return None
        if not isinstance(cached, str):
            return None
        path = Path(cached)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def model_positions(model: str) -> Optional[int]:
    """How many tokens the model's position embeddings can hold (None when unknown). RoBERTa's
    family numbers positions from ``pad_token_id + 1``, so that many of its rows are never used."""
    config = _model_config(model) or {}
    positions = config.get("max_position_embeddings")
    if isinstance(positions, bool) or not isinstance(positions, int) or positions < 1:
        return None
    kind = str(config.get("model_type", ""))
    if "roberta" in kind or kind in ("camembert", "longformer"):
        positions -= int(config.get("pad_token_id") or 1) + 1
    return positions


def check_max_length(model: str, max_length: int) -> None:
    """Refuse a ``max_length`` beyond the model's positions before anything trains: a longer
    text would index past the position embeddings, deep inside the first batch of a trial."""
    positions = model_positions(model)
    if positions is not None and max_length > positions:
        raise ConfigError(
            f"`max_length` (--max-length) {max_length} is more than model {model!r} can read: its "
            f"position embeddings hold {positions} tokens (max_position_embeddings in its "
            f"config.json). Pass --max-length {positions} or less (with `tunebert train`: --set "
            f"max_length={positions}).")


def tokenize_splits(raw: dict[str, RawSplit], tokenizer, *, model: str, max_length: int,
                    include_test: bool = True) -> TokenizedData:
    """Build the label map from train, encode labels and texts of each split once."""
    check_max_length(model, max_length)
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


def epoch_batches(split, batch_size: int, *, rng: np.random.Generator, shuffle: bool = True) -> list[np.ndarray]:
    """One epoch's index batches of ``split``: ``bucketed_batches`` over its lengths for a split
    held in memory; a split that batches itself (a memory-mapped ``CachedSplit``, whose lengths
    are not held whole) draws them block by block (its own ``epoch_batches``). Either way
    ``len(result) == steps_per_epoch(len(split), batch_size)`` and the same generator state gives
    the same batches."""
    own = getattr(split, "epoch_batches", None)
    if own is not None:
        return own(batch_size, rng=rng, shuffle=shuffle)
    return bucketed_batches(split.lengths(), batch_size, rng=rng, shuffle=shuffle)


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
            torch.from_numpy(np.asarray(split.labels[indices], dtype=np.int64)))


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    return math.ceil(num_examples / batch_size)
