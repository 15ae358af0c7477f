"""Tokenize once into an on-disk, memory-mapped Arrow cache (issue 24, the data path whose memory
does not grow with the data).

``cached_split`` reads one split's files (JSON Lines, CSV or Parquet; shards given as a list or a
glob; gzip/bz2/xz/zstd compressed or not) with Hugging Face ``datasets``, which converts them to
Arrow block by block, tokenizes them with a batched, multi-process ``map`` exactly as
``trainables.encoding.encode_texts`` does, and saves ``input_ids``, ``label`` and ``length``
columns under ``<root>/<key>/``. The key digests the files (path, size, modification time), the
columns, the tokenizer (its full serialised form) and ``max_length``: every trial, the selection,
``train`` and a later sweep on the same data with the same model reuse it.

The cache is written atomically: built in a ``.building-<key>-<pid>`` folder beside it, marked
complete (``CACHE_FILE``) last, then renamed into place (one ``rename``); a killed build leaves only a building
folder, which never loads and is removed by the next build once its process is gone.

``CachedSplit`` has ``EncodedSplit``'s interface (``input_ids[i]``, ``labels``, ``lengths()``,
``len``) over the memory-mapped table: ``input_ids[i]`` is a zero-copy view of the mapped file,
so a trial holds only what its batches touch, plus O(examples) label and length columns. It
pickles as its path: Ray ships a few bytes to each trial, which reopens the map (on a cluster
the cache must lie on storage every node mounts).
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from trainables.data import _carve_key
from trainables.errors import UserError
from trainables.labels import LabelMap

CACHE_FORMAT = 1
CACHE_FILE = "tunebert-cache.json"
BUILDING = ".building-"
FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".zstd")
# below this many rows one process tokenizes (starting workers costs more than it saves)
PARALLEL_FROM_ROWS = 200_000


def expand_files(spec: str | Sequence[str]) -> list[str]:
    """A file, a glob, a folder of shards or a list of those: the files, sorted. Raises
    ``UserError`` naming the pattern that matched nothing."""
    specs = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    files: list[str] = []
    for item in map(str, specs):
        if os.path.isdir(item):
            matched = sorted(p for p in glob.glob(os.path.join(item, "*")) if _format_of(p))
        else:
            matched = sorted(glob.glob(item)) if glob.has_magic(item) else ([item] if os.path.isfile(item) else [])
        if not matched:
            raise UserError(f"data files {item!r}: nothing there; give a file, a glob such as "
                            f"'train-*.jsonl.gz', or a folder of .jsonl/.csv/.parquet shards")
        files += matched
    kinds = {_format_of(f) for f in files}
    if None in kinds or len(kinds) > 1:
        raise UserError(f"data files {files[:3]}{' ...' if len(files) > 3 else ''}: the shards of one "
                        f"split must all be .jsonl, .csv or .parquet (optionally compressed, e.g. "
                        f".jsonl.gz), one format per split")
    return files


def _format_of(path: str) -> Optional[str]:
    name = path.lower()
    for ext in COMPRESSED:
        if name.endswith(ext):
            name = name[: -len(ext)]
    return next((kind for ext, kind in FORMATS.items() if name.endswith(ext)), None)


def tokenizer_digest(tokenizer) -> str:
    """The tokenizer's identity: its full serialised form (vocabulary, normaliser, special
    tokens) for a fast tokenizer, else its vocabulary and special tokens."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(
        [sorted(tokenizer.get_vocab().items()), tokenizer.all_special_tokens])
    return hashlib.sha256(text.encode()).hexdigest()


def cache_key(files: Sequence[str], *, text_column: str, label_column: str, tokenizer,
              max_length: int, label_map: Optional[LabelMap], carve_seed: Optional[int] = None) -> str:
    """What the cache depends on, digested: each file's absolute path, size and modification
    time (as ``datasets`` keys local files), the columns, the tokenizer, ``max_length``, the label
    map it was encoded with, and the format of the cache itself."""
    stats = [(os.path.abspath(f), os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files]
    what = {"format": CACHE_FORMAT, "files": stats, "text": text_column, "label": label_column,
            "tokenizer": tokenizer_digest(tokenizer), "max_length": max_length,
            "labels": None if label_map is None else label_map.raw_values, "carve_seed": carve_seed}
    return hashlib.sha256(json.dumps(what, default=str).encode()).hexdigest()[:32]


class _RaggedView:
    """``ids[i]``: example i's token ids, a zero-copy int32 view of the memory-mapped column."""

    def __init__(self, column) -> None:  # a pyarrow ChunkedArray of list<int32>
        self._offsets = [np.asarray(c.offsets) for c in column.chunks]
        self._values = [c.values.to_numpy(zero_copy_only=True) for c in column.chunks]
        self._starts = np.cumsum([0] + [len(c) for c in column.chunks])

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, i) -> np.ndarray:
        i = int(i)
        if not 0 <= i < len(self):
            raise IndexError(i)
        chunk = int(np.searchsorted(self._starts, i, side="right")) - 1
        row, offsets = i - self._starts[chunk], self._offsets[chunk]
        return self._values[chunk][offsets[row]:offsets[row + 1]]


