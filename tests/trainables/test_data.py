import json

import numpy as np
import pytest

from trainables.data import (DataConfig, LabelMap, bucketed_batches, collate, load_raw_splits,
                             tokenize_splits)
from trainables.errors import DataError


def _write(folder, split, rows, ext=".jsonl"):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{split}{ext}"
    if ext == ".csv":
        cols = list(rows[0])
        path.write_text("\n".join([",".join(cols)] + [",".join(str(r[c]) for c in cols) for r in rows]) + "\n")
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _folder(tmp_path, train=None, val=None, test=None, ext=".jsonl"):
    train = train or [{"text": "turn on", "label": "on"}, {"text": "turn off", "label": "off"}]
    _write(tmp_path, "train", train, ext)
    _write(tmp_path, "validation", val or train, ext)
    _write(tmp_path, "test", test or train, ext)
    return tmp_path


def test_label_map_sorted_and_stable():
    assert LabelMap.from_labels([3, 1, 2, 1]).raw_values == [1, 2, 3]
    lm = LabelMap.from_labels(["b", "a", "c"])
    assert lm.names == ["a", "b", "c"]
    assert lm.encode(["c", "a"], split="x", origin="o").tolist() == [2, 0]
    assert LabelMap.from_dict(lm.to_dict()).names == lm.names


def test_unseen_labels_are_listed():
    lm = LabelMap.from_labels(["a", "b"])
    with pytest.raises(DataError, match=r"validation split \(f\.jsonl\) has 2 label.*\['x', 'y'\]"):
        lm.encode(["a", "x", "y"], split="validation", origin="f.jsonl")


def test_demo_data_has_many_intents():
    raw = load_raw_splits(DataConfig("demo"))
    assert len(raw["train"].texts) >= 300
    assert len(set(raw["train"].labels)) >= 10
    assert set(raw["validation"].labels) <= set(raw["train"].labels)


def test_csv_with_integer_labels_and_custom_columns(tmp_path):
    rows = [{"utt": "hello there", "intent": 1}, {"utt": "bye now", "intent": 0}]
    folder = _folder(tmp_path, rows, rows, rows, ext=".csv")
    raw = load_raw_splits(DataConfig(str(folder), "utt", "intent"))
    assert raw["train"].labels == [1, 0]  # CSV text "1" became an int


def test_massive_layout(massive_dir):
    raw = load_raw_splits(DataConfig(str(massive_dir)))
    assert [len(raw[s].texts) for s in ("train", "validation", "test")] == [11514, 2033, 2974]
    assert len(set(raw["train"].labels)) == 60


@pytest.mark.parametrize("case, match", [
    ("missing_folder", "does not exist"),
    ("missing_file", "no test file"),
    ("missing_column", r"no text column 'sentence'; its columns are \['label', 'text'\]"),
    ("empty_split", "validation split .* is empty"),
    ("empty_text", r"empty or missing text.*row\(s\) \[2\]"),
    ("unseen_label", "label\\(s\\) that the train split does not have"),
    ("bad_utf8", "not valid UTF-8"),
    ("bad_json", "line 1: not valid JSON"),
])
def test_bad_data_errors(tmp_path, case, match):
    cfg = DataConfig(str(tmp_path))
    if case == "missing_folder":
        cfg = DataConfig(str(tmp_path / "nope"))
    elif case == "missing_file":
        _write(tmp_path, "train", [{"text": "a", "label": 1}])
        _write(tmp_path, "validation", [{"text": "a", "label": 1}])
    elif case == "missing_column":
        _folder(tmp_path)
        cfg = DataConfig(str(tmp_path), text_column="sentence")
    elif case == "empty_split":
        _folder(tmp_path)
        (tmp_path / "validation.jsonl").write_text("")
    elif case == "empty_text":
        _folder(tmp_path, train=[{"text": "ok", "label": 1}, {"text": "  ", "label": 1}])
    elif case == "unseen_label":
        _folder(tmp_path, test=[{"text": "x", "label": "zzz"}])
    elif case == "bad_utf8":
        _folder(tmp_path)
        (tmp_path / "train.jsonl").write_bytes(b'{"text": "caf\xe9", "label": 1}\n')
    elif case == "bad_json":
        _folder(tmp_path)
        (tmp_path / "train.jsonl").write_text("{not json\n")
    with pytest.raises(DataError, match=match):
        raw = load_raw_splits(cfg)
        # labels are checked when the label map is applied
        from trainables.data import LabelMap
        lm = LabelMap.from_labels(raw["train"].labels)
        for s in ("validation", "test"):
            lm.encode(raw[s].labels, split=s, origin=raw[s].origin)


def test_hub_dataset_offline_points_to_local_folder(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError, match="pass a local folder"):
        load_raw_splits(DataConfig("hf:SetFit/amazon_massive_intent_en-US"))


