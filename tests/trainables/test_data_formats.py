"""Data as people have it: a validation split carved from train, CSV/TSV delimiters, JSON arrays,
Parquet, a dataset's own split names, and rows with an empty text or a missing label."""

import argparse
import json
import logging
import sys

import pytest

from trainables.data import (DataConfig, LabelMap, RawSplit, carve_validation, load_raw_splits,
                             map_split_names)
from trainables.errors import ConfigError, DataError, UserError


def _jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _rows(counts):
    """{label: n} -> rows with distinct texts, labels in blocks."""
    return [{"text": f"{label} example {i}", "label": label}
            for label, n in counts.items() for i in range(n)]


def _train_test_only(folder, rows):
    _jsonl(folder / "train.jsonl", rows)
    _jsonl(folder / "test.jsonl", rows[:4])
    return folder


HAND = {"a": 10, "b": 5, "c": 2, "d": 1}  # a label of each kind: many, some, two, one


# --------------------------------------------------------------------------- carving validation


def test_carve_is_stratified_per_label():
    rows = _rows(HAND)
    train = RawSplit([r["text"] for r in rows], [r["label"] for r in rows], "t")
    kept, validation, ids, unvalidated = carve_validation(train, 0.2, seed=0)
    count = lambda labels: {x: labels.count(x) for x in HAND}  # noqa: E731
    # a: floor(10*0.2+0.5)=2; b: floor(1.5)=1; c: 1 (at least one, at most n-1); d: single, stays
    assert count(validation.labels) == {"a": 2, "b": 1, "c": 1, "d": 0}
    assert count(kept.labels) == {"a": 8, "b": 4, "c": 1, "d": 1}
    assert unvalidated == ["d"]
    assert ids == sorted(ids) and ids == validation.rows  # 1-based rows of train
    assert sorted(kept.rows + validation.rows) == list(range(1, 19))
    assert [rows[i - 1]["text"] for i in ids] == validation.texts


def test_carve_is_deterministic_and_independent_of_row_order():
    rows = _rows({"a": 50, "b": 50})
    split = lambda rs: RawSplit([r["text"] for r in rs], [r["label"] for r in rs], "t")  # noqa: E731
    first = carve_validation(split(rows), 0.1, seed=0)[1].texts
    assert carve_validation(split(rows), 0.1, seed=0)[1].texts == first
    assert sorted(carve_validation(split(rows[::-1]), 0.1, seed=0)[1].texts) == sorted(first)
    assert sorted(carve_validation(split(rows), 0.1, seed=1)[1].texts) != sorted(first)


def test_a_folder_without_validation_gets_one_carved_with_one_message(tmp_path, caplog):
    folder = _train_test_only(tmp_path, _rows({"a": 20, "b": 20}))
    with caplog.at_level(logging.WARNING, logger="tunebert.data"):
        raw = load_raw_splits(DataConfig(str(folder)))
    assert (len(raw["train"].texts), len(raw["validation"].texts)) == (36, 4)  # 10% of each label
    notes = [r.getMessage() for r in caplog.records]
    assert len(notes) == 1
    assert "train.jsonl has no validation split: 4 of its 40 rows (0.1 of each label, " \
           "--split-seed 0) are the validation split (change the share with --val-fraction)" in notes[0]
    assert "\n" not in notes[0]
    again = load_raw_splits(DataConfig(str(folder)))  # every step sees the same split
    assert again["validation"].texts == raw["validation"].texts


def test_labels_with_a_single_example_stay_in_train_and_are_counted(tmp_path, caplog):
    folder = _train_test_only(tmp_path, _rows({"a": 10, "b": 10, "x": 1, "y": 1}))
    with caplog.at_level(logging.WARNING, logger="tunebert.data"):
        raw = load_raw_splits(DataConfig(str(folder), val_fraction=0.2))
    assert {"x", "y"} <= set(raw["train"].labels) and not {"x", "y"} & set(raw["validation"].labels)
    assert any("2 label(s) have a single train example and so no validation example (x, y); "
               "they stay in train" in r.getMessage() for r in caplog.records)


def test_pinned_ids_are_saved_and_a_changed_train_file_is_refused(tmp_path):
    rows = _rows(HAND)
    folder = _train_test_only(tmp_path, rows)
    cfg = DataConfig(str(folder), val_fraction=0.2, split_seed=3).pinned()
    assert len(cfg.validation_ids) == 4
    restored = DataConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert restored == cfg
    assert load_raw_splits(restored)["validation"].rows == list(cfg.validation_ids)
    assert cfg.pinned() is cfg  # pinned once, kept
    _jsonl(folder / "train.jsonl", [{"text": "new first row", "label": "a"}] + rows)
    with pytest.raises(DataError, match=r"validation rows carved from train \(.*train\.jsonl\) are "
                                        r"not the ones recorded.*--split-seed 3\. The train file "
                                        r"changed.*Put the original train file back"):
        load_raw_splits(restored)


