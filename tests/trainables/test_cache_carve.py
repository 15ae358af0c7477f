"""The validation carve on a cached train split: two caches, stratified by label, seeded, reused,
and its rule (a key threshold with one example each way per label) on columns."""

import json
import pickle

import numpy as np

from trainables.cache_carve import carve, carve_mask, carve_stats
from trainables.models import load_tokenizer
from trainables.token_cache import CachedSplit, cached_split

ROWS = [{"text": f"wake me up at {h} am please" + " very" * (h % 7), "label": ["alarm", "music", "news"][h % 3]}
        for h in range(60)]


def _write(folder, rows, name):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _build(files, tmp_path, tiny_model_dir, **kw):
    split, labels = cached_split(files, text_column="text", label_column="label",
                                 tokenizer=load_tokenizer(tiny_model_dir), max_length=10,
                                 root=tmp_path / "cache", **kw)
    return split, labels, None


def test_the_carve_writes_two_caches_stratified_seeded_and_reused(tmp_path, tiny_model_dir):
    rows = ROWS + [{"text": "the lonely one", "label": "weather"}]
    path = _write(tmp_path / "t", rows, "train")
    split, labels, _ = _build(str(path), tmp_path, tiny_model_dir, carve_seed=7)
    said = []
    train, validation, unvalidated = carve(split, 0.2, say=said.append)
    assert len(train) + len(validation) == 61 and any("carved" in s for s in said)
    # every label with 2+ examples gives validation at least one and keeps one; the lonely one stays
    for label in range(3):
        assert 1 <= (validation.labels.tolist()).count(label) < 20
    assert [labels.raw_values[i] for i in unvalidated] == ["weather"]
    assert labels.raw_values.index("weather") not in validation.labels.tolist()
    # the parts hold the rows' own token ids: together, exactly the split's examples
    def rows_of(part):
        return sorted((tuple(part.input_ids[i].tolist()), int(part.labels[i])) for i in range(len(part)))
    assert sorted(rows_of(train) + rows_of(validation)) == rows_of(split)
    # the same parts again (a resumed sweep), read from disk, and in another process from a path
    again_train, again_validation, _ = carve(CachedSplit(split.path), 0.2, say=said.append)
    assert rows_of(again_validation) == rows_of(validation) and sum("carved" in s for s in said) == 1
    assert len(pickle.dumps(validation)) < 500
    # another seed is another cache and another carve
    other, _, _ = _build(str(path), tmp_path, tiny_model_dir, carve_seed=8)
    assert rows_of(carve(other, 0.2)[1]) != rows_of(validation)


def test_the_carve_rule_is_a_key_threshold_with_one_each_way_per_label():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), [10_000, 3, 2, 1])
    keys = rng.integers(0, 2**63 - 1, size=len(labels), dtype=np.int64)
    keys[10_000:10_003] = [2**62 * 3 // 2 + d for d in (5, 1, 9)]  # label 1: all above a 0.5 cut
    keys[10_003:10_005] = [1, 2]  # label 2: both below any cut
    # statistics gathered over chunks equal those over the whole column
    whole = carve_stats([(labels, keys)], 4, 0.5)
    chunked = carve_stats([(labels[:4000], keys[:4000]), (labels[4000:], keys[4000:])], 4, 0.5)
    assert all((whole[k] == chunked[k]).all() for k in whole)
    held = carve_mask(labels, keys, 0.5, whole)
    assert abs(held[:10_000].mean() - 0.5) < 0.02  # about the fraction, stratified
    assert held[10_000:10_003].tolist() == [False, True, False]  # none fell below: its smallest key goes
    assert held[10_003:10_005].tolist() == [True, False]  # all fell below: the largest stays
    assert not held[-1]  # a single example stays in train
    # a key below the cut is held whatever else is in the data (adding rows moves nothing else)
    more = carve_stats([(labels, keys), (np.zeros(5, int), np.full(5, 7, np.int64))], 4, 0.5)
    assert (carve_mask(labels[:10_000], keys[:10_000], 0.5, more) == held[:10_000]).all()
