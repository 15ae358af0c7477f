"""Tokenize once into an on-disk, memory-mapped Arrow cache (issue 24, the data path whose memory
does not grow with the data).

``cached_split`` reads one split's files (JSON Lines, CSV or Parquet; shards given as a list or a
glob; gzip/bz2/xz/zstd compressed or not) block by block with pyarrow's streaming readers,
tokenizes the blocks in worker processes exactly as ``trainables.encoding.encode_texts`` does
(``trainables.tokenize_blocks``: a few blocks in memory whatever the data's size), and saves ``input_ids``, ``label`` and ``length``
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

from trainables.encoding import bucketed_batches
from trainables.errors import UserError
from trainables.labels import LabelMap
from trainables.tokenize_blocks import (COMPRESSED, arrow_schema, format_of, label_values,  # noqa: F401
                                        read_blocks, tokenize, workers_for)

CACHE_FORMAT = 3  # 2: record batches of ROWS_PER_BATCH rows; 3: CSV labels read as strings
CACHE_FILE = "tunebert-cache.json"
BUILDING = ".building-"


def expand_files(spec: str | Sequence[str]) -> list[str]:
    """A file, a glob, a folder of shards or a list of those: the files, sorted. Raises
    ``UserError`` naming the pattern that matched nothing."""
    specs = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    files: list[str] = []
    for item in map(str, specs):
        if os.path.isdir(item):
            matched = sorted(p for p in glob.glob(os.path.join(item, "*")) if format_of(p))
        else:
            matched = sorted(glob.glob(item)) if glob.has_magic(item) else ([item] if os.path.isfile(item) else [])
        if not matched:
            raise UserError(f"data files {item!r}: nothing there; give a file, a glob such as "
                            f"'train-*.jsonl.gz', or a folder of .jsonl/.csv/.parquet shards")
        files += matched
    kinds = {format_of(f) for f in files}
    if None in kinds or len(kinds) > 1:
        raise UserError(f"data files {files[:3]}{' ...' if len(files) > 3 else ''}: the shards of one "
                        f"split must all be .jsonl, .csv or .parquet (optionally compressed, e.g. "
                        f".jsonl.gz), one format per split")
    return files


def tokenizer_digest(tokenizer) -> str:
    """The tokenizer's identity: its full serialised form (vocabulary, normaliser, special
    tokens) for a fast tokenizer, else its vocabulary and special tokens."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    # without the truncation and padding state, which a call to the tokenizer sets and resets
    text = json.dumps({k: v for k, v in json.loads(backend.to_str()).items()
                       if k not in ("truncation", "padding")}, sort_keys=True) if backend is not None else json.dumps(
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
        chunk = 0 if len(self._values) == 1 else int(np.searchsorted(self._starts, i, side="right")) - 1
        row, offsets = i - self._starts[chunk], self._offsets[chunk]
        return self._values[chunk][offsets[row]:offsets[row + 1]]


class _ChunkedColumn:
    """A fixed-width column over the map's record batches, without copying it whole: indexing
    with an int, a slice or an index array gathers from the chunks (``np.asarray`` of it makes
    one array, for the rare caller that needs the whole column)."""

    def __init__(self, column) -> None:  # a pyarrow ChunkedArray of a fixed-width type
        self._chunks = [c.to_numpy(zero_copy_only=True) for c in column.chunks]
        self._starts = np.cumsum([0] + [len(c) for c in self._chunks])
        self.dtype = self._chunks[0].dtype if self._chunks else np.dtype(np.int32)

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __array__(self, dtype=None, copy=None):
        whole = np.concatenate(self._chunks) if self._chunks else np.zeros(0, self.dtype)
        return whole if dtype is None else whole.astype(dtype)

    def tolist(self) -> list:
        return np.asarray(self).tolist()

    def __getitem__(self, index):
        if len(self._chunks) == 1:
            return self._chunks[0][index]
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                return np.asarray(self)[index]
            first = int(np.searchsorted(self._starts, start, side="right")) - 1
            last = int(np.searchsorted(self._starts, max(stop - 1, start), side="right")) - 1
            pieces = [self._chunks[c][max(start - self._starts[c], 0):stop - self._starts[c]]
                      for c in range(max(first, 0), min(last, len(self._chunks) - 1) + 1)]
            return np.concatenate(pieces) if pieces else np.zeros(0, self.dtype)
        if np.ndim(index) == 0:
            i = int(index)
            c = int(np.searchsorted(self._starts, i, side="right")) - 1
            return self._chunks[c][i - self._starts[c]]
        index = np.asarray(index, dtype=np.int64)
        chunk = np.searchsorted(self._starts, index, side="right") - 1
        out = np.empty(len(index), dtype=self.dtype)
        for c in np.unique(chunk):
            where = chunk == c
            out[where] = self._chunks[c][index[where] - self._starts[c]]
        return out


# the cache's record batches hold this many rows: opening a mapped cache reads every batch's header,
# and the kernel maps the pages around each one, so batches of a thousand rows (as ``datasets``
# writes them) would make every process that opens the cache resident in all of it
ROWS_PER_BATCH = 1 << 19


class BatchWriter:
    """An Arrow IPC stream file written in record batches of about ``ROWS_PER_BATCH`` rows,
    however small the batches it is given (O(``ROWS_PER_BATCH``) memory)."""

    def __init__(self, path: Path, schema) -> None:
        import pyarrow as pa

        self._pa, self._sink = pa, pa.OSFile(str(path), "wb")
        self._writer = pa.ipc.new_stream(self._sink, schema)
        self._pending: list = []
        self._rows = self.rows = 0

    def write(self, batch) -> None:
        if batch.num_rows:
            self._pending.append(batch)
            self._rows += batch.num_rows
            self.rows += batch.num_rows
        if self._rows >= ROWS_PER_BATCH:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            self._writer.write_batch(self._pa.concat_batches(self._pending))
        self._pending, self._rows = [], 0

    def close(self) -> None:
        self._flush()
        self._writer.close()
        self._sink.close()

    def __enter__(self) -> "BatchWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def stream_batches(files):
    """The record batches of Arrow IPC stream files, read (not mapped): a pass over a cache bigger
    than memory leaves nothing resident behind it."""
    import pyarrow as pa

    for path in files:
        with pa.OSFile(str(path)) as source:
            yield from pa.ipc.open_stream(source)


def _read_table(path: Path):
    """The cache folder's Arrow files (IPC stream format, as ``_build`` and the Ray Data
    build write them), memory-mapped and concatenated in name order without copying."""
    import pyarrow as pa

    files = sorted(path.glob("*.arrow"))
    tables = [pa.ipc.open_stream(pa.memory_map(str(f))).read_all() for f in files]
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


class CachedSplit:
    """One tokenized split, memory-mapped from its cache folder (``EncodedSplit``'s interface).

    ``input_ids``, ``labels`` and ``lengths()`` are views of the mapped files: what a trial holds
    in its own memory is what its batches touch, not O(examples) arrays. ``epoch_batches`` draws
    an epoch's batches block by block (``trainables.encoding.epoch_batches`` calls it)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        meta = read_meta(self.path)
        if meta is None:
            raise UserError(f"{self.path} is no complete tunebert token cache (no {CACHE_FILE}); "
                            f"delete it, and the next run tokenizes again")
        self.meta = meta
        table = _read_table(self.path)
        self.input_ids = _RaggedView(table.column("input_ids"))
        self.labels = _ChunkedColumn(table.column("label"))
        self._lengths = _ChunkedColumn(table.column("length"))
        self.has_carve_keys = "carve_key" in table.column_names

    def lengths(self) -> np.ndarray:
        """All lengths as one array (O(examples)): for a caller that needs them whole; batching
        reads them block by block instead."""
        return np.asarray(self._lengths, dtype=np.int64)

    @property
    def truncated(self) -> int:
        """How many texts were cut to ``max_length`` when the cache was built."""
        return int(self.meta.get("truncated", 0))

    def epoch_batches(self, batch_size: int, *, rng: np.random.Generator, shuffle: bool = True):
        """A split of at most ``WINDOW_ROWS`` examples is batched whole, exactly as the same split
        in memory (same generator, same batches); a larger one block by block (``BlockBatches``)."""
        if len(self) <= WINDOW_ROWS:
            return bucketed_batches(self.lengths(), batch_size, rng=rng, shuffle=shuffle)
        return BlockBatches(self._lengths, batch_size, seed=int(rng.integers(2**63)) if shuffle else None)

    def __len__(self) -> int:
        return len(self.labels)

    def __reduce__(self):
        return (CachedSplit, (str(self.path),))


# --------------------------------------------------------------------------- batches, block by block

# an epoch is drawn in windows of this many examples (rounded up to whole batches): shuffled
# and length-bucketed inside a window, the windows' blocks in random order; a split no larger
# than one window is shuffled whole, as ``bucketed_batches`` does for an in-memory split
WINDOW_ROWS = 1 << 18
WINDOW_BLOCKS = 4


class BlockBatches:
    """One epoch's index batches over a memory-mapped lengths column, O(window) memory.

    The split is cut into blocks of whole batches (``WINDOW_ROWS / WINDOW_BLOCKS`` examples,
    rounded up to a multiple of ``batch_size``); the epoch visits them in a random order,
    ``WINDOW_BLOCKS`` at a time, shuffling the union of a window's examples and batching it with
    ``bucketed_batches`` (similar lengths together, batches shuffled). Only the last block can be
    short, so there are ``ceil(n / batch_size)`` batches, as for an in-memory split. Without a
    ``seed`` (evaluation) blocks go in order, each sorted by length. Iterating twice gives the
    same batches; ``len`` is known without drawing them."""

    def __init__(self, lengths: np.ndarray, batch_size: int, *, seed: Optional[int]) -> None:
        self.lengths, self.batch_size, self.seed = lengths, batch_size, seed
        per_block = max(1, WINDOW_ROWS // WINDOW_BLOCKS)
        self.block = batch_size * math.ceil(per_block / batch_size)

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def __iter__(self):
        n, block = len(self.lengths), self.block
        starts = np.arange(0, n, block)
        if self.seed is None:
            for start in starts:
                stop = min(start + block, n)
                for batch in bucketed_batches(self.lengths[start:stop], self.batch_size,
                                              rng=np.random.default_rng(0), shuffle=False):
                    yield batch + start
            return
        rng = np.random.default_rng(self.seed)
        order = rng.permutation(len(starts))
        for w in range(0, len(order), WINDOW_BLOCKS):
            part = np.concatenate([np.arange(starts[b], min(starts[b] + block, n))
                                   for b in order[w:w + WINDOW_BLOCKS]])
            lengths = np.concatenate([self.lengths[starts[b]:min(starts[b] + block, n)]
                                      for b in order[w:w + WINDOW_BLOCKS]])
            for batch in bucketed_batches(lengths, self.batch_size, rng=rng):
                yield part[batch]


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
                 say: Callable[[str], None] = lambda message: None,
                 build: Optional[Callable] = None) -> tuple[CachedSplit, LabelMap]:
    """The split's cache under ``root``, built first when missing; and its label map (the given
    one, or this split's sorted label values, as ``LabelMap.from_labels``: pass train's map to the
    other splits). A label the given map lacks is a ``UserError`` naming it. With ``carve_seed``
    the cache also holds each example's carve key, so that ``carve`` can take a validation split
    from it (a train split without a validation split of its own). ``build`` writes the Arrow
    files into the building folder (default: ``_build``, worker processes on this machine;
    ``tuning.sweep.ray_tokenize`` passes a Ray Data job over the cluster's nodes)."""
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
        label_map, meta = (build or _build)(files, building, text_column=text_column, label_column=label_column,
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


def label_map_for(values: Sequence, label_map: Optional[LabelMap], files: Sequence[str]) -> LabelMap:
    """The split's label values' map (sorted, ``LabelMap.from_labels``), or ``label_map`` after
    checking that it holds every value (validation and test take train's)."""
    if label_map is None:
        return LabelMap.from_labels(values)
    known = set(label_map.raw_values)
    unknown = [v for v in values if v not in known]
    if unknown:
        raise UserError(f"data files {files[0]}: label(s) {unknown[:5]} are not among the "
                        f"training labels ({len(label_map.raw_values)} values); fix the rows "
                        f"or add examples of them to train")
    return label_map


def cache_meta(files: Sequence[str], *, rows: int, truncated: int, text_column: str, label_column: str,
               max_length: int, carve_seed: Optional[int], label_map: LabelMap) -> dict[str, Any]:
    return {"format": CACHE_FORMAT, "rows": int(rows), "truncated": int(truncated), "files": list(files),
            "text_column": text_column, "label_column": label_column, "max_length": max_length,
            "carve_seed": carve_seed,
            "label_map": {"names": label_map.names, "raw_values": label_map.raw_values}}




def _build(files: list[str], building: Path, *, text_column: str, label_column: str, tokenizer,
           max_length: int, label_map: Optional[LabelMap], carve_seed: Optional[int],
           num_proc: Optional[int], say: Callable[[str], None]) -> tuple[LabelMap, dict[str, Any]]:
    """Read the files block by block (``tokenize_blocks.read_blocks``: pyarrow's streaming
    readers), tokenize the blocks in worker processes, and write the cache's Arrow file in the
    files' order: a few blocks in memory, whatever the data's size. Train's labels are read in a
    first pass (the label map is sorted); other splits' are checked against train's block by block."""
    import pyarrow.compute as pc

    if label_map is None:
        say(f"token cache: reading the labels of {len(files)} file(s)")
        label_map = label_map_for(label_values(files, text_column, label_column), None, files)
    index = {v: i for i, v in enumerate(label_map.raw_values)}

    def checked(blocks):
        for block in blocks:
            label_map_for(pc.unique(block.column(1)).to_pylist(), label_map, files)
            yield block

    procs = workers_for(files, num_proc)
    say(f"token cache: tokenizing {len(files)} file(s)" + (f" in {procs} processes" if procs > 1 else ""))
    folder = building / "cache"
    folder.mkdir(parents=True)
    truncated = 0
    with BatchWriter(folder / "data-00000.arrow", arrow_schema(carve_seed)) as out:
        for batch in tokenize(checked(read_blocks(files, text_column, label_column)), tokenizer=tokenizer,
                              max_length=max_length, index=index, carve_seed=carve_seed, procs=procs,
                              say=say):
            truncated += int(pc.sum(batch.column("cut").cast("int8")).as_py() or 0)
            out.write(batch)
    return label_map, cache_meta(files, rows=out.rows, truncated=truncated, text_column=text_column,
                                 label_column=label_column, max_length=max_length,
                                 carve_seed=carve_seed, label_map=label_map)
