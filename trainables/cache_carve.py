"""The validation split carved from a cached train split that need not fit in memory (issue 24).

A train split cached with carve keys (``token_cache.cached_split(..., carve_seed=...)``) is cut
into two caches of its own, written once inside its folder: each example goes to validation when
its key, read as a number in [0, 1), lies below the fraction (``carve_mask``), so each label
gives about that share whatever the order or the number of shards, with one each way per label
(``carve_stats``). Two streaming passes over the cache, O(labels) memory beyond one record batch:
the same rows on every load, so a resumed sweep validates on the same examples. Not row for row
the in-memory path's carve (``trainables.data.carve_validation`` sorts each label's keys).
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Callable

import numpy as np

from trainables.token_cache import BUILDING, CACHE_FILE, BatchWriter, CachedSplit, read_meta, stream_batches


def carve_mask(labels: np.ndarray, keys: np.ndarray, fraction: float, stats: dict) -> np.ndarray:
    """Which of these examples go to validation: those whose key, read as a number in [0, 1),
    lies below ``fraction``, so each label gives about ``fraction`` of its examples, whatever
    the order or the number of shards; but a label with n >= 2 examples gives at least one (its
    smallest key) and keeps at least one in train (its largest key), and a label with one
    example keeps it. ``stats`` (``carve_stats``) holds per label: count, how many fall below,
    smallest and largest key. Pure, O(len(labels))."""
    held = keys < np.int64(fraction * 2.0**63)
    count, below, low, high = (stats[k][labels] for k in ("count", "below", "low", "high"))
    held |= (below == 0) & (count >= 2) & (keys == low)
    held &= ~((below == count) & (keys == high))
    return held & (count >= 2)


def carve_stats(chunks, num_labels: int, fraction: float) -> dict:
    """``carve_mask``'s per-label figures from (labels, keys) chunks, one pass, O(labels)."""
    count = np.zeros(num_labels, dtype=np.int64)
    below = np.zeros(num_labels, dtype=np.int64)
    low = np.full(num_labels, np.iinfo(np.int64).max, dtype=np.int64)
    high = np.full(num_labels, -1, dtype=np.int64)
    threshold = np.int64(fraction * 2.0**63)
    for labels, keys in chunks:
        np.add.at(count, labels, 1)
        np.add.at(below, labels[keys < threshold], 1)
        np.minimum.at(low, labels, keys)
        np.maximum.at(high, labels, keys)
    return {"count": count, "below": below, "low": low, "high": high}


def _batches(split: CachedSplit):
    return stream_batches(sorted(split.path.glob("*.arrow")))


def carve(split: CachedSplit, fraction: float, *, say: Callable[[str], None] = lambda m: None
          ) -> tuple[CachedSplit, CachedSplit, list[int]]:
    """(train, validation, label indices left without validation) of a split cached with carve
    keys: two caches of their own inside ``split``'s folder, written once, atomically, and reused
    by every later call (a resumed sweep gets the same split)."""
    if not split.has_carve_keys:
        raise ValueError(f"{split.path} was cached without carve keys; build it with carve_seed")
    folder = split.path / f"carved-{fraction!r}"
    if read_meta(folder) is None:
        stats = carve_stats(((b.column("label").to_numpy(), b.column("carve_key").to_numpy())
                             for b in _batches(split)), len(split.meta["label_map"]["names"]), fraction)
        building = split.path / f"{BUILDING}carve-{os.getpid()}"
        shutil.rmtree(building, ignore_errors=True)
        try:
            counts = _write_parts(split, building, fraction, stats)
            unvalidated = [int(i) for i in np.flatnonzero(stats["count"] == 1)]
            (building / CACHE_FILE).write_text(json.dumps({**split.meta, "fraction": fraction,
                                                          "unvalidated": unvalidated}))
            try:
                os.replace(building, folder)
            except OSError:  # another process put the same carve in place first: use it
                if read_meta(folder) is None:
                    raise
        finally:
            shutil.rmtree(building, ignore_errors=True)
        say(f"token cache: carved {counts['validation']:,} validation examples ({fraction:g} of each "
            f"label) from {len(split):,} train examples into {folder}")
    return (CachedSplit(folder / "train"), CachedSplit(folder / "validation"),
            list(read_meta(folder)["unvalidated"]))


def _write_parts(split: CachedSplit, building, fraction: float, stats: dict) -> dict[str, int]:
    """The second pass: each record batch's rows to the train or the validation part."""
    import pyarrow as pa

    writers: dict[str, BatchWriter] = {}
    try:
        for batch in _batches(split):
            if not writers:
                for name in ("train", "validation"):
                    (building / name).mkdir(parents=True)
                    writers[name] = BatchWriter(building / name / "data.arrow", batch.schema)
            held = carve_mask(batch.column("label").to_numpy(), batch.column("carve_key").to_numpy(),
                              fraction, stats)
            writers["train"].write(batch.filter(pa.array(~held)))
            writers["validation"].write(batch.filter(pa.array(held)))
    finally:
        for writer in writers.values():
            writer.close()
    counts = {name: writer.rows for name, writer in writers.items()}
    for name, count in counts.items():
        (building / name / CACHE_FILE).write_text(json.dumps({**split.meta, "rows": count, "part": name,
                                                              "fraction": fraction, "truncated": 0}))
    return counts