def test_saved_ids_refuse_data_that_now_has_its_own_validation_split(tmp_path):
    folder = _train_test_only(tmp_path, _rows({"a": 10, "b": 10}))
    cfg = DataConfig(str(folder)).pinned()
    assert cfg.validation_ids
    _jsonl(folder / "validation.jsonl", _rows({"a": 1, "b": 1}))
    with pytest.raises(DataError, match="now has a validation split of its own"):
        load_raw_splits(cfg)


def test_pinned_leaves_data_with_a_validation_split_alone(tmp_path):
    assert DataConfig("demo").pinned() == DataConfig("demo")
    assert DataConfig(str(tmp_path / "missing")).pinned() == DataConfig(str(tmp_path / "missing"))


def test_a_sweep_saves_the_carved_rows(tmp_path, monkeypatch):
    from tuning.config import SweepConfig, load_saved_sweep

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    folder = _train_test_only(tmp_path / "data", _rows({"a": 10, "b": 10}))
    SweepConfig(name="s", storage=str(tmp_path / "runs"), data=DataConfig(str(folder))).anchored().save()
    saved = load_saved_sweep("s", str(tmp_path / "runs")).data
    assert saved.validation_ids == DataConfig(str(folder)).pinned().validation_ids
    assert len(saved.validation_ids) == 2


def test_val_fraction_is_refused_when_the_data_has_a_validation_split():
    with pytest.raises(DataError, match=r"--val-fraction 0\.2: the data already has a validation "
                                        r"split \(.*validation\.jsonl, 96 rows\).*Leave out "
                                        r"--val-fraction.*--split-names validation=none"):
        load_raw_splits(DataConfig("demo", val_fraction=0.2))
    # on purpose: set the dataset's validation split aside and carve one from train
    raw = load_raw_splits(DataConfig("demo", val_fraction=0.2, split_names="validation=none"))
    assert len(raw["validation"].texts) + len(raw["train"].texts) == 360
    assert raw["validation"].origin.endswith("train.jsonl, rows carved as validation")


# --------------------------------------------------------------------------- formats


def test_semicolon_csv_is_sniffed_even_with_commas_in_texts(tmp_path):
    text = "text;label\nturn on, please;on\nturn off, now;off\n\"lights; off\";off\n"
    for split in ("train", "validation", "test"):
        (tmp_path / f"{split}.csv").write_text(text)
    raw = load_raw_splits(DataConfig(str(tmp_path)))
    assert raw["train"].texts == ["turn on, please", "turn off, now", "lights; off"]
    assert raw["train"].labels == ["on", "off", "off"]


def test_tsv_and_an_explicit_delimiter(tmp_path):
    (tmp_path / "tsv").mkdir()
    (tmp_path / "pipe").mkdir()
    for split in ("train", "validation", "test"):
        (tmp_path / "tsv" / f"{split}.tsv").write_text("label\ttext\n1\thello, there\n0\tbye|now\n")
        (tmp_path / "pipe" / f"{split}.csv").write_text("text|label\na, b|1\nc; d|0\n")
    tsv = load_raw_splits(DataConfig(str(tmp_path / "tsv")))
    assert (tsv["train"].texts, tsv["train"].labels) == (["hello, there", "bye|now"], [1, 0])
    pipe = load_raw_splits(DataConfig(str(tmp_path / "pipe"), delimiter="|"))
    assert pipe["train"].texts == ["a, b", "c; d"]
    with pytest.raises(DataError, match=r"its columns are \['text\|label'\] \(read as "
                                        r"semicolon-separated; pass --delimiter if that is wrong\)"):
        load_raw_splits(DataConfig(str(tmp_path / "pipe"), delimiter=";"))


def test_json_arrays_and_json_lines(tmp_path):
    rows = [{"text": "turn on", "label": "on"}, {"text": "turn off", "label": "off"}]
    (tmp_path / "train.json").write_text(json.dumps(rows, indent=2))  # one array, many lines
    (tmp_path / "validation.jsonl").write_text(json.dumps(rows))  # an array in a .jsonl file
    _jsonl(tmp_path / "test.json", rows)  # JSON Lines in a .json file
    raw = load_raw_splits(DataConfig(str(tmp_path)))
    assert raw["train"].texts == raw["validation"].texts == raw["test"].texts == ["turn on", "turn off"]
    (tmp_path / "train.json").write_text('[{"text": "a", "label": 1},\n {"text": "b" "label": 0}]')
    with pytest.raises(DataError, match=r"train\.json, line 2, column \d+: not valid JSON"):
        load_raw_splits(DataConfig(str(tmp_path)))
    (tmp_path / "train.json").write_text('{"data":\n [1]}')
    with pytest.raises(DataError, match=r"line 1: not valid JSON .*one array of objects"):
        load_raw_splits(DataConfig(str(tmp_path)))