class CachedSplit:
    """One tokenized split, memory-mapped from its cache folder (``EncodedSplit``'s interface)."""

    def __init__(self, path: str | Path) -> None:
        import datasets

        self.path = Path(path)
        meta = read_meta(self.path)
        if meta is None:
            raise UserError(f"{self.path} is no complete tunebert token cache (no {CACHE_FILE}); "
                            f"delete it, and the next run tokenizes again")
        self.meta = meta
        table = datasets.load_from_disk(str(self.path)).data.table
        self.input_ids = _RaggedView(table.column("input_ids"))
        self.labels = table.column("label").to_numpy()
        self._lengths = table.column("length").to_numpy()
        self.carve_keys = (table.column("carve_key").to_numpy()
                           if "carve_key" in table.column_names else None)

    def lengths(self) -> np.ndarray:
        return self._lengths.astype(np.int64, copy=False)

    def __len__(self) -> int:
        return len(self.labels)

    def __reduce__(self):
        return (CachedSplit, (str(self.path),))


class _IndexedIds:
    def __init__(self, ids, indices: np.ndarray) -> None:
        self._ids, self._indices = ids, indices

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, i) -> np.ndarray:
        return self._ids[self._indices[int(i)]]


class SplitView:
    """Some examples of a ``CachedSplit`` (``EncodedSplit``'s interface): the two parts of a carve.
    Pickles as what made it (the cache's path, fraction, part), recomputed where it lands."""

    def __init__(self, base: CachedSplit, indices: np.ndarray, made_by: tuple) -> None:
        self.base, self.indices, self._made_by = base, indices, made_by
        self.input_ids = _IndexedIds(base.input_ids, indices)
        self.labels = base.labels[indices]

    def lengths(self) -> np.ndarray:
        return self.base.lengths()[self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __reduce__(self):
        return (_carved_part, self._made_by)


def carve_key(seed: int, text: str) -> int:
    """The carve's per-example key: the first 63 bits of ``trainables.data``'s sha256(seed, text)
    (an int64 column), so a cached split carves as the in-memory path carves the same rows (but
    for a tie in 63 bits, which position then breaks)."""
    return int.from_bytes(_carve_key(seed, text)[:8], "big") >> 1


def carve_positions(labels: np.ndarray, keys: np.ndarray, fraction: float
                    ) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """``trainables.data.carve_validation``'s rule on columns: a label with n >= 2 examples gives
    max(1, floor(n * fraction + 0.5)) of them, but keeps at least one, those with the smallest
    key, ties by position. Returns (kept positions, held-out positions, label indices with no
    validation example); O(examples) integers, whatever the texts weigh."""
    n = len(labels)
    order = np.lexsort((np.arange(n), keys, labels))  # by label, then key, then position
    ordered = labels[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]]) if n else np.array([], dtype=np.int64)
    counts = np.diff(np.r_[starts, n])
    takes = np.array([0 if c < 2 else min(c - 1, max(1, math.floor(c * fraction + 0.5))) for c in counts],
                     dtype=np.int64)
    rank = np.arange(n) - np.repeat(starts, counts)
    held = rank < np.repeat(takes, counts)
    unvalidated = [int(ordered[s]) for s, c in zip(starts, counts) if c < 2]
    return np.sort(order[~held]), np.sort(order[held]), unvalidated


def carve(split: CachedSplit, fraction: float) -> tuple[SplitView, SplitView, list[int]]:
    """(train, validation, labels left without validation) from a split cached with a carve seed:
    the same parts on every call, in every process (a resumed sweep gets the same split)."""
    if split.carve_keys is None:
        raise ValueError(f"{split.path} was cached without carve keys; build it with carve_seed")
    kept, held, unvalidated = carve_positions(split.labels, split.carve_keys, fraction)
    return (SplitView(split, kept, (str(split.path), fraction, "train")),
            SplitView(split, held, (str(split.path), fraction, "validation")), unvalidated)


def _carved_part(path: str, fraction: float, part: str) -> SplitView:
    train, validation, _ = carve(CachedSplit(path), fraction)
    return train if part == "train" else validation


