"""Reading a split block by block and tokenizing the blocks in worker processes: every format and
compression gives the same rows, blocks stay small, the worker pool keeps the files' order, and a
bad file is a clear error naming it."""

import csv
import os
import json
import lzma

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from trainables import tokenize_blocks
from trainables.encoding import encode_texts
from trainables.errors import UserError
from trainables.models import load_tokenizer
from trainables.token_cache import cached_split
from trainables.tokenize_blocks import label_values, read_blocks

ROWS = [{"text": f"play song number {i} " + "loud " * (i % 5), "label": ["music", "alarm", "news"][i % 3],
         "id": i} for i in range(300)]


def _jsonl(rows) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _write(path, data: bytes):
    name = str(path)
    if name.endswith(".xz"):
        with lzma.open(path, "wb") as f:
            f.write(data)
        return path
    codec = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd"}.get(path.suffix)
    with pa.output_stream(name, compression=codec) as out:
        out.write(data)
    return path


def _texts_labels(files, **kw):
    texts, labels = [], []
    for batch in read_blocks([str(f) for f in files], "text", "label", **kw):
        texts += batch.column(0).to_pylist()
        labels += batch.column(1).to_pylist()
    return texts, labels


@pytest.mark.parametrize("name", ["train.jsonl", "train.jsonl.gz", "train.jsonl.bz2", "train.jsonl.zst",
                                  "train.jsonl.xz", "train.json"])
def test_json_lines_in_every_compression_read_the_same_rows(tmp_path, name):
    path = _write(tmp_path / name, _jsonl(ROWS))
    texts, labels = _texts_labels([path])
    assert texts == [r["text"] for r in ROWS] and labels == [r["label"] for r in ROWS]


def test_a_json_array_csv_and_parquet_read_the_same_rows(tmp_path):
    array = _write(tmp_path / "a.json", json.dumps(ROWS).encode())
    table = pa.Table.from_pylist(ROWS)
    pq.write_table(table, tmp_path / "b.parquet")
    with open(tmp_path / "c.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "text", "label"])
        writer.writeheader()
        writer.writerows(ROWS)
    with open(tmp_path / "c.csv", "rb") as f:
        _write(tmp_path / "d.csv.gz", f.read())
    expected = ([r["text"] for r in ROWS], [r["label"] for r in ROWS])
    for files in ([array], [tmp_path / "b.parquet"], [tmp_path / "c.csv"], [tmp_path / "d.csv.gz"]):
        assert _texts_labels(files) == expected, files


def test_csv_labels_are_strings_as_the_in_memory_reader_reads_them(tmp_path):
    (tmp_path / "t.csv").write_text("text,label\nhello there,1\nbye now,2\nhi,1\n")
    assert _texts_labels([tmp_path / "t.csv"])[1] == ["1", "2", "1"]
    assert sorted(label_values([str(tmp_path / "t.csv")], "text", "label")) == ["1", "2"]


def test_blocks_are_small_whatever_the_file(tmp_path):
    path = _write(tmp_path / "train.jsonl.gz", _jsonl(ROWS * 10))
    sizes = [b.num_rows for b in read_blocks([str(path)], "text", "label", block_bytes=4096)]
    assert sum(sizes) == 3000 and len(sizes) > 20 and max(sizes) < 200


def test_numeric_json_labels_keep_their_type_across_files(tmp_path):
    first = _write(tmp_path / "train-0.jsonl", _jsonl([{"text": "a b", "label": 3}, {"text": "c", "label": 1}]))
    second = _write(tmp_path / "train-1.jsonl", _jsonl([{"text": "d", "label": 2}]))
    assert _texts_labels([first, second])[1] == [3, 1, 2]


@pytest.mark.parametrize("content, message", [
    (b'{"text": "a", "label": "x"}\n{"text": "b", "label": \n', "not readable as JSON"),
    (b'{"text": "a", "label": "x"}\n{"label": "y"}\n', r"row\(s\) without a 'text' value"),
    (b'{"utterance": "a", "label": "x"}\n', r"no column \['text'\]"),
    (b'{"text": 5, "label": "x"}\n', r"Column\(/text\) changed from string to number"),
])
def test_a_bad_file_is_an_error_naming_it(tmp_path, content, message):
    path = _write(tmp_path / "train.jsonl", content)
    with pytest.raises(UserError, match=message) as caught:
        _texts_labels([path])
    assert "train.jsonl" in str(caught.value)


def test_worker_processes_give_the_single_process_cache_in_the_files_order(tmp_path, tiny_model_dir,
                                                                          monkeypatch):
    monkeypatch.setattr(tokenize_blocks, "BLOCK_BYTES", 2048)  # many blocks, so order is at stake
    monkeypatch.setattr(tokenize_blocks, "PROGRESS_EVERY", 0.0)
    folder = tmp_path / "train"
    folder.mkdir()
    _write(folder / "train-0.jsonl.gz", _jsonl(ROWS[:150]))
    _write(folder / "train-1.jsonl", _jsonl(ROWS[150:]))
    tokenizer = load_tokenizer(tiny_model_dir)
    splits, said = [], []
    for procs, root in ((1, "one"), (2, "two")):
        split, labels = cached_split(str(folder), text_column="text", label_column="label", tokenizer=tokenizer,
                                     max_length=8, root=tmp_path / root, num_proc=procs, carve_seed=7,
                                     say=said.append)
        splits.append(split)
    one, two = splits
    expected, cut = encode_texts(tokenizer, [r["text"] for r in ROWS], 8)
    assert [two.input_ids[i].tolist() for i in range(len(ROWS))] == [e.tolist() for e in expected]
    assert np.asarray(two.labels).tolist() == np.asarray(one.labels).tolist() == [
        labels.raw_values.index(r["label"]) for r in ROWS]
    assert two.truncated == one.truncated == cut > 0
    assert any("in 2 processes" in s for s in said)
    assert any("examples tokenized" in s for s in said)  # progress on long work


def test_tokenizing_in_this_process_leaves_its_environment_and_module_state(tmp_path, tiny_model_dir,
                                                                           monkeypatch):
    monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    path = _write(tmp_path / "train.jsonl", _jsonl(ROWS[:20]))
    cached_split(str(path), text_column="text", label_column="label", tokenizer=load_tokenizer(tiny_model_dir),
                 max_length=8, root=tmp_path / "cache", num_proc=1)
    assert "TOKENIZERS_PARALLELISM" not in os.environ  # the user's tokenizer keeps its threads
    assert tokenize_blocks._worker == {}  # no tokenizer kept alive after the build
