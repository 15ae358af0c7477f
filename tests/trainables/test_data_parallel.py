"""A trial over several workers: the global batch's parts and weights, and two gloo workers that
give the same loss curve as one worker on the same global batch."""

import pickle

import numpy as np
import pytest

from trainables.data_parallel import part_weights, shard_batches, split_for_worker


def test_parts_cover_each_global_batch_once():
    batches = [np.arange(10), np.arange(10, 17), np.arange(17, 18)]
    parts = [shard_batches(batches, r, 3) for r in range(3)]
    for k, batch in enumerate(batches):
        joined = np.concatenate([parts[r][k] for r in range(3)])
        assert joined.tolist() == batch.tolist()
    assert [len(parts[r][1]) for r in range(3)] == [3, 2, 2]


def test_weighted_part_means_average_to_the_global_mean():
    """DDP averages the workers' gradients; with these weights that is the global batch's mean."""
    losses = np.array([0.3, 1.2, 0.7, 2.0, 0.1, 0.9, 1.5])  # per-example losses of a 7-example batch
    batch = np.arange(7)
    averaged = np.mean([w * losses[part].mean() for w, part in
                        zip([part_weights([batch], r, 2)[0] for r in range(2)],
                            [shard_batches([batch], r, 2)[0] for r in range(2)])])
    assert averaged == pytest.approx(losses.mean(), rel=1e-12)
    assert part_weights([batch], 0, 2) == [2 * 4 / 7] and part_weights([batch], 1, 2) == [2 * 3 / 7]


def test_one_worker_changes_nothing():
    batches = [np.arange(5)]
    assert split_for_worker(batches) == (batches, None)


_WORKER = """
import json, pickle, sys
import torch
import torch.distributed as dist
import trainables.finetune as finetune
from trainables.runtime import set_threads

rank, size, port, data_file, cfg_file, out = sys.argv[1:7]
rank, size = int(rank), int(size)
set_threads(1)
if size > 1:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=size)
data = pickle.load(open(data_file, "rb"))
cfg = pickle.load(open(cfg_file, "rb"))
reports, trained = [], []
real = finetune.train_epoch
def counting(model, split, **kw):  # how many examples this worker trains on, and on what model
    batches = kw.get("batches")
    trained.append([sum(map(len, batches)) if batches is not None else len(split), type(model).__name__])
    return real(model, split, **kw)
finetune.train_epoch = counting
finetune.fit(cfg, data, device=torch.device("cpu"), report=lambda metrics, save: reports.append(metrics))
json.dump({"reports": reports, "trained": trained}, open(out, "w"))
if size > 1:
    dist.destroy_process_group()
"""


def test_two_gloo_workers_follow_one_workers_loss_curve(tmp_path, demo_data, tiny_model_dir,
                                                        gloo_workers):
    from trainables.hparams import FinetuneConfig

    # no dropout: the only randomness left is the batches' order, which every worker draws alike
    cfg = FinetuneConfig(model=tiny_model_dir, epochs=3, lr=1e-3, batch_size=16, max_length=64,
                         classifier_dropout=0.0, hidden_dropout=0.0, attention_dropout=0.0,
                         perturb_eval=None, deploy_metrics=False, head_lr_multiplier=10.0)
    data_file, cfg_file = tmp_path / "data.pkl", tmp_path / "cfg.pkl"
    data_file.write_bytes(pickle.dumps(demo_data.without_test()))
    cfg_file.write_bytes(pickle.dumps(cfg))
    [single] = gloo_workers(_WORKER, 1, data_file, cfg_file)
    pair = gloo_workers(_WORKER, 2, data_file, cfg_file)
    # each of the two trained on its half of every global batch, through DistributedDataParallel
    n = len(demo_data.splits["train"])
    assert single["trained"] == [[n, "TextClassifier"]] * 3
    for epoch in range(3):
        halves = [w["trained"][epoch][0] for w in pair]
        assert abs(halves[0] - halves[1]) <= n // 16 + 1 and n - 1 <= sum(halves) <= n
        assert {w["trained"][epoch][1] for w in pair} == {"DistributedDataParallel"}
    one, two = single["reports"], [w["reports"] for w in pair]
    assert len(one) == 3 and [len(r) for r in two] == [3, 3]
    for key in ("train_loss", "val_loss", "val_accuracy"):
        curve = [r[key] for r in one]
        for worker in two:  # both workers report the same, the global batch's numbers
            assert [r[key] for r in worker] == pytest.approx(curve, rel=1e-4, abs=1e-5), key
    assert one[-1]["train_loss"] < one[0]["train_loss"]  # it learned: the curve is not flat


def test_two_gloo_workers_follow_one_worker_in_rounds_across_epochs(tmp_path, demo_data, tiny_model_dir,
                                                                    gloo_workers):
    """Budgets in steps (``eval_every``): each worker trains its part of every global batch of a
    round, rounds crossing epoch boundaries, and reports the same numbers as one worker."""
    from trainables.hparams import FinetuneConfig

    cfg = FinetuneConfig(model=tiny_model_dir, epochs=2, lr=1e-3, batch_size=16, max_length=64,
                         classifier_dropout=0.0, hidden_dropout=0.0, attention_dropout=0.0,
                         perturb_eval=None, deploy_metrics=False, eval_every="10")
    data_file, cfg_file = tmp_path / "data.pkl", tmp_path / "cfg.pkl"
    data_file.write_bytes(pickle.dumps(demo_data.without_test()))
    cfg_file.write_bytes(pickle.dumps(cfg))
    [single] = gloo_workers(_WORKER, 1, data_file, cfg_file)
    pair = gloo_workers(_WORKER, 2, data_file, cfg_file)
    one, two = single["reports"], [w["reports"] for w in pair]
    per_epoch = -(-len(demo_data.splits["train"]) // 16)
    assert [r["step"] for r in one] == [min(10 * k, 2 * per_epoch) for k in range(1, len(one) + 1)]
    assert [len(r) for r in two] == [len(one)] * 2
    for k, counts in enumerate(zip(*(w["trained"] for w in pair))):  # each round: halves of its batches
        assert abs(counts[0][0] - counts[1][0]) <= 10 and counts[0][1] == "DistributedDataParallel"
        assert sum(c[0] for c in counts) == single["trained"][k][0]
    for key in ("train_loss", "val_loss", "val_accuracy", "step", "examples_seen"):
        curve = [r[key] for r in one]
        for worker in two:
            assert [r[key] for r in worker] == pytest.approx(curve, rel=1e-4, abs=1e-5), key
