"""A split's files read block by block with pyarrow's streaming readers and tokenized in worker
processes, for the token cache (issue 24: tokenizing memory that does not grow with the data).

``read_blocks`` yields the text and label columns of JSON Lines, CSV and Parquet files (gzip,
bzip2, zstd and xz decompressed on the fly) as Arrow record batches of about ``BLOCK_BYTES`` of
input each, never holding more than one block of a file; ``tokenize`` turns them into the cache's
columns (``arrow_schema``) in a pool of worker processes with a bounded window of blocks in
flight, in the files' order. So the tokenizing process holds a few blocks however large the data
is, and nothing maps or copies the whole input (``datasets``' ``load_dataset`` wrote an Arrow
copy of it first, which every map worker then paged through).

Column types: a text is a string; a label keeps its JSON type (a string or a number), is a string
in a CSV file (as ``trainables.data_files`` reads it) and keeps its Parquet type.
"""

from __future__ import annotations

import collections
import csv
import json
import lzma
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Iterator, Optional, Sequence

from trainables.data import _carve_key
from trainables.errors import UserError

# input bytes per block: ~100k short utterances; small against memory, large against a task's cost
BLOCK_BYTES = 8 << 20
PARQUET_ROWS = 1 << 16
ENCODE_ROWS = 8192  # rows a worker hands the tokenizer at once
# below this much input one process tokenizes (starting workers costs more than it saves)
PARALLEL_FROM_BYTES = 32 << 20
FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".zstd")
CODECS = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd", ".zstd": "zstd"}
# seconds between progress lines
PROGRESS_EVERY = 30.0


def arrow_schema(carve_seed: Optional[int]):
    """The cache's columns as a pyarrow schema: what every build writes."""
    import pyarrow as pa

    fields = [("input_ids", pa.list_(pa.int32())), ("label", pa.int32()), ("length", pa.int32()),
              ("cut", pa.bool_())]
    if carve_seed is not None:
        fields.append(("carve_key", pa.int64()))
    return pa.schema(fields)


def carve_key(seed: int, text: str) -> int:
    """The carve's per-example key: the first 63 bits of sha256(seed, text) (``trainables.data``'s
    key), an int64 column built with the cache."""
    return int.from_bytes(_carve_key(seed, text)[:8], "big") >> 1


def encode_batch(texts: Sequence[str], labels: Sequence, *, tokenizer, max_length: int,
                 index: dict, carve_seed: Optional[int]) -> dict:
    """One batch of rows as the cache's columns: token ids as ``trainables.encoding.encode_texts``
    makes them (cut to ``max_length`` keeping the closing special token), label index, length,
    whether the text was cut, and with ``carve_seed`` the carve key."""
    ids = tokenizer(list(texts), add_special_tokens=True, truncation=False, return_attention_mask=False,
                    return_token_type_ids=False)["input_ids"]
    cut = [len(seq) > max_length for seq in ids]
    ids = [seq[: max_length - 1] + seq[-1:] if long else seq for seq, long in zip(ids, cut)]
    out = {"input_ids": ids, "label": [index[v] for v in labels], "length": [len(seq) for seq in ids],
           "cut": cut}
    if carve_seed is not None:
        out["carve_key"] = [carve_key(carve_seed, text) for text in texts]
    return out


def check_columns(names: Sequence[str], files: Sequence[str], text_column: str, label_column: str) -> None:
    """A ``UserError`` naming the text or label column the files lack, and the columns they have."""
    missing = [c for c in (text_column, label_column) if c not in names]
    if missing:
        raise UserError(f"data files {files[0]}{' ...' if len(files) > 1 else ''}: no column "
                        f"{missing} (columns: {list(names)}); pass --text-column/--label-column")


