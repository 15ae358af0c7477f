"""The scale benchmark's corpus: MASSIVE repeated with perturbations and fresh ids, in shards, to a
size; reused when built; every row a valid example the data loader and the token cache read."""

import json

import pytest

from trainables.errors import UserError
from tuning.bench.corpus import MANIFEST, build_corpus


def test_the_corpus_reaches_its_size_in_shards_of_fresh_rows(tmp_path, massive_dir):
    said = []
    built = build_corpus(massive_dir, tmp_path / "c", 3 * 2**20, shard_bytes=2**20, say=said.append)
    files = sorted(p.name for p in (tmp_path / "c").glob("train-*.jsonl"))
    assert files == built["files"] and len(files) >= 3
    rows = [json.loads(line) for f in files for line in (tmp_path / "c" / f).read_text().splitlines()]
    assert len(rows) == built["rows"] and built["bytes"] >= 3 * 2**20 > built["bytes"] - 200
    assert len({r["id"] for r in rows}) == len(rows)
    # the first pass is MASSIVE as it is; later passes are perturbed copies (mostly differing)
    source = [json.loads(line) for line in (massive_dir / "train.jsonl").read_text().splitlines()]
    first, second = rows[:len(source)], rows[len(source):2 * len(source)]
    assert [r["text"] for r in first] == [r["text"] for r in source]
    assert [r["label"] for r in second] == [r["label"] for r in source[:len(second)]]
    changed = sum(a["text"] != b["text"] for a, b in zip(second, source))
    assert changed > 0.5 * len(second)
    assert (tmp_path / "c" / "validation.jsonl").is_file() and (tmp_path / "c" / "test.jsonl").is_file()
    again = build_corpus(massive_dir, tmp_path / "c", 3 * 2**20, shard_bytes=2**20, say=said.append)
    assert again == built and "reused" in said[-1]


def test_a_killed_build_is_built_again_and_a_users_folder_is_refused(tmp_path, massive_dir):
    build_corpus(massive_dir, tmp_path / "c", 2**20)
    (tmp_path / "c" / MANIFEST).unlink()  # as a kill before the manifest leaves it
    built = build_corpus(massive_dir, tmp_path / "c", 2**20)
    assert built["rows"] > 0 and (tmp_path / "c" / MANIFEST).is_file()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match=r"holds files the corpus builder did not write \(notes.txt\)"):
        build_corpus(massive_dir, mine, 2**20)
    assert (mine / "notes.txt").read_text() == "keep me"


def test_the_token_cache_reads_the_corpus_shards(tmp_path, massive_dir, tiny_model_dir):
    from trainables.models import load_tokenizer
    from trainables.token_cache import cached_split

    built = build_corpus(massive_dir, tmp_path / "c", 2 * 2**20, shard_bytes=2**20)
    split, labels, = cached_split(str(tmp_path / "c" / "train-*.jsonl"), text_column="text",
                                  label_column="label", tokenizer=load_tokenizer(tiny_model_dir),
                                  max_length=64, root=tmp_path / "cache")
    assert len(split) == built["rows"] and len(labels) == 60
