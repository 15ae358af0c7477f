"""Token-tagging data as people have it: seq.in/seq.out/label folders, JSON Lines and Parquet token
rows, CoNLL column files; layout detection and its ambiguity error; bad rows refused with their
line, or dropped with --skip-bad-rows."""

import json

import pytest

from trainables.data import DataConfig
from trainables.errors import ConfigError, DataError
from trainables.tagging_files import (detect_layout, read_conll_folder, read_seq_folder,
                                      read_token_row_folder)


def _seq_split(folder, words, tags, labels=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "seq.in").write_text("".join(line + "\n" for line in words))
    (folder / "seq.out").write_text("".join(line + "\n" for line in tags))
    if labels is not None:
        (folder / "label").write_text("".join(line + "\n" for line in labels))


WORDS = ["wake me up at nine am", "play some jazz ", "add it to my playlist"]
TAGS = ["O O O O B-time I-time", "O O B-genre ", "O O O O B-playlist"]
LABELS = ["SetAlarm", "PlayMusic", "AddToPlaylist"]


def _seq_folder(root, words=WORDS, tags=TAGS, labels=LABELS):
    for split in ("train", "dev", "test"):
        _seq_split(root / split, words, tags, labels)
    return root


def _jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


CONLL = """-DOCSTART- -X- O O

EU NNP B-ORG
rejects VBZ O
German JJ B-MISC

Peter NNP B-PER
Blackburn NNP I-PER
"""


def _conll_folder(root, text=CONLL, names=("train.conll", "dev.conll", "test.conll")):
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        (root / name).write_text(text)
    return root


# --------------------------------------------------------------------------- seq.in / seq.out / label


def test_a_seq_folder_loads_words_tags_labels_and_line_numbers(tmp_path):
    splits, notes = read_seq_folder(_seq_folder(tmp_path), DataConfig(str(tmp_path)))
    assert sorted(splits) == ["test", "train", "validation"] and notes == []
    train = splits["train"]
    assert train.words[1] == ["play", "some", "jazz"]  # the trailing space SNIPS has is no word
    assert train.tags[0] == ["O", "O", "O", "O", "B-time", "I-time"]
    assert train.labels == LABELS and train.rows == [1, 2, 3] and train.sources == [0, 0, 0]
    assert splits["validation"].origin == str(tmp_path / "dev")


def test_the_label_file_is_optional(tmp_path):
    for split in ("train", "test"):
        _seq_split(tmp_path / split, WORDS, TAGS)
    splits, _ = read_seq_folder(tmp_path, DataConfig(str(tmp_path)))
    assert splits["train"].labels == [None, None, None] and "validation" not in splits


def test_files_of_a_split_with_different_line_counts_are_refused_naming_both_counts(tmp_path):
    _seq_folder(tmp_path)
    _seq_split(tmp_path / "dev", WORDS, TAGS[:2], LABELS)
    with pytest.raises(DataError) as err:
        read_seq_folder(tmp_path, DataConfig(str(tmp_path)))
    message = str(err.value)
    assert f"{tmp_path / 'dev' / 'seq.in'}: 3 lines" in message
    assert f"{tmp_path / 'dev' / 'seq.out'}: 2 lines" in message


def test_a_line_whose_tag_count_differs_from_its_word_count_is_a_bad_row(tmp_path):
    _seq_folder(tmp_path)
    _seq_split(tmp_path / "train", WORDS, [TAGS[0], "O O", TAGS[2]], LABELS)
    with pytest.raises(DataError) as err:
        read_seq_folder(tmp_path, DataConfig(str(tmp_path)))
    assert (f"train split ({tmp_path / 'train'}), line 2: seq.out has 2 tag(s) but seq.in has 3 "
            f"word(s)") in str(err.value)
    assert "--skip-bad-rows" in str(err.value)


def test_skip_bad_rows_drops_bad_lines_and_says_which(tmp_path, caplog):
    _seq_folder(tmp_path)
    _seq_split(tmp_path / "train", WORDS + ["", "play it"], TAGS + ["", "O B-thing extra"],
               LABELS + ["PlayMusic", "PlayMusic"])
    config = DataConfig(str(tmp_path), skip_bad_rows=True)
    splits, notes = read_seq_folder(tmp_path, config)
    assert splits["train"].rows == [1, 2, 3]
    assert notes == [f"train split ({tmp_path / 'train'}): skipped 2 of 5 lines that cannot be used "
                     f"(--skip-bad-rows): line(s) 4, 5; first: it has no words"]


