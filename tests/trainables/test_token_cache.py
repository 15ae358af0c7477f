"""The memory-mapped token cache: sharded and compressed inputs, the same ids as the in-memory
path, reuse, atomic writes (a killed build never loads), and a split that pickles as its path."""

import gzip
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from trainables.encoding import EncodedSplit, bucketed_batches, collate, encode_texts
from trainables.errors import UserError
from trainables.models import load_tokenizer
from trainables.token_cache import (BUILDING, CACHE_FILE, CachedSplit, cached_split, expand_files,
                                    read_meta)

ROWS = [{"text": f"wake me up at {h} am please" + " very" * (h % 7), "label": ["alarm", "music", "news"][h % 3]}
        for h in range(60)]


def _write(folder, rows, name, *, gz=False):
    folder.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in rows)
    path = folder / (name + (".jsonl.gz" if gz else ".jsonl"))
    if gz:
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


@pytest.fixture
def shards(tmp_path):
    """The rows in three shards, one of them gzip-compressed."""
    folder = tmp_path / "train"
    _write(folder, ROWS[:20], "train-0")
    _write(folder, ROWS[20:40], "train-1", gz=True)
    _write(folder, ROWS[40:], "train-2")
    return folder


def _build(files, tmp_path, tiny_model_dir, **kw):
    said = []
    split, labels = cached_split(files, text_column="text", label_column="label",
                                 tokenizer=load_tokenizer(tiny_model_dir), max_length=kw.pop("max_length", 10),
                                 root=tmp_path / "cache", say=said.append, **kw)
    return split, labels, said


def test_sharded_compressed_input_gives_the_in_memory_ids(shards, tmp_path, tiny_model_dir):
    split, labels, said = _build(str(shards / "train-*"), tmp_path, tiny_model_dir)
    assert len(split) == 60 and labels.names == ["alarm", "music", "news"]
    expected, cut = encode_texts(load_tokenizer(tiny_model_dir), [r["text"] for r in ROWS], 10)
    assert cut > 0  # some texts were cut to max_length, keeping [SEP]
    for i, ids in enumerate(expected):
        assert split.input_ids[i].tolist() == ids.tolist()
    assert split.lengths().tolist() == [len(x) for x in expected]
    assert split.labels.tolist() == [["alarm", "music", "news"].index(r["label"]) for r in ROWS]
    assert any("wrote" in s and "60 examples" in s for s in said)
    # the training loop's batches read it like an in-memory split
    in_memory = EncodedSplit(expected, np.asarray(split.labels))
    batch = bucketed_batches(split.lengths(), 8, rng=np.random.default_rng(0))[0]
    for a, b in zip(collate(split, batch, 0), collate(in_memory, batch, 0)):
        assert (a == b).all()


def test_a_folder_of_shards_and_a_list_expand_alike(shards):
    by_folder = expand_files(str(shards))
    assert [os.path.basename(f) for f in by_folder] == ["train-0.jsonl", "train-1.jsonl.gz", "train-2.jsonl"]
    assert expand_files([str(p) for p in sorted(shards.iterdir())]) == by_folder


def test_the_second_time_reads_the_cache(shards, tmp_path, tiny_model_dir):
    first, _, _ = _build(str(shards), tmp_path, tiny_model_dir)
    second, labels, said = _build(str(shards), tmp_path, tiny_model_dir)
    assert second.path == first.path and said == [f"token cache: {first.path} (built before, reused)"]
    assert labels.names == ["alarm", "music", "news"]
    # another max_length, or a changed file, is another cache
    other, _, _ = _build(str(shards), tmp_path, tiny_model_dir, max_length=12)
    assert other.path != first.path
    _write(shards, ROWS[:5], "train-2")
    changed, _, _ = _build(str(shards), tmp_path, tiny_model_dir)
    assert changed.path != first.path and len(changed) == 45


def test_validation_uses_trains_labels_and_refuses_new_ones(shards, tmp_path, tiny_model_dir):
    _, labels, _ = _build(str(shards), tmp_path, tiny_model_dir)
    val = _write(tmp_path / "val", [{"text": "play jazz", "label": "music"}], "validation")
    split, same, _ = _build(str(val), tmp_path, tiny_model_dir, label_map=labels)
    assert same is labels and split.labels.tolist() == [1]
    bad = _write(tmp_path / "bad", [{"text": "what is the weather", "label": "weather"}], "validation")
    with pytest.raises(UserError, match=r"label\(s\) \['weather'\] are not among the training labels"):
        _build(str(bad), tmp_path, tiny_model_dir, label_map=labels)


