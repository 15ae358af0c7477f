"""Data through the token cache: which folders take it, their split files, the loaded splits, the
fingerprint, and a trial trained on the cache equal to one trained in memory."""

import dataclasses
import gzip
import json
import os

import numpy as np
import pytest
import torch

from trainables import streamed, task_data
from trainables.data import DataConfig
from trainables.errors import ConfigError, DataError
from trainables.models import load_tokenizer
from trainables.token_cache import CachedSplit

DEMO = os.path.join(os.path.dirname(streamed.__file__), "demo_data")


def _rows(split):
    with open(os.path.join(DEMO, f"{split}.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def _write(path, rows, gz=False):
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if gz:
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)


@pytest.fixture
def sharded(tmp_path):
    """The demo data with train in three shards (one gzip-compressed), validation and test whole."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    train = _rows("train")
    _write(folder / "train-00000.jsonl", train[:120])
    _write(folder / "train-00001.jsonl.gz", train[120:240], gz=True)
    _write(folder / "train-00002.jsonl", train[240:])
    _write(folder / "validation.jsonl", _rows("validation"))
    _write(folder / "test.jsonl.gz", _rows("test"), gz=True)
    return folder


def _config(folder, tmp_path, **kw):
    return DataConfig(str(folder), cache_dir=str(tmp_path / "cache"), **kw)


def test_split_files_by_role_shards_and_names(sharded, tmp_path):
    found = streamed.split_files(sharded, _config(sharded, tmp_path))
    assert [p.name for p in found["train"]] == ["train-00000.jsonl", "train-00001.jsonl.gz", "train-00002.jsonl"]
    assert [p.name for p in found["validation"]] == ["validation.jsonl"]
    assert [p.name for p in found["test"]] == ["test.jsonl.gz"]
    (sharded / "train-old.jsonl").write_text("")  # a set-aside file is no shard
    assert len(streamed.split_files(sharded, _config(sharded, tmp_path))["train"]) == 3
    # validation=none sets the validation file aside (then carved from train); names map roles
    assert streamed.split_files(sharded, _config(sharded, tmp_path, split_names="validation=none"))["validation"] == []
    (sharded / "test.jsonl.gz").rename(sharded / "eval.jsonl.gz")
    with pytest.raises(DataError, match=r"no test files: name them test.jsonl, or test-00000.jsonl.gz .*--split-names test=NAME"):
        streamed.split_files(sharded, _config(sharded, tmp_path))
    assert [p.name for p in streamed.split_files(sharded, _config(sharded, tmp_path, split_names="test=eval"))["test"]] == ["eval.jsonl.gz"]


def test_auto_takes_the_cache_for_shards_compression_and_size(sharded, tmp_path, monkeypatch):
    assert streamed.is_streamed(_config(sharded, tmp_path))  # shards
    assert not streamed.is_streamed(DataConfig("demo"))
    assert not streamed.is_streamed(DataConfig(DEMO))  # one small file per split
    assert streamed.is_streamed(DataConfig(DEMO, token_cache=True))
    assert not streamed.is_streamed(_config(sharded, tmp_path, token_cache=False))
    one = tmp_path / "one"
    one.mkdir()
    for split in ("train", "validation", "test"):
        _write(one / f"{split}.jsonl", _rows(split))
    assert not streamed.is_streamed(DataConfig(str(one)))
    monkeypatch.setattr(streamed, "STREAM_FROM_BYTES", 1000)  # train weighs more than this
    assert streamed.is_streamed(DataConfig(str(one)))
    monkeypatch.undo()
    (one / "train.csv").write_text("text,label\nhi,a\n")  # two formats of one split: no shards
    assert not streamed.is_streamed(DataConfig(str(one)))
    with pytest.raises(ConfigError, match="must be on, off or auto"):
        DataConfig(DEMO, token_cache="yes")


def test_loaded_splits_are_mapped_caches_with_trains_labels(sharded, tmp_path, tiny_model_dir):
    said = []
    data, fingerprint = task_data.load_encoded(_config(sharded, tmp_path), "finetune",
                                               load_tokenizer(tiny_model_dir), model=tiny_model_dir,
                                               max_length=64, say=said.append)
    assert all(isinstance(s, CachedSplit) for s in data.splits.values())
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 360, "validation": 96, "test": 96}
    in_memory = task_data.encode(task_data.load_raw(DataConfig(DEMO), "finetune"), load_tokenizer(tiny_model_dir),
                                 trainable="finetune", model=tiny_model_dir, max_length=64)
    assert data.label_map.to_dict() == in_memory.label_map.to_dict()
    for split in ("train", "test"):
        assert [data.splits[split].input_ids[i].tolist() for i in range(0, 96, 7)] == \
               [in_memory.splits[split].input_ids[i].tolist() for i in range(0, 96, 7)]
        assert np.asarray(data.splits[split].labels).tolist() == in_memory.splits[split].labels.tolist()
    assert fingerprint.startswith("files:") and any("wrote" in s for s in said)
    # without the test split (what trials get), and the second load reuses every cache
    said.clear()
    again, same = task_data.load_encoded(_config(sharded, tmp_path), "finetune", load_tokenizer(tiny_model_dir),
                                         model=tiny_model_dir, max_length=64, include_test=False, say=said.append)
    assert set(again.splits) == {"train", "validation"} and same == fingerprint
    assert said and all("reused" in s for s in said)


def test_a_carved_validation_split_and_its_refusals(sharded, tmp_path, tiny_model_dir):
    (sharded / "validation.jsonl").unlink()
    cfg = _config(sharded, tmp_path, val_fraction=0.25, split_seed=3)
    data, _ = task_data.load_encoded(cfg, "finetune", load_tokenizer(tiny_model_dir), model=tiny_model_dir,
                                     max_length=64)
    n_val = len(data.splits["validation"])
    assert len(data.splits["train"]) + n_val == 360 and 50 < n_val < 130
    _write(sharded / "validation.jsonl", _rows("validation"))
    with pytest.raises(DataError, match=r"--val-fraction 0.25: .* has a validation split"):
        task_data.load_encoded(cfg, "finetune", load_tokenizer(tiny_model_dir), model=tiny_model_dir, max_length=64)
    with pytest.raises(DataError, match="not a local folder"):
        streamed.load(DataConfig("demo", token_cache=True), load_tokenizer(tiny_model_dir),
                      model=tiny_model_dir, max_length=64)


def test_the_fingerprint_follows_the_files(sharded, tmp_path):
    cfg = _config(sharded, tmp_path)
    first = task_data.fingerprint_of(cfg, "finetune")
    assert task_data.fingerprint_of(cfg, "finetune") == first
    assert task_data.fingerprint_of(dataclasses.replace(cfg, text_column="utterance"), "finetune") != first
    _write(sharded / "train-00002.jsonl", _rows("train")[240:300])
    assert task_data.fingerprint_of(cfg, "finetune") != first


def test_a_trial_on_the_cache_trains_as_the_same_data_in_memory(sharded, tmp_path, tiny_model_dir, tiny_config):
    from trainables.finetune import fit

    tokenizer = load_tokenizer(tiny_model_dir)
    cached, _ = task_data.load_encoded(_config(sharded, tmp_path), "finetune", tokenizer,
                                       model=tiny_model_dir, max_length=64, include_test=False)
    in_memory, _ = task_data.load_encoded(DataConfig(DEMO), "finetune", tokenizer,
                                          model=tiny_model_dir, max_length=64, include_test=False)
    curves = []
    for data in (cached, in_memory):
        reports = []
        fit(tiny_config, data, device=torch.device("cpu"), report=lambda m, w: reports.append(m))
        curves.append([(m["train_loss"], m["val_loss"], m["val_accuracy"]) for m in reports])
    assert len(curves[0]) == 2
    np.testing.assert_allclose(np.array(curves[0]), np.array(curves[1]), rtol=1e-5, atol=1e-6)
