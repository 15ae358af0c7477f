"""Typo-robust training: perturbed training batches, seeded, fresh each epoch, independent of the
batch an example falls in; off by default; refused when the mix is not a perturbation spec."""

import dataclasses

import numpy as np
import pytest
import torch

from trainables.encoding import collate
from trainables.errors import ConfigError
from trainables.hparams import FinetuneConfig
from trainables.models import load_tokenizer
from trainables.perturb import parse_spec
from trainables.train_noise import batch_maker, noisy_ids


def _ids(make, indices):
    ids, mask, labels = make(np.asarray(indices))
    return [row[m.bool()].tolist() for row, m in zip(ids, mask)], labels.tolist()


def test_off_by_default_and_at_probability_zero(demo_data, tiny_config):
    assert tiny_config.perturb_train is None and batch_maker(tiny_config, demo_data, 1) is None
    cfg = dataclasses.replace(tiny_config, perturb_train="typo:0.3", perturb_train_prob=0.0)
    assert batch_maker(cfg, demo_data, 1) is None


def test_noise_is_seeded_fresh_per_epoch_and_the_same_in_any_batch(demo_data, tiny_config):
    cfg = dataclasses.replace(tiny_config, perturb_train="typo:0.2,delete:0.1", perturb_train_prob=1.0)
    train = demo_data.splits["train"]
    plain = _ids(lambda idx: collate(train, idx, demo_data.pad_token_id), range(32))
    epoch1 = _ids(batch_maker(cfg, demo_data, 1), range(32))
    assert epoch1[1] == plain[1]  # labels stay
    changed = sum(a != b for a, b in zip(epoch1[0], plain[0]))
    assert changed >= 24  # typos at these rates change nearly every utterance
    assert _ids(batch_maker(cfg, demo_data, 1), range(32)) == epoch1  # seeded
    assert _ids(batch_maker(cfg, demo_data, 2), range(32))[0] != epoch1[0]  # fresh each epoch
    reseeded = dataclasses.replace(cfg, seed=cfg.seed + 1)
    assert _ids(batch_maker(reseeded, demo_data, 1), range(32))[0] != epoch1[0]
    # an example gets the same noise whichever batch (and position) it is drawn in
    reversed_batch = _ids(batch_maker(cfg, demo_data, 1), [31, 7, 3])
    assert reversed_batch[0] == [epoch1[0][31], epoch1[0][7], epoch1[0][3]]


def test_the_share_of_examples_perturbed_follows_the_probability(demo_data, tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir)
    train = demo_data.splits["train"]
    kinds = parse_spec("typo:0.5")
    changed = [not np.array_equal(noisy_ids(train, i, tokenizer=tokenizer, perturbations=kinds, prob=0.3,
                                            seed=0, epoch=1, max_length=64), train.input_ids[i])
               for i in range(len(train))]
    assert 0.2 < np.mean(changed) < 0.4


def test_a_bad_mix_is_refused_and_a_trial_trains_with_noise(demo_data, tiny_config):
    with pytest.raises(ConfigError, match="perturb_train"):
        dataclasses.replace(tiny_config, perturb_train="typo:2")
    from trainables.finetune import fit

    cfg = dataclasses.replace(tiny_config, epochs=1, perturb_train="typo:0.1", perturb_train_prob=0.5)
    reports = []
    fit(cfg, demo_data, device=torch.device("cpu"), report=lambda m, w: reports.append(m))
    clean = []
    fit(dataclasses.replace(cfg, perturb_train=None), demo_data, device=torch.device("cpu"),
        report=lambda m, w: clean.append(m))
    assert len(reports) == 1 and np.isfinite(reports[0]["train_loss"])
    assert reports[0]["train_loss"] != clean[0]["train_loss"]  # it trained on other inputs