def test_tokenize_truncates_explicitly_and_keeps_sep(tiny_model_dir):
    from trainables.models import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    long = " ".join(["word"] * 50)
    from trainables.data import RawSplit
    raw = {s: RawSplit([long, "short one"], ["a", "b"], s) for s in ("train", "validation", "test")}
    data = tokenize_splits(raw, tok, model="m", max_length=16)
    ids = data.splits["train"].input_ids
    assert len(ids[0]) == 16 and ids[0][-1] == tok.sep_token_id
    assert data.truncated == {"train": 1, "validation": 1, "test": 1}
    assert "test" not in data.without_test().splits


def test_bucketed_batches_cover_everything_once_and_group_lengths():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 40, size=1000)
    batches = bucketed_batches(lengths, 32, rng=np.random.default_rng(1))
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(1000))
    # padding waste is far below random batching
    waste = sum(lengths[b].max() * len(b) - lengths[b].sum() for b in batches)
    random_batches = np.array_split(rng.permutation(1000), len(batches))
    random_waste = sum(lengths[b].max() * len(b) - lengths[b].sum() for b in random_batches)
    assert waste < 0.3 * random_waste
    # different epochs give different orders
    again = bucketed_batches(lengths, 32, rng=np.random.default_rng(2))
    assert not all(np.array_equal(a, b) for a, b in zip(batches, again))


def test_collate_pads_to_batch_max():
    from trainables.data import EncodedSplit

    split = EncodedSplit([np.array([101, 5, 102], np.int32), np.array([101, 102], np.int32)],
                         np.array([1, 0]))
    ids, mask, labels = collate(split, np.array([0, 1]), pad_token_id=0)
    assert ids.tolist() == [[101, 5, 102], [101, 102, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 1, 0]]
    assert labels.tolist() == [1, 0]


def test_a_train_split_with_a_single_label_is_refused(tmp_path):
    one = [{"text": "turn on", "label": "on"}, {"text": "switch on", "label": "on"}]
    _folder(tmp_path, train=one, val=one, test=one)
    with pytest.raises(DataError, match=r"train split \(.*train\.jsonl\) has a single label, 'on', "
                                        r"in column 'label' \(2 rows\): a classifier needs at least 2"):
        load_raw_splits(DataConfig(str(tmp_path)))


def test_data_fingerprint_follows_contents_not_files(tmp_path):
    from trainables.data import data_fingerprint

    rows = [{"text": "turn on", "label": "on"}, {"text": "turn off", "label": "off"}]
    jsonl = load_raw_splits(DataConfig(str(_folder(tmp_path / "a", rows, rows, rows))))
    csv = load_raw_splits(DataConfig(str(_folder(tmp_path / "b", rows, rows, rows, ext=".csv"))))
    assert data_fingerprint(jsonl) == data_fingerprint(csv)  # same rows, other format
    changed = [{**rows[0], "text": "turn it on"}, rows[1]]
    other = load_raw_splits(DataConfig(str(_folder(tmp_path / "c", rows, changed, rows))))
    assert data_fingerprint(other) != data_fingerprint(jsonl)  # one validation text differs


def test_data_config_anchored_makes_folders_absolute(tmp_path, monkeypatch):
    _folder(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    assert DataConfig("data", "t", "l").anchored() == DataConfig(str(tmp_path / "data"), "t", "l")
    for source in ("demo", "hf:org/set", "org/set", "missing-folder"):
        assert DataConfig(source).anchored() == DataConfig(source)


def test_max_length_beyond_the_models_positions_is_refused_before_tokenizing(tiny_model_dir, tmp_path):
    """Issue 21: the tiny BERT has 128 positions; 1000 used to fail inside the first batch."""
    from trainables.data import check_max_length, model_positions
    from trainables.errors import ConfigError
    from trainables.models import load_tokenizer

    assert model_positions(tiny_model_dir) == 128
    check_max_length(tiny_model_dir, 128)
    raw = load_raw_splits(DataConfig(str(_folder(tmp_path / "d"))))
    with pytest.raises(ConfigError, match=r"`max_length` \(--max-length\) 1000 is more than model .* can "
                                          r"read: its position embeddings hold 128 tokens"):
        tokenize_splits(raw, load_tokenizer(tiny_model_dir), model=tiny_model_dir, max_length=1000)
    roberta = tmp_path / "roberta"
    roberta.mkdir()
    roberta.joinpath("config.json").write_text(json.dumps(
        {"model_type": "roberta", "max_position_embeddings": 514, "pad_token_id": 1}))
    assert model_positions(str(roberta)) == 512  # positions start after the padding index
    assert model_positions("m") is None  # unknown: no check (the model's own loading says why)
