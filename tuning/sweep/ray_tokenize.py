"""Tokenizing a large dataset on a Ray cluster: a Ray Data job across the nodes (issue 24).

``trainables.token_cache.cached_split`` decides whether a cache must be built, where, and makes the
build atomic; this module supplies the build for a sweep on a cluster (``--address``): Ray Data
reads the split's files (JSON Lines, CSV or Parquet, compressed or not) in parallel read tasks,
tokenizes them in ``map_batches`` tasks spread over the cluster's CPUs, and the driver streams the
tokenized blocks, in file order, into the cache's Arrow files on the sweep's shared storage
(``<storage>/token-cache``, which every node mounts). The columns, their encoding and the cache
key are the local build's, so a cache built either way serves the other.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable, Optional

from trainables.labels import LabelMap
from trainables.token_cache import BatchWriter, cache_meta, cached_split, label_map_for
from trainables.tokenize_blocks import arrow_schema, check_columns, csv_convert_options, encode_batch, format_of

# rows per tokenizing task: large enough to amortise a task, small enough to spread a shard
ROWS_PER_TASK = 8192


def builder(address: Optional[str]) -> Optional[Callable]:
    """``cached_split`` building with Ray Data when the sweep runs on a cluster; ``None`` (the
    local multi-process build) otherwise."""
    return functools.partial(cached_split, build=ray_build) if address else None


def _read(kind: str, paths: list[str], text_column: str, label_column: str):
    """The files as a Ray Dataset, typed as the local build reads them (a CSV label is a string)."""
    import ray.data

    if kind == "csv":
        return ray.data.read_csv(paths, convert_options=csv_convert_options(text_column, label_column))
    return {"json": ray.data.read_json, "parquet": ray.data.read_parquet}[kind](paths)


class _Tokenize:
    """A ``map_batches`` function: pyarrow rows in, the cache's columns out (picklable, so that
    the tokenizer travels to each task once)."""

    def __init__(self, *, tokenizer, text_column: str, label_column: str, max_length: int,
                 index: dict, carve_seed: Optional[int]) -> None:
        self.tokenizer, self.text_column, self.label_column = tokenizer, text_column, label_column
        self.max_length, self.index, self.carve_seed = max_length, index, carve_seed

    def __call__(self, batch):
        import pyarrow as pa

        columns = encode_batch(batch.column(self.text_column).to_pylist(),
                               batch.column(self.label_column).to_pylist(), tokenizer=self.tokenizer,
                               max_length=self.max_length, index=self.index, carve_seed=self.carve_seed)
        return pa.table(columns, schema=arrow_schema(self.carve_seed))


def ray_build(files: list[str], building: Path, *, text_column: str, label_column: str, tokenizer,
              max_length: int, label_map: Optional[LabelMap], carve_seed: Optional[int],
              num_proc: Optional[int], say: Callable[[str], None]) -> tuple[LabelMap, dict[str, Any]]:
    """``token_cache._build``'s contract with Ray Data doing the reading and tokenizing: writes
    ``building/cache/data-00000.arrow`` (rows in the files' order) and returns the label map and
    the cache's metadata. Needs ``ray.init`` (the sweep's driver has joined its cluster)."""
    import pyarrow.compute as pc
    import ray.data

    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # the cache keeps the files' row order
    rows = _read(format_of(files[0]), [str(Path(f).resolve()) for f in files], text_column, label_column)
    check_columns(rows.schema().names, files, text_column, label_column)
    label_map = label_map_for(sorted(rows.unique(label_column), key=str), label_map, files)
    say(f"token cache: tokenizing {len(files)} file(s) with Ray Data across the cluster")
    tokenize = _Tokenize(tokenizer=tokenizer, text_column=text_column, label_column=label_column,
                         max_length=max_length, index={v: i for i, v in enumerate(label_map.raw_values)},
                         carve_seed=carve_seed)
    encoded = rows.select_columns([text_column, label_column]).map_batches(
        tokenize, batch_format="pyarrow", batch_size=ROWS_PER_TASK, num_cpus=1)
    folder = building / "cache"
    folder.mkdir(parents=True)
    truncated = 0
    schema = arrow_schema(carve_seed)
    with BatchWriter(folder / "data-00000.arrow", schema) as out:
        for block in encoded.iter_batches(batch_format="pyarrow", batch_size=None):
            table = block.cast(schema)
            for batch in table.to_batches():
                out.write(batch)
            truncated += int(pc.sum(table.column("cut").cast("int8")).as_py() or 0)
    count = out.rows
    return label_map, cache_meta(files, rows=count, truncated=truncated, text_column=text_column,
                                 label_column=label_column, max_length=max_length,
                                 carve_seed=carve_seed, label_map=label_map)
