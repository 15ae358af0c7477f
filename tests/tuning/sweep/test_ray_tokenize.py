"""The token cache built by a Ray Data job holds what the local build holds, row for row, and a
sweep on sharded data tokenizes once into its storage and trains from the mapped cache."""

import json

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from trainables.data import DataConfig
from trainables.errors import UserError
from trainables.models import load_tokenizer
from trainables.cache_carve import carve
from trainables.token_cache import CachedSplit, cached_split
from tuning.sweep.ray_tokenize import builder


def test_the_ray_data_build_equals_the_local_build(ray_local, tmp_path, tiny_model_dir, shard_demo):
    folder = shard_demo(tmp_path / "corpus")
    files = sorted(str(p) for p in folder.glob("train-*"))
    kwargs = dict(text_column="text", label_column="label", tokenizer=load_tokenizer(tiny_model_dir),
                  max_length=8, carve_seed=3)
    said = []
    local, local_labels = cached_split(files, root=tmp_path / "local", **kwargs)
    remote, remote_labels = builder("auto")(files, root=tmp_path / "ray", say=said.append, **kwargs)
    assert any("Ray Data" in s for s in said) and remote.path.name == local.path.name  # one key
    assert remote_labels.to_dict() == local_labels.to_dict()
    assert len(remote) == len(local) == 360 and remote.truncated == local.truncated > 0
    for i in range(360):
        assert remote.input_ids[i].tolist() == local.input_ids[i].tolist()
    assert np.asarray(remote.labels).tolist() == np.asarray(local.labels).tolist()
    # the carve reads the same keys, so it takes the same rows
    assert [np.asarray(part.labels).tolist() for part in carve(remote, 0.2)[:2]] == \
           [np.asarray(part.labels).tolist() for part in carve(local, 0.2)[:2]]
    # validation with train's labels; a label train lacks is refused by name
    (tmp_path / "bad.jsonl").write_text(json.dumps({"text": "x", "label": "no_such"}) + "\n")
    with pytest.raises(UserError, match="no_such"):
        builder("auto")([str(tmp_path / "bad.jsonl")], root=tmp_path / "ray", label_map=remote_labels,
                        **{k: v for k, v in kwargs.items() if k != "carve_seed"})
    assert builder(None) is None  # no cluster: the local multi-process build


@pytest.mark.slow
def test_a_sweep_on_sharded_data_trains_from_the_cache_in_its_storage(ray_local, tmp_path, tiny_model_dir,
                                                                     shard_demo):
    from tuning.config import SweepConfig
    from tuning.sweep.runner import run_sweep

    folder = shard_demo(tmp_path / "corpus", validation=False)
    cfg = SweepConfig(name="sharded", model=tiny_model_dir, max_length=32, epochs=2, num_trials=2,
                      storage=str(tmp_path / "runs"), scheduler="none", max_concurrent=2, seed=1,
                      data=DataConfig(str(folder), val_fraction=0.2))
    outcome = run_sweep(cfg)
    caches = [p for p in (tmp_path / "runs" / "token-cache").iterdir() if CachedSplit(p).meta]
    assert len(caches) == 2  # train (its carved train and validation parts inside it) and test
    uri = cfg.anchored().resolved_tracking_uri()
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("sharded")
    trials = [r for r in client.search_runs([experiment.experiment_id])
              if r.data.tags.get("tunebert.kind") == "trial"]
    assert len(trials) == 2 and all(r.info.status == "FINISHED" for r in trials)
    assert all(sorted(m.step for m in client.get_metric_history(r.info.run_id, "val_accuracy")) == [1, 2]
               for r in trials)
    assert outcome.best is not None