def test_clear_errors_for_missing_files_columns_and_mixed_formats(tmp_path, tiny_model_dir):
    with pytest.raises(UserError, match="nothing there"):
        expand_files(str(tmp_path / "train-*.jsonl"))
    path = _write(tmp_path / "d", [{"utterance": "hi", "label": "a"}], "train")
    with pytest.raises(UserError, match=r"no column \['text'\].*--text-column"):
        _build(str(path), tmp_path, tiny_model_dir)
    (tmp_path / "d" / "more.csv").write_text("text,label\nhi,a\n")
    with pytest.raises(UserError, match="one format per split"):
        expand_files(str(tmp_path / "d"))


def test_the_split_pickles_as_its_path(shards, tmp_path, tiny_model_dir):
    split, _, _ = _build(str(shards), tmp_path, tiny_model_dir)
    data = pickle.dumps(split)
    assert len(data) < 500  # the path, not the tokens
    again = pickle.loads(data)
    assert isinstance(again, CachedSplit) and again.input_ids[7].tolist() == split.input_ids[7].tolist()


_KILLED_BUILD = """
import os, sys
import trainables.token_cache as tc
from trainables.models import load_tokenizer
real = tc._build
def build_then_die(*args, **kwargs):
    real(*args, **kwargs)
    os._exit(9)  # killed after tokenizing, before the cache was marked complete and renamed
tc._build = build_then_die
tc.cached_split(sys.argv[1], text_column="text", label_column="label",
                tokenizer=load_tokenizer(sys.argv[2]), max_length=10, root=sys.argv[3])
"""


def test_a_killed_build_never_loads_and_is_cleaned_up(shards, tmp_path, tiny_model_dir):
    root = tmp_path / "cache"
    done = subprocess.run([sys.executable, "-c", _KILLED_BUILD, str(shards), tiny_model_dir, str(root)],
                          capture_output=True, text=True)
    assert done.returncode == 9, done.stderr
    leftovers = list(root.iterdir())
    assert [p.name.startswith(BUILDING) for p in leftovers] == [True]
    assert read_meta(leftovers[0] / "cache") is None  # never marked complete
    with pytest.raises(UserError, match=f"no {CACHE_FILE}"):
        CachedSplit(leftovers[0] / "cache")
    split, _, said = _build(str(shards), tmp_path, tiny_model_dir)
    assert len(split) == 60 and any("wrote" in s for s in said)
    assert [p for p in root.iterdir() if p.name.startswith(BUILDING)] == []  # the dead build is gone


def test_block_batches_cover_every_example_once_in_whole_batches(monkeypatch):
    from trainables import token_cache
    from trainables.encoding import steps_per_epoch

    monkeypatch.setattr(token_cache, "WINDOW_ROWS", 64)  # windows of 4 blocks of 16 (two batches of 8)
    lengths = np.random.default_rng(1).integers(3, 40, size=203).astype(np.int32)
    batches = token_cache.BlockBatches(lengths, 8, seed=5)
    drawn = list(batches)
    assert len(drawn) == len(batches) == steps_per_epoch(203, 8)
    assert sorted(np.concatenate(drawn).tolist()) == list(range(203))
    assert sum(len(b) != 8 for b in drawn) == 1  # only the last block's tail is a short batch
    assert [b.tolist() for b in token_cache.BlockBatches(lengths, 8, seed=5)] == [b.tolist() for b in drawn]
    assert [b.tolist() for b in token_cache.BlockBatches(lengths, 8, seed=6)] != [b.tolist() for b in drawn]
    # a batch holds similar lengths (bucketed inside its window)
    spread = np.mean([np.ptp(lengths[b]) for b in drawn if len(b) == 8])
    assert spread < np.ptp(lengths) / 2
    # evaluation: in order of blocks, each sorted by length
    ordered = list(token_cache.BlockBatches(lengths, 8, seed=None))
    assert sorted(np.concatenate(ordered).tolist()) == list(range(203))
    assert all(np.all(np.diff(lengths[b]) >= 0) for b in ordered)


def test_a_cached_split_trains_and_evaluates_like_an_in_memory_one(shards, tmp_path, tiny_model_dir):
    from trainables.encoding import epoch_batches

    split, _, _ = _build(str(shards), tmp_path, tiny_model_dir)
    drawn = list(epoch_batches(split, 8, rng=np.random.default_rng(0)))
    assert len(drawn) == 8 and sorted(np.concatenate(drawn).tolist()) == list(range(60))
    for a, b in zip(collate(split, drawn[0], 0),
                    collate(EncodedSplit([split.input_ids[i] for i in range(60)], np.asarray(split.labels)),
                            drawn[0], 0)):
        assert (a == b).all()