def csv_convert_options(text_column: str, label_column: str, *, only_these: bool = False):
    """The text and label columns read as strings (``trainables.data_files`` reads CSV so); with
    ``only_these`` no other column is read."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    return pcsv.ConvertOptions(include_columns=[text_column, label_column] if only_these else None,
                               column_types={text_column: pa.string(), label_column: pa.string()},
                               strings_can_be_null=False)


# --------------------------------------------------------------------------- reading


def _stream(path: str):
    """The file as a pyarrow input stream, decompressed by its extension."""
    import pyarrow as pa

    name = path.lower()
    if name.endswith(".xz"):
        return pa.PythonFile(lzma.open(path, "rb"), mode="r")
    codec = next((c for ext, c in CODECS.items() if name.endswith(ext)), None)
    return pa.input_stream(path, compression=codec)


def format_of(path: str) -> Optional[str]:
    """'json', 'csv' or 'parquet' by the file's extension (under a compression one), or None."""
    name = path.lower()
    for ext in COMPRESSED:
        if name.endswith(ext):
            name = name[: -len(ext)]
    return next((kind for ext, kind in FORMATS.items() if name.endswith(ext)), None)


def read_blocks(files: Sequence[str], text_column: str, label_column: str, *,
                block_bytes: int = 0) -> Iterator:
    """The files' (text, label) columns as record batches, file after file, in row order. A
    missing column or an unreadable file is a ``UserError`` naming the file."""
    label_type = None
    for path in files:
        try:
            kind = format_of(path)
            if kind == "json":
                batches, label_type = _json_batches(path, text_column, label_column, label_type,
                                                    block_bytes or BLOCK_BYTES)
            elif kind == "csv":
                batches = _csv_batches(path, text_column, label_column, block_bytes or BLOCK_BYTES)
            else:
                batches = _parquet_batches(path, text_column, label_column)
            for batch in batches:
                if batch.num_rows:
                    yield _checked(batch, path, text_column, label_column)
        except UserError:
            raise
        except (OSError, ValueError, EOFError, lzma.LZMAError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            raise UserError(f"data file {path}: not readable as {format_of(path).upper()} "
                            f"({type(exc).__name__}: {str(exc)[:300]})") from exc


def _checked(batch, path: str, text_column: str, label_column: str):
    import pyarrow as pa

    check_columns(batch.schema.names, [path], text_column, label_column)
    text, label = batch.column(text_column), batch.column(label_column)
    for name, column in ((text_column, text), (label_column, label)):
        if column.null_count:
            raise UserError(f"data file {path}: {column.null_count} row(s) without a {name!r} value "
                            f"in one block; every row needs its text and label")
    if not pa.types.is_string(text.type) and not pa.types.is_large_string(text.type):
        raise UserError(f"data file {path}: column {text_column!r} holds {text.type}, not text")
    return pa.record_batch([text, label], names=[text_column, label_column])


def _json_batches(path: str, text_column: str, label_column: str, label_type, block_bytes: int):
    """JSON Lines with pyarrow's streaming reader (the label's type is taken from the first block
    of the first file, so that every block agrees); a file holding one JSON array is read whole."""
    import pyarrow as pa
    import pyarrow.json as pj

    with _stream(path) as peek:
        head = peek.read(4096).lstrip()
    if head.startswith(b"["):
        with _stream(path) as whole:
            rows = json.loads(whole.read())
        table = pa.Table.from_pylist([{k: r.get(k) for k in (text_column, label_column)} for r in rows
                                      if isinstance(r, dict)])
        return table.to_batches(max_chunksize=PARQUET_ROWS), label_type
    options = pj.ReadOptions(block_size=block_bytes)
    with _stream(path) as first:  # the first block's columns (and, in the first file, the label's type)
        fields = pj.open_json(first, read_options=options).schema
    if not {text_column, label_column} <= set(fields.names):
        return pj.open_json(_stream(path), read_options=options), label_type  # _checked names what is missing
    label_type = label_type or fields.field(label_column).type
    schema = pa.schema([(text_column, pa.string()), (label_column, label_type)])
    parse = pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    return pj.open_json(_stream(path), read_options=options, parse_options=parse), label_type


def _csv_batches(path: str, text_column: str, label_column: str, block_bytes: int):
    import pyarrow.csv as pcsv

    with _stream(path) as peek:
        header = peek.read(1 << 16).decode("utf-8-sig", "replace").splitlines()[:1]
    check_columns(next(iter(csv.reader(header)), []), [path], text_column, label_column)
    return pcsv.open_csv(_stream(path), read_options=pcsv.ReadOptions(block_size=block_bytes),
                         convert_options=csv_convert_options(text_column, label_column, only_these=True))


def _parquet_batches(path: str, text_column: str, label_column: str):
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = path if not any(path.lower().endswith(ext) for ext in (*CODECS, ".xz")) else \
        pa.BufferReader(_stream(path).read())  # a compressed Parquet file: random access needs it whole
    parquet = pq.ParquetFile(source)
    names = parquet.schema_arrow.names
    wanted = [c for c in (text_column, label_column) if c in names] or names[:1]
    return parquet.iter_batches(batch_size=PARQUET_ROWS, columns=wanted)


def label_values(files: Sequence[str], text_column: str, label_column: str) -> list:
    """The distinct label values of the files (one streaming pass, O(labels) memory)."""
    import pyarrow.compute as pc

    seen: set = set()
    for batch in read_blocks(files, text_column, label_column):
        seen.update(pc.unique(batch.column(label_column)).to_pylist())
    return list(seen)


# --------------------------------------------------------------------------- tokenizing

_worker: dict = {}  # a worker process's tokenizer and settings (``_start_worker``)


def _start_worker(tokenizer, settings: dict) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one process per core already
    _worker.update(settings, tokenizer=tokenizer)


def _encode(batch, settings: Optional[dict] = None):
    """A block of (text, label) rows as a record batch of the cache's columns, with ``settings``
    (tokenizer, max_length, index, carve_seed; a worker's own by default), tokenized
    ``ENCODE_ROWS`` at a time: the tokenizer's Python lists for a whole block would be most of a
    worker's memory."""
    import pyarrow as pa

    w = settings if settings is not None else _worker
    schema = arrow_schema(w["carve_seed"])
    parts = []
    for start in range(0, batch.num_rows, ENCODE_ROWS):
        rows = batch.slice(start, ENCODE_ROWS)
        columns = encode_batch(rows.column(0).to_pylist(), rows.column(1).to_pylist(),
                               tokenizer=w["tokenizer"], max_length=w["max_length"], index=w["index"],
                               carve_seed=w["carve_seed"])
        parts.append(pa.RecordBatch.from_pydict(columns, schema=schema))
    return pa.concat_batches(parts) if len(parts) != 1 else parts[0]


def workers_for(files: Sequence[str], num_proc: Optional[int]) -> int:
    """``num_proc`` if given; else one per core (at most 8) for inputs of ``PARALLEL_FROM_BYTES``
    or more, one otherwise."""
    if num_proc is not None:
        return max(1, num_proc)
    size = sum(os.path.getsize(f) for f in files)
    return min(os.cpu_count() or 1, 8) if size >= PARALLEL_FROM_BYTES else 1


def tokenize(blocks: Iterator, *, tokenizer, max_length: int, index: dict, carve_seed: Optional[int],
             procs: int, say: Callable[[str], None] = lambda message: None) -> Iterator:
    """The blocks as record batches of the cache's columns, in order: in this process, or in
    ``procs`` worker processes (started fresh, not forked from a process that may hold threads)
    with at most two blocks per worker in flight, so memory stays a few blocks."""
    settings = {"max_length": max_length, "index": index, "carve_seed": carve_seed}
    started, last, rows = time.monotonic(), time.monotonic(), 0

    def progress(batch):
        nonlocal last, rows
        rows += batch.num_rows
        if time.monotonic() - last >= PROGRESS_EVERY:
            last = time.monotonic()
            say(f"token cache: {rows:,} examples tokenized ({rows / (last - started):,.0f}/s)")
        return batch

    if procs <= 1:  # in this process, whose environment and module state stay as they were
        here = {**settings, "tokenizer": tokenizer}
        for block in blocks:
            yield progress(_encode(block, here))
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(procs, mp_context=context, initializer=_start_worker,
                             initargs=(tokenizer, settings)) as pool:
        pending: collections.deque = collections.deque()
        for block in blocks:
            pending.append(pool.submit(_encode, block))
            if len(pending) >= 2 * procs:
                yield progress(pending.popleft().result())
        while pending:
            yield progress(pending.popleft().result())
