import numpy as np
import pytest
import torch

from trainables.contrastive import knn_accuracy, views_batch
from trainables.data import EncodedSplit
from trainables.errors import ConfigError
from trainables.hparams import ContrastiveConfig


def test_knn_by_hand():
    train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    train_labels = np.array([0, 0, 1, 1])
    val = torch.tensor([[1.0, 0.05], [0.05, 1.0], [0.6, 0.4]])
    # k=1: nearest neighbours are 0, 1 (label 1 side), and index 1 (label 0)
    assert knn_accuracy(train, train_labels, val, np.array([0, 1, 0]), k=1) == 1.0
    assert knn_accuracy(train, train_labels, val, np.array([1, 1, 1]), k=1) == pytest.approx(1 / 3)


def test_views_are_text_major_pairs():
    split = EncodedSplit([np.array([101, 5, 6, 102]), np.array([101, 7, 102])], np.array([3, 4]))
    ids, mask, labels = views_batch(split, np.array([1, 0]), pad_token_id=0, augmentation="none",
                                    strength=0.0, rng=np.random.default_rng(0))
    assert ids.shape == (4, 4) and labels.tolist() == [4, 3]
    assert ids[0].tolist() == ids[1].tolist() == [101, 7, 102, 0]
    assert ids[2].tolist() == [101, 5, 6, 102]
    ids, mask, _ = views_batch(split, np.array([0]), pad_token_id=0, augmentation="span_cutoff",
                               strength=0.5, rng=np.random.default_rng(0))
    # span cutoff of half the 2 inner tokens: each view keeps [CLS], one word and [SEP]
    assert ids.shape == (2, 3) and mask.sum(1).tolist() == [3, 3]
    assert ids[:, 0].tolist() == [101, 101] and ids[:, 2].tolist() == [102, 102]
    assert set(ids[:, 1].tolist()) <= {5, 6}


def test_contrastive_config_rules():
    assert ContrastiveConfig(mode="joint", contrastive_epochs=0).total_epochs == 4
    assert ContrastiveConfig(contrastive_epochs=3, epochs=2).total_epochs == 5
    with pytest.raises(ConfigError, match="`loss` must be 'supcon'"):
        ContrastiveConfig(mode="joint", loss="simclr")
    with pytest.raises(ConfigError, match="`temperature` must lie in"):
        ContrastiveConfig(temperature=0.0)
    with pytest.raises(ConfigError, match="`augmentation` must be one of"):
        ContrastiveConfig(augmentation="backtranslate")
