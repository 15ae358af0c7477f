"""Joint data: one dataset or two trained together, validation carved, tags aligned to the first
word piece, truncation, batches, and the real SNIPS folder."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from trainables.data import DataConfig
from trainables.errors import ConfigError, DataError
from trainables.models import load_tokenizer, resolve_model
from trainables.tagging import (TAG_IGNORE, JointRawSplit, TagMap, collate_joint,
                                encode_joint_splits, load_joint_splits, predicted_word_tags)

SNIPS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "snips"
I = TAG_IGNORE


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return load_tokenizer(tiny_model_dir)


def _raw(words, tags, labels=None, origin="hand"):
    n = len(words)
    return JointRawSplit(words, tags, labels or [None] * n, [0] * n, origin, list(range(1, n + 1)))


def _three(split):
    return {"train": split, "validation": split, "test": split}


def _jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _conll(folder, sentences, names=("train.conll", "test.conll")):
    folder.mkdir(parents=True, exist_ok=True)
    text = "\n".join("".join(f"{w} {t}\n" for w, t in zip(words, tags)) for words, tags in sentences)
    for name in names:
        (folder / name).write_text(text)
    return folder


SENTENCES = [(["play", f"song{i}", "now"], ["O", "B-track", "O"]) for i in range(20)]


def _text_folder(folder, n=20):
    rows = [{"text": f"hello there {i}", "label": "greet" if i % 2 else "bye"} for i in range(n)]
    _jsonl(folder / "train.jsonl", rows)
    _jsonl(folder / "validation.jsonl", rows[:4])
    _jsonl(folder / "test.jsonl", rows[:4])
    return folder


# --------------------------------------------------------------------------- TagMap


def test_the_tag_map_is_complete_bio_with_o_first():
    tags = TagMap.from_tags([["O", "I-time", "B-genre"], None, ["B-time"]])
    assert tags.names == ["O", "B-genre", "I-genre", "B-time", "I-time"]
    assert tags.types == ["genre", "time"] and len(tags) == 5
    assert TagMap.from_dict(tags.to_dict()) == tags
    encoded = tags.encode([["B-time", "O"], None], split="validation", origin="dev")
    assert encoded[0].tolist() == [3, 0] and encoded[1] is None
    with pytest.raises(DataError, match=r"validation split \(dev\) tags 1 entity type\(s\) that "
                                        r"the train split never has: \['city'\]"):
        tags.encode([["B-city", "I-time"]], split="validation", origin="dev")


# --------------------------------------------------------------------------- alignment


def test_the_first_piece_of_each_word_carries_its_tag(tokenizer, tiny_model_dir):
    words = ["add", "playlist", "zxqvbn", "now"]
    raw = _three(_raw([words], [["O", "B-playlist", "B-name", "O"]], ["AddToPlaylist"]))
    data = encode_joint_splits(raw, tokenizer, model=tiny_model_dir, max_length=32)
    split = data.splits["train"]
    pieces = tokenizer.convert_ids_to_tokens(split.input_ids[0].tolist())
    assert pieces == ["[CLS]", "add", "play", "##list", "z", "##x", "##q", "##vb", "##n", "now",
                      "[SEP]"]
    o, b_name, b_playlist = 0, 1, 3  # O, B-name, I-name, B-playlist, I-playlist
    assert split.tag_ids[0].tolist() == [I, o, b_playlist, I, b_name, I, I, I, I, o, I]
    assert split.word_starts[0].tolist() == [1, 2, 4, 9]
    assert split.labels.tolist() == [0] and data.num_labels == 1 and data.num_tags == 5
    assert predicted_word_tags(split.word_starts[0], split.tag_ids[0].clip(0), data.tag_map, 4) \
        == ["O", "B-playlist", "B-name", "O"]


def test_words_cut_off_by_max_length_have_no_piece_and_are_predicted_o(tokenizer, tiny_model_dir):
    words = ["add", "playlist", "now"]
    raw = _three(_raw([words, ["now"]], [["O", "B-playlist", "B-time"], ["B-time"]]))
    data = encode_joint_splits(raw, tokenizer, model=tiny_model_dir, max_length=4)
    split = data.splits["validation"]
    assert tokenizer.convert_ids_to_tokens(split.input_ids[0].tolist()) == ["[CLS]", "add", "play",
                                                                            "[SEP]"]
    assert split.word_starts[0].tolist() == [1, 2, -1]
    assert split.tag_ids[0].tolist() == [I, 0, 1, I]  # O, B-playlist
    assert split.gold_tags[0] == ["O", "B-playlist", "B-time"]  # metrics still see the cut word
    assert data.truncated == {"train": 1, "validation": 1, "test": 1}
    assert data.label_map is None and not data.has_intent and data.has_slots
    everything_b_time = np.full(4, data.tag_map.index()["B-time"])
    assert predicted_word_tags(split.word_starts[0], everything_b_time, data.tag_map, 3) == \
        ["B-time", "B-time", "O"]


def test_a_word_the_tokenizer_gives_no_piece_starts_nowhere(tokenizer, tiny_model_dir):
    raw = _three(_raw([["a", "\u200b", "b"]], [["O", "B-x", "O"]]))
    split = encode_joint_splits(raw, tokenizer, model=tiny_model_dir, max_length=16).splits["test"]
    assert split.word_starts[0].tolist() == [1, -1, 2]
    assert split.tag_ids[0].tolist() == [I, 0, 0, I]


def test_batches_pad_ids_with_the_pad_token_and_tags_with_the_ignore_index(tokenizer, tiny_model_dir):
    raw = _three(_raw([["play", "jazz"], ["now"]], [["O", "B-genre"], None], ["music", "time"]))
    data = encode_joint_splits(raw, tokenizer, model=tiny_model_dir, max_length=16)
    batch = collate_joint(data.splits["train"], np.array([1, 0]), data.pad_token_id)
    assert batch["input_ids"].shape == (2, 4) and batch["input_ids"].dtype.is_floating_point is False
    assert batch["input_ids"][0, 3].item() == data.pad_token_id
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert batch["tag_ids"].tolist() == [[I, I, I, I], [I, 0, 1, I]]  # row 0 has no tags
    assert batch["labels"].tolist() == [1, 0]


def test_labels_or_tags_train_never_has_are_refused(tokenizer, tiny_model_dir):
    train = _raw([["a"], ["b"]], [["B-x"], ["O"]], ["p", "q"])
    with pytest.raises(DataError, match=r"validation split \(v\).*\['r'\]"):
        encode_joint_splits({"train": train, "validation": _raw([["a"]], [["O"]], ["r"], "v")},
                            tokenizer, model=tiny_model_dir, max_length=16)
    with pytest.raises(DataError, match=r"test split \(t\) tags 1 entity type.*\['y'\]"):
        encode_joint_splits({"train": train, "test": _raw([["a"]], [["I-y"]], ["p"], "t")},
                            tokenizer, model=tiny_model_dir, max_length=16)


def test_a_slow_tokenizer_and_a_too_long_max_length_are_refused(tiny_model_dir):
    from transformers.models import bert

    # transformers 5 names the Python (slow) tokenizer BertTokenizerLegacy; before, BertTokenizer
    slow = getattr(bert, "BertTokenizerLegacy", None) or bert.BertTokenizer
    raw = _three(_raw([["a"]], [["O"]]))
    with pytest.raises(ConfigError, match="slow .*BertTokenizer.*word_ids"):
        encode_joint_splits(raw, slow.from_pretrained(resolve_model("minilm-l6")),
                            model=tiny_model_dir, max_length=16)
    with pytest.raises(ConfigError, match="max_length.* 512 is more than"):
        encode_joint_splits(raw, load_tokenizer(tiny_model_dir), model=tiny_model_dir,
                            max_length=512)


# --------------------------------------------------------------------------- loading


def test_two_datasets_train_together_with_sources_0_and_1(tmp_path, tokenizer, tiny_model_dir):
    text, tags = _text_folder(tmp_path / "intents"), _conll(tmp_path / "ner", SENTENCES)
    raw = load_joint_splits(DataConfig(str(text)), DataConfig(str(tags)))
    train = raw["train"]
    assert train.sources == [0] * 20 + [1] * 18  # the CoNLL side gave 2 of 20 to validation
    assert train.words[0] == ["hello", "there", "0"] and train.tags[0] is None
    assert train.labels[20] is None and train.tags[20] == ["O", "B-track", "O"]
    assert train.source_names == ("intents", "ner")
    assert raw["validation"].sources == [0] * 4 + [1] * 2
    data = encode_joint_splits(raw, tokenizer, model=tiny_model_dir, max_length=16)
    assert data.has_intent and data.has_slots and data.source_names == ("intents", "ner")
    assert data.splits["train"].labels[20] == TAG_IGNORE
    assert data.splits["train"].sources.tolist() == train.sources
    assert "test" not in data.without_test().splits and data.without_test().num_labels == 2


def test_two_datasets_of_the_same_task_are_refused(tmp_path):
    first, second = _conll(tmp_path / "a", SENTENCES), _conll(tmp_path / "b", SENTENCES)
    with pytest.raises(ConfigError, match="both a and b bring tags only"):
        load_joint_splits(DataConfig(str(first)), DataConfig(str(second)))
    with pytest.raises(ConfigError, match="both x and x_2 bring sentence labels only"):
        load_joint_splits(DataConfig(str(_text_folder(tmp_path / "x"))),
                          DataConfig(str(_text_folder(tmp_path / "y" / "x"))))


def test_joint_data_cannot_be_one_of_two_datasets(tmp_path):
    rows = [{"tokens": ["hi"], "tags": ["O"], "label": "greet"}] * 4
    for split in ("train", "validation", "test"):
        _jsonl(tmp_path / "joint" / f"{split}.jsonl", rows)
    with pytest.raises(ConfigError, match="joint holds labels and tags already"):
        load_joint_splits(DataConfig(str(tmp_path / "joint")),
                          DataConfig(str(_conll(tmp_path / "ner", SENTENCES))))


def test_the_carved_validation_split_is_the_same_every_call(tmp_path, caplog):
    folder = _conll(tmp_path / "ner", SENTENCES)
    with caplog.at_level(logging.WARNING, logger="trainables.tagging"):
        first = load_joint_splits(DataConfig(str(folder)))
    second = load_joint_splits(DataConfig(str(folder)))
    assert first["validation"].rows == second["validation"].rows and len(first["validation"]) == 2
    assert sorted(first["train"].rows + first["validation"].rows) == list(range(1, 80, 4))
    other_seed = load_joint_splits(DataConfig(str(folder), split_seed=1))
    assert other_seed["validation"].rows != first["validation"].rows
    assert any("2 of its 20 examples (0.1, --split-seed 0) are the validation split"
               in r.getMessage() for r in caplog.records)


def test_the_carve_is_stratified_by_label_when_examples_have_one(tmp_path):
    for split in ("train", "test"):
        _jsonl(tmp_path / f"{split}.jsonl",
               [{"tokens": ["w", str(i)], "tags": ["O", "O"], "label": "ab"[i % 2]} for i in range(20)])
    raw = load_joint_splits(DataConfig(str(tmp_path), val_fraction=0.2))
    assert sorted(raw["validation"].labels) == ["a", "a", "b", "b"]


def test_an_empty_carved_validation_split_asks_for_a_validation_file(tmp_path):
    folder = _conll(tmp_path, SENTENCES[:1])
    with pytest.raises(DataError, match="none can be carved from its 1 examples.*Add a validation"):
        load_joint_splits(DataConfig(str(folder)))


def test_snips_loads_with_its_published_counts():
    raw = load_joint_splits(DataConfig(str(SNIPS)))
    assert {k: len(v) for k, v in raw.items()} == {"train": 13084, "validation": 700, "test": 700}
    assert len(set(raw["train"].labels)) == 7 and raw["train"].source_names == ("snips",)
    assert all(len(w) == len(t) for w, t in zip(raw["test"].words, raw["test"].tags))