def test_an_empty_line_is_a_bad_row(tmp_path):
    _seq_folder(tmp_path)
    _seq_split(tmp_path / "test", ["", *WORDS[1:]], ["", *TAGS[1:]], LABELS)
    with pytest.raises(DataError, match=r"test split .*, line 1: it has no words"):
        read_seq_folder(tmp_path, DataConfig(str(tmp_path)))


def test_a_tag_that_is_not_bio_is_a_bad_row_naming_it(tmp_path):
    _seq_folder(tmp_path)
    _seq_split(tmp_path / "train", WORDS, [TAGS[0], "O O U-genre", TAGS[2]], LABELS)
    with pytest.raises(DataError) as err:
        read_seq_folder(tmp_path, DataConfig(str(tmp_path)))
    assert "line 2: tag 'U-genre' (word 3, 'jazz') is not a BIO tag" in str(err.value)
    splits, _ = read_seq_folder(tmp_path, DataConfig(str(tmp_path), skip_bad_rows=True))
    assert splits["train"].rows == [1, 3]


def test_an_i_tag_without_a_b_tag_before_it_is_read_as_it_is(tmp_path):
    _seq_folder(tmp_path, tags=["O O O O I-time I-time", TAGS[1], TAGS[2]])
    splits, _ = read_seq_folder(tmp_path, DataConfig(str(tmp_path)))
    assert splits["train"].tags[0][4:] == ["I-time", "I-time"]


# --------------------------------------------------------------------------- token rows


def _rows(labelled=True, tokens="tokens", tags="tags"):
    rows = [{tokens: w.split(), tags: t.split()} for w, t in zip(WORDS, TAGS)]
    if labelled:
        for row, label in zip(rows, LABELS):
            row["label"] = label
    return rows


def test_jsonl_token_rows_load_with_their_labels(tmp_path):
    for split in ("train", "validation", "test"):
        _jsonl(tmp_path / f"{split}.jsonl", _rows())
    splits, _ = read_token_row_folder(tmp_path, DataConfig(str(tmp_path)))
    assert splits["train"].words[0] == WORDS[0].split() and splits["train"].labels == LABELS
    assert splits["test"].tags[2] == ["O", "O", "O", "O", "B-playlist"]