def read_meta(path: Path) -> Optional[dict]:
    try:
        meta = json.loads((Path(path) / CACHE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == CACHE_FORMAT else None


def _remove_dead_builds(root: Path) -> None:
    """Building folders whose process is gone (killed builds) on this host."""
    for folder in root.glob(BUILDING + "*"):
        try:
            pid = int(folder.name.rsplit("-", 1)[1])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except (ValueError, IndexError, PermissionError):
            continue


def cached_split(files: str | Sequence[str], *, text_column: str, label_column: str, tokenizer,
                 max_length: int, root: str | Path, label_map: Optional[LabelMap] = None,
                 carve_seed: Optional[int] = None, num_proc: Optional[int] = None,
                 say: Callable[[str], None] = lambda message: None) -> tuple[CachedSplit, LabelMap]:
    """The split's cache under ``root``, built first when missing; and its label map (the given
    one, or this split's sorted label values, as ``LabelMap.from_labels``: pass train's map to the
    other splits). A label the given map lacks is a ``UserError`` naming it. With ``carve_seed``
    the cache also holds each example's carve key, so that ``carve`` can take a validation split
    from it (a train split without a validation split of its own)."""
    files = expand_files(files)
    root = Path(root)
    key = cache_key(files, text_column=text_column, label_column=label_column, tokenizer=tokenizer,
                    max_length=max_length, label_map=label_map, carve_seed=carve_seed)
    final = root / key
    if read_meta(final) is not None:
        say(f"token cache: {final} (built before, reused)")
        split = CachedSplit(final)
        return split, label_map or LabelMap(**split.meta["label_map"])
    root.mkdir(parents=True, exist_ok=True)
    _remove_dead_builds(root)
    building = root / f"{BUILDING}{key}-{os.getpid()}"
    shutil.rmtree(building, ignore_errors=True)
    try:
        label_map, meta = _build(files, building, text_column=text_column, label_column=label_column,
                                 tokenizer=tokenizer, max_length=max_length, label_map=label_map,
                                 carve_seed=carve_seed, num_proc=num_proc, say=say)
        (building / "cache" / CACHE_FILE).write_text(json.dumps(meta))  # complete: written last
        try:
            os.replace(building / "cache", final)
        except OSError:  # another process put the same cache in place first: use it
            if read_meta(final) is None:
                raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    say(f"token cache: wrote {final} ({meta['rows']:,} examples)")
    return CachedSplit(final), label_map


def _build(files: list[str], building: Path, *, text_column: str, label_column: str, tokenizer,
           max_length: int, label_map: Optional[LabelMap], carve_seed: Optional[int],
           num_proc: Optional[int], say: Callable[[str], None]) -> tuple[LabelMap, dict[str, Any]]:
    import datasets

    # datasets' own Arrow caches go to work/, the cache to cache/: both inside the building folder,
    # so a killed build leaves nothing but that folder
    work, folder = building / "work", building / "cache"
    raw = datasets.load_dataset(_format_of(files[0]), data_files=files, split="train",
                                cache_dir=str(work / "hf"))
    missing = [c for c in (text_column, label_column) if c not in raw.column_names]
    if missing:
        raise UserError(f"data files {files[0]}{' ...' if len(files) > 1 else ''}: no column "
                        f"{missing} (columns: {raw.column_names}); pass --text-column/--label-column")
    values = raw.unique(label_column)
    if label_map is None:
        label_map = LabelMap.from_labels(values)
    else:
        unknown = [v for v in values if v not in set(label_map.raw_values)]
        if unknown:
            raise UserError(f"data files {files[0]}: label(s) {unknown[:5]} are not among the "
                            f"training labels ({len(label_map.raw_values)} values); fix the rows "
                            f"or add examples of them to train")
    index = {v: i for i, v in enumerate(label_map.raw_values)}

    def encode(batch: dict) -> dict:
        ids = tokenizer(list(batch[text_column]), add_special_tokens=True, truncation=False)["input_ids"]
        ids = [seq if len(seq) <= max_length else seq[: max_length - 1] + seq[-1:] for seq in ids]
        out = {"input_ids": ids, "label": [index[v] for v in batch[label_column]],
               "length": [len(seq) for seq in ids]}
        if carve_seed is not None:
            out["carve_key"] = [carve_key(carve_seed, text) for text in batch[text_column]]
        return out

    procs = num_proc if num_proc is not None else (
        min(os.cpu_count() or 1, 8) if len(raw) >= PARALLEL_FROM_ROWS else None)
    say(f"token cache: tokenizing {len(raw):,} examples from {len(files)} file(s)"
        + (f" in {procs} processes" if procs and procs > 1 else ""))
    columns = {"input_ids": datasets.Sequence(datasets.Value("int32")),
               "label": datasets.Value("int32"), "length": datasets.Value("int32")}
    if carve_seed is not None:
        columns["carve_key"] = datasets.Value("int64")
    features = datasets.Features(columns)
    encoded = raw.map(encode, batched=True, batch_size=1000, num_proc=procs,
                      remove_columns=raw.column_names, features=features,
                      cache_file_name=str(work / "encoded.arrow"), desc="tokenizing")
    encoded.save_to_disk(str(folder))
    del raw, encoded
    shutil.rmtree(work, ignore_errors=True)
    meta = {"format": CACHE_FORMAT, "rows": int(len(datasets.load_from_disk(str(folder)))),
            "files": files, "text_column": text_column, "label_column": label_column,
            "max_length": max_length, "carve_seed": carve_seed,
            "label_map": {"names": label_map.names, "raw_values": label_map.raw_values}}
    return label_map, meta