def test_parquet_files(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    table = pa.table({"text": ["turn on", "turn off"], "label": ["on", "off"]})
    for split in ("train", "validation", "test"):
        pq.write_table(table, tmp_path / f"{split}.parquet")
    raw = load_raw_splits(DataConfig(str(tmp_path)))
    assert raw["test"].texts == ["turn on", "turn off"] and raw["test"].labels == ["on", "off"]


def test_parquet_without_pyarrow_says_what_to_install(tmp_path, monkeypatch):
    for split in ("train", "validation", "test"):
        (tmp_path / f"{split}.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow now raises ImportError
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(DataError, match=r"train\.parquet: reading \.parquet files needs pyarrow.*"
                                        r"pip install pyarrow"):
        load_raw_splits(DataConfig(str(tmp_path)))


# --------------------------------------------------------------------------- bad rows


def _with_bad_rows(folder):
    rows = [{"text": f"text {i}", "label": "ab"[i % 2]} for i in range(30)]
    for i in (2, 4, 6, 8, 10, 12, 14):
        rows[i - 1]["text"] = "  "
    for i in (16, 18, 20, 22, 24, 26):
        rows[i - 1]["label"] = None
    _jsonl(folder / "train.jsonl", rows)
    _jsonl(folder / "validation.jsonl", rows[26:])
    _jsonl(folder / "test.jsonl", rows[26:])
    return folder


def test_bad_rows_are_refused_by_default_with_their_numbers(tmp_path):
    folder = _with_bad_rows(tmp_path)
    with pytest.raises(DataError, match=r"train split \(.*\), rows 16, 18, 20, 22, 24, 26: the label "
                                        r"is missing \(column 'label'\).*--skip-bad-rows"):
        load_raw_splits(DataConfig(str(folder)))


def test_skip_bad_rows_drops_them_and_says_which(tmp_path, caplog):
    folder = _with_bad_rows(tmp_path)
    with caplog.at_level(logging.WARNING, logger="tunebert.data"):
        raw = load_raw_splits(DataConfig(str(folder), skip_bad_rows=True))
    assert len(raw["train"].texts) == 30 - 13
    assert 2 not in raw["train"].rows and 1 in raw["train"].rows
    assert [r.getMessage().split(": ", 1)[1] for r in caplog.records] == [
        "skipped 13 of 30 rows with an empty text or a missing label (--skip-bad-rows): row(s) "
        "2, 4, 6, 8, 10, 12, 14, 16, 18, 20 and 3 more"]


# --------------------------------------------------------------------------- split names


def test_map_split_names():
    hub = ["train", "dev", "eval", "validation"]
    assert map_split_names(hub, "test=eval", "ds") == {"train": "train", "validation": "validation",
                                                       "test": "eval"}
    assert map_split_names(hub, {"validation": "dev", "test": "eval"}, "ds")["validation"] == "dev"
    # a name taken by one role is not found again by another role's usual names
    assert map_split_names(["train", "validation"], "test=validation", "ds") == {
        "train": "train", "validation": None, "test": "validation"}
    assert map_split_names(hub, "validation=none,test=eval", "ds")["validation"] is None
    assert map_split_names(["train", "test"], (), "ds")["validation"] is None
    with pytest.raises(DataError, match=r"--split-names test=holdout: ds has no split 'holdout'; its "
                                        r"splits are \['dev', 'eval', 'train', 'validation'\]"):
        map_split_names(hub, "test=holdout", "ds")
    with pytest.raises(DataError, match=r"ds has no test split; .*--split-names test=NAME"):
        map_split_names(["train", "dev"], (), "ds")


def test_a_hub_dataset_with_its_own_split_names(monkeypatch, caplog):
    """The hub loader with a stand-in ``datasets`` module (no download): named splits are used,
    and without a validation split one is carved from train."""
    import types

    rows = _rows({"a": 10, "b": 10})
    hub = {"training": rows, "eval": rows[:4], "extra": rows[:2]}
    fake = types.SimpleNamespace(load_dataset=lambda dataset_id: hub)
    monkeypatch.setitem(sys.modules, "datasets", fake)
    with caplog.at_level(logging.WARNING, logger="tunebert.data"):
        raw = load_raw_splits(DataConfig("hf:org/set", split_names="train=training,test=eval"))
    assert [len(raw[s].texts) for s in ("train", "validation", "test")] == [18, 2, 4]
    assert raw["test"].origin == "org/set[eval]"
    assert "org/set[training] has no validation split" in caplog.records[0].getMessage()
    named = load_raw_splits(DataConfig("hf:org/set", split_names="train=training,validation=extra,"
                                                                 "test=eval"))
    assert len(named["validation"].texts) == 2
    with pytest.raises(DataError, match=r"hub dataset 'org/set' has no train split; its splits are "
                                        r"\['eval', 'extra', 'training'\]"):
        load_raw_splits(DataConfig("hf:org/set"))


def test_a_folder_with_its_own_file_names(tmp_path):
    rows = _rows({"a": 3, "b": 3})
    for stem in ("training", "heldout", "final"):
        _jsonl(tmp_path / f"{stem}.jsonl", rows)
    raw = load_raw_splits(DataConfig(str(tmp_path), split_names="train=training,validation=heldout,"
                                                                "test=final"))
    assert raw["validation"].origin.endswith("heldout.jsonl")
    with pytest.raises(DataError, match=r"data folder .* has no train file; its files are "
                                        r"\['final', 'heldout', 'training'\]"):
        load_raw_splits(DataConfig(str(tmp_path)))


# --------------------------------------------------------------------------- the config


def test_data_config_round_trip_and_old_saved_dicts():
    cfg = DataConfig("data", "utt", "intent", val_fraction=0.15, split_seed=7,
                     validation_ids=[2, 5], delimiter="tab", split_names="test=eval,train=all",
                     skip_bad_rows=True)
    assert cfg.delimiter == "\t" and cfg.split_names == (("train", "all"), ("test", "eval"))
    assert cfg.validation_ids == (2, 5)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert d["split_names"] == {"train": "all", "test": "eval"} and d["validation_ids"] == [2, 5]
    assert DataConfig.from_dict(d) == cfg
    old = DataConfig.from_dict({"source": "data", "text_column": "utt", "label_column": "intent"})
    assert old == DataConfig("data", "utt", "intent") and old.val_fraction is None
    with pytest.raises(ConfigError, match=r"unknown data setting\(s\) \['colour'\]"):
        DataConfig.from_dict({"source": "data", "colour": "red"})


@pytest.mark.parametrize("kwargs, match", [
    ({"val_fraction": 0.0}, r"`val_fraction` \(--val-fraction\) must lie strictly between 0 and 1"),
    ({"val_fraction": 1.5}, "strictly between 0 and 1.*got 1.5"),
    ({"val_fraction": True}, "strictly between 0 and 1"),
    ({"split_seed": -1}, r"`split_seed` \(--split-seed\) must be an integer >= 0, but got -1"),
    ({"delimiter": ":"}, r"`delimiter` \(--delimiter\) must be one of , ; tab \|.*got ':'"),
    ({"split_names": "train"}, r"expected ROLE=NAME pairs .*got 'train'"),
    ({"split_names": "dev=x"}, r"unknown role 'dev'; the roles are \['train', 'validation', 'test'\]"),
    ({"split_names": "test=none"}, "test=none is not allowed: only the validation split"),
    ({"split_names": "train=a,test=a"}, "two roles name the same split"),
    ({"split_names": "test=a,test=b"}, "each role may be named once"),
    ({"validation_ids": [3, 1]}, "`validation_ids` must be increasing train row numbers"),
    ({"skip_bad_rows": "yes"}, "`skip_bad_rows` must be true or false"),
    ({"source": ""}, "data `source` must be a non-empty string"),
])
def test_bad_data_settings_are_refused_when_built(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        DataConfig(**kwargs)
    assert issubclass(ConfigError, UserError) and issubclass(DataError, UserError)  # CLI exit 2


def test_cli_data_options_reach_the_data_config():
    from tuning.cli.arguments import _add_data_args, data_options

    parser = argparse.ArgumentParser()
    _add_data_args(parser)
    args = parser.parse_args(["--data", "d", "--val-fraction", "0.2", "--split-seed", "4",
                              "--delimiter", "tab", "--split-names", "test=eval",
                              "--skip-bad-rows"])
    cfg = DataConfig(args.data, args.text_column, args.label_column, **data_options(args))
    assert cfg == DataConfig("d", val_fraction=0.2, split_seed=4, delimiter="\t",
                             split_names=(("test", "eval"),), skip_bad_rows=True)
    plain = parser.parse_args([])
    assert data_options(plain) == {}  # not given: DataConfig's defaults apply


# --------------------------------------------------------------------------- issue 21: bad inputs


def _two_labels(extra=()):
    return [{"text": f"text {i}", "label": "ab"[i % 2]} for i in range(20)] + list(extra)


def test_a_list_label_is_refused_naming_its_row(tmp_path):
    _jsonl(tmp_path / "train.jsonl", _two_labels([{"text": "hi", "label": ["a", "b"]}]))
    _jsonl(tmp_path / "test.jsonl", _two_labels())
    with pytest.raises(DataError, match=r"train split \(.*train\.jsonl\), row 21: the label in column "
                                        r"'label' is a list \(\['a', 'b'\]\).*Multi-label data is not"):
        load_raw_splits(DataConfig(str(tmp_path)))


def test_a_parquet_list_column_label_is_refused(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    for split in ("train", "test"):
        table = pa.table({"text": [f"t{i}" for i in range(6)], "label": [[i % 2] for i in range(6)]})
        pq.write_table(table, tmp_path / f"{split}.parquet")
    with pytest.raises(DataError, match=r"train\.parquet\), row 1: the label .* is a list \(\[0\]\)"):
        load_raw_splits(DataConfig(str(tmp_path)))


def test_label_texts_that_only_look_like_numbers_stay_texts(tmp_path):
    # "²".isdigit() is True but int("²") raises; "--5" survived lstrip("-")
    odd = [{"text": f"odd {i}", "label": label} for i in range(2) for label in ("²", "--5")]
    _jsonl(tmp_path / "train.jsonl", _two_labels(odd + [{"text": "n", "label": " -7 "}]))
    _jsonl(tmp_path / "test.jsonl", _two_labels())
    labels = set(load_raw_splits(DataConfig(str(tmp_path)))["train"].labels)
    assert {"²", "--5", "a", "b"} <= labels
    assert labels - {"²", "--5", "a", "b"} in (set(), {-7})  # a whole number in text is a number


def test_boolean_labels_stay_apart_from_the_numbers_0_and_1(tmp_path):
    # True == 1 and False == 0 in Python: JSON true/false labels beside 1/0 merged into one class
    rows = [{"text": f"r{i} {label}", "label": label} for i in range(2)
            for label in (True, 1, False, 0)]
    _jsonl(tmp_path / "train.jsonl", rows)
    _jsonl(tmp_path / "test.jsonl", rows)
    labels = load_raw_splits(DataConfig(str(tmp_path)))["train"].labels
    assert len(LabelMap.from_labels(labels).names) == 4  # four classes, not two
    assert {"true", "false"} <= set(l for l in labels if isinstance(l, str))


@pytest.mark.parametrize("name, text, where", [
    ("train.jsonl", '{"text": "x", "label": ' + "[" * 100000 + "]" * 100000 + "}\n", "train.jsonl, line 1"),
    ("train.json", "[" * 100000 + "]" * 100000, "train.json"),
])
def test_deeply_nested_json_is_refused_without_a_recursion_error(tmp_path, name, text, where):
    (tmp_path / name).write_text(text)
    _jsonl(tmp_path / "test.jsonl", _two_labels())
    with pytest.raises(DataError, match=rf"{where}: JSON nested too deeply to read"):
        load_raw_splits(DataConfig(str(tmp_path)))


def test_a_train_split_too_small_to_carve_a_validation_split_is_refused(tmp_path):
    _jsonl(tmp_path / "train.jsonl", [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}])
    _jsonl(tmp_path / "test.jsonl", _two_labels())
    with pytest.raises(DataError, match=r"train\.jsonl has no validation split, and none can be carved "
                                        r"from its 2 rows.*Add a validation file"):
        load_raw_splits(DataConfig(str(tmp_path)))


def test_the_text_column_cannot_be_the_label_column():
    with pytest.raises(ConfigError, match="--text-column and --label-column are both 'label'"):
        DataConfig("demo", text_column="label", label_column="label")


@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_two_files_of_one_split_are_refused_naming_both(tmp_path, split):
    for name in ("train", "validation", "test"):
        _jsonl(tmp_path / f"{name}.jsonl", _two_labels())
    (tmp_path / f"{split}.csv").write_text("text,label\nq,a\nr,b\n")
    with pytest.raises(DataError, match=rf"has 2 files for the {split} split: {split}\.jsonl, "
                                        rf"{split}\.csv; it is not clear which one to read"):
        load_raw_splits(DataConfig(str(tmp_path)))