def test_parquet_token_rows_without_labels_and_with_other_column_names(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    for split in ("train", "test"):
        pq.write_table(pa.Table.from_pylist(_rows(False, "words", "ner")), tmp_path / f"{split}.parquet")
    config = DataConfig(str(tmp_path), tokens_column="words", tags_column="ner")
    assert detect_layout(tmp_path, config) == "token-rows"
    splits, _ = read_token_row_folder(tmp_path, config)
    assert splits["train"].labels == [None] * 3 and splits["train"].tags[1] == ["O", "O", "B-genre"]


@pytest.mark.parametrize("row, problem", [
    ({"tokens": "play some jazz", "tags": ["O", "O", "B-genre"]},
     "row 2: column 'tokens' must be a list of strings, but is a str ('play some jazz')"),
    ({"tokens": ["play", "jazz"], "tags": ["O", 3]},
     "row 2: column 'tags' must be a list of strings, but is a list (['O', 3])"),
    ({"tokens": ["play", ""], "tags": ["O", "O"]}, "row 2: column 'tokens' holds an empty string"),
    ({"tokens": ["play", "jazz"], "tags": ["O"]}, "row 2: 1 tag(s) for 2 word(s)"),
])
def test_token_rows_of_the_wrong_type_or_length_are_bad_rows(tmp_path, row, problem):
    rows = _rows(False)
    rows[1] = row
    _jsonl(tmp_path / "train.jsonl", rows)
    _jsonl(tmp_path / "test.jsonl", _rows(False))
    with pytest.raises(DataError) as err:
        read_token_row_folder(tmp_path, DataConfig(str(tmp_path)))
    assert problem in str(err.value)
    splits, notes = read_token_row_folder(tmp_path, DataConfig(str(tmp_path), skip_bad_rows=True))
    assert splits["train"].rows == [1, 3] and "row(s) 2;" in notes[0]


def test_token_rows_without_the_tags_column_are_refused_with_the_setting_to_use(tmp_path):
    _jsonl(tmp_path / "train.jsonl", [{"tokens": ["a"], "ner": ["O"]}])
    _jsonl(tmp_path / "test.jsonl", [{"tokens": ["a"], "ner": ["O"]}])
    with pytest.raises(DataError, match=r"no column 'tags'.*\['ner', 'tokens'\].*tags_column"):
        read_token_row_folder(tmp_path, DataConfig(str(tmp_path)))


# --------------------------------------------------------------------------- CoNLL


def test_conll_files_skip_docstart_break_on_blank_lines_and_read_the_last_column(tmp_path):
    splits, _ = read_conll_folder(_conll_folder(tmp_path), DataConfig(str(tmp_path)))
    train = splits["train"]
    assert train.words == [["EU", "rejects", "German"], ["Peter", "Blackburn"]]
    assert train.tags == [["B-ORG", "O", "B-MISC"], ["B-PER", "I-PER"]]
    assert train.rows == [3, 7]  # the line of each sentence's first word
    assert train.labels == [None, None]


def test_a_conll_line_without_a_tag_column_is_a_bad_row(tmp_path):
    _conll_folder(tmp_path)
    (tmp_path / "train.conll").write_text(CONLL.replace("rejects VBZ O", "rejects"))
    with pytest.raises(DataError, match=r"line 3: line 4 has one column \('rejects'\)"):
        read_conll_folder(tmp_path, DataConfig(str(tmp_path)))


# --------------------------------------------------------------------------- detecting the layout


def test_each_layout_is_detected(tmp_path):
    assert detect_layout(_seq_folder(tmp_path / "seq")) == "seq"
    assert detect_layout(_conll_folder(tmp_path / "conll", names=("train.txt", "test.iob"))) == "conll"
    _jsonl(tmp_path / "rows" / "train.jsonl", _rows())
    assert detect_layout(tmp_path / "rows", DataConfig(str(tmp_path / "rows"))) == "token-rows"
    _jsonl(tmp_path / "text" / "train.jsonl", [{"text": "hi", "label": "greet"}])
    assert detect_layout(tmp_path / "text") == "text"


def test_a_folder_with_two_layouts_is_refused_saying_what_it_holds(tmp_path):
    _conll_folder(_seq_folder(tmp_path))
    (tmp_path / "notes.txt").write_text("not a split")  # a file of no split name is no layout
    with pytest.raises(ConfigError) as err:
        detect_layout(tmp_path)
    message = str(err.value)
    assert "holds data in 2 layouts" in message
    assert "split folders with seq.in/seq.out (dev/, test/, train/)" in message
    assert "CoNLL files (dev.conll, test.conll, train.conll)" in message
    assert "keep one layout in the folder" in message


def test_text_files_beside_token_rows_are_ambiguous_and_the_columns_are_named(tmp_path):
    _jsonl(tmp_path / "train.jsonl", _rows(tokens="words"))
    _jsonl(tmp_path / "test.jsonl", _rows())
    with pytest.raises(ConfigError, match="tokens_column and tags_column"):
        detect_layout(tmp_path)


def test_a_folder_with_no_layout_is_refused_listing_its_files(tmp_path):
    (tmp_path / "readme.md").write_text("hi")
    with pytest.raises(ConfigError, match=r"no data in a layout.*\['readme.md'\]"):
        detect_layout(tmp_path)


# --------------------------------------------------------------------------- the data settings


def test_tokens_and_tags_columns_round_trip_and_old_dicts_still_load():
    config = DataConfig("x", tokens_column="words", tags_column="ner")
    assert DataConfig.from_dict(config.to_dict()) == config
    old = {k: v for k, v in DataConfig("x").to_dict().items() if k not in ("tokens_column", "tags_column")}
    assert DataConfig.from_dict(old).tokens_column == "tokens"
    with pytest.raises(ConfigError, match="`tokens_column` and `tags_column` are both 'w'"):
        DataConfig("x", tokens_column="w", tags_column="w")
    with pytest.raises(ConfigError, match="`tags_column` must be a non-empty string"):
        DataConfig("x", tags_column=" ")

