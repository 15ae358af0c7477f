import numpy as np
import pytest
import torch

from trainables.encoding import bucketed_batches
from trainables.multitask import (MIXINGS, frozen_depths, frozen_heads, joint_loss,
                                  mixed_batches, mixed_steps_per_epoch, normalise_embedding,
                                  unfrozen_top_layers)

# 13 examples: 10 of source 0 and 3 of source 1, interleaved so indices must be mapped back
SOURCES = np.array([0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0])
LENGTHS = np.array([5, 3, 9, 4, 7, 8, 2, 6, 3, 5, 4, 8, 7])
OF_0, OF_1 = set(np.flatnonzero(SOURCES == 0)), set(np.flatnonzero(SOURCES == 1))


def _batches(mode, seed=0):
    return mixed_batches(LENGTHS, SOURCES, 2, mode=mode, rng=np.random.default_rng(seed))


def _source_of(batch):
    (source,) = set(SOURCES[batch])  # fails when a batch mixes sources
    return int(source)


def _flat(batches):
    return sorted(int(i) for b in batches for i in b)


def test_proportional_gives_every_batch_of_every_source_once():
    batches = _batches("proportional")
    assert len(batches) == 5 + 2 == mixed_steps_per_epoch([10, 3], 2, "proportional")
    assert sorted(_source_of(b) for b in batches) == [0] * 5 + [1] * 2
    assert _flat(batches) == list(range(13))


def test_round_robin_alternates_and_repeats_the_smaller_source_with_fresh_batches():
    batches = _batches("round_robin")
    assert len(batches) == 2 * 5 == mixed_steps_per_epoch([10, 3], 2, "round_robin")
    assert [_source_of(b) for b in batches] == [0, 1] * 5
    assert _flat(batches[0::2]) == sorted(OF_0)  # the larger source: every example once
    small = batches[1::2]
    # drawn afresh each time it runs out: batches 0-1, 2-3 each cover source 1 once
    assert _flat(small[0:2]) == _flat(small[2:4]) == sorted(OF_1)
    assert set(small[4]) <= OF_1


def test_capped_gives_each_source_as_many_batches_as_the_smaller_has():
    batches = _batches("capped")
    assert len(batches) == 2 * 2 == mixed_steps_per_epoch([10, 3], 2, "capped")
    assert [_source_of(b) for b in batches] == [0, 1, 0, 1]
    assert _flat(batches[1::2]) == sorted(OF_1)
    larger = _flat(batches[0::2])
    assert len(larger) == len(set(larger)) == 4 and set(larger) <= OF_0


def test_capped_draws_other_batches_of_the_larger_source_each_epoch():
    seen = {tuple(_flat(mixed_batches(LENGTHS, SOURCES, 2, mode="capped",
                                      rng=np.random.default_rng([0, epoch]))[0::2]))
            for epoch in range(1, 6)}
    assert len(seen) > 1


@pytest.mark.parametrize("mode", MIXINGS)
def test_the_same_seed_gives_the_same_batches(mode):
    first, again = _batches(mode, seed=7), _batches(mode, seed=7)
    assert [b.tolist() for b in first] == [b.tolist() for b in again]


@pytest.mark.parametrize("mode", MIXINGS)
def test_one_source_gives_exactly_the_bucketed_batches(mode):
    sources = np.ones(len(LENGTHS), dtype=np.int64)  # a single dataset, whatever its number
    batches = mixed_batches(LENGTHS, sources, 4, mode=mode, rng=np.random.default_rng(3))
    expected = bucketed_batches(LENGTHS, 4, rng=np.random.default_rng(3))
    assert [b.tolist() for b in batches] == [b.tolist() for b in expected]
    assert mixed_steps_per_epoch([13], 4, mode) == len(batches) == 4


def test_steps_per_epoch_by_hand_for_uneven_sizes():
    assert mixed_steps_per_epoch([7, 20], 4, "proportional") == 2 + 5
    assert mixed_steps_per_epoch([7, 20], 4, "round_robin") == 2 * 5
    assert mixed_steps_per_epoch([7, 20], 4, "capped") == 2 * 2
    assert mixed_steps_per_epoch([7, 0], 4, "capped") == 2  # an empty source is no source


def test_an_unknown_mixing_is_refused_listing_the_choices():
    with pytest.raises(ValueError, match="'zip' is unknown; use one of proportional, round_robin, capped"):
        _batches("zip")
    with pytest.raises(ValueError, match="proportional, round_robin, capped"):
        mixed_steps_per_epoch([3], 2, "zip")


def test_gradual_unfreezing_schedule_for_three_layers_every_two_epochs():
    table = [unfrozen_top_layers(epoch, 3, 2) for epoch in range(1, 10)]
    # top layer, top two, all three, then the embeddings too (4 = num_layers + 1), capped
    assert table == [1, 1, 2, 2, 3, 3, 4, 4, 4]
    assert [unfrozen_top_layers(epoch, 3, 0) for epoch in (1, 5)] == [4, 4]


@pytest.mark.parametrize("epoch, frozen", [(1, {0, 1, 2}), (2, {0, 1, 2}), (3, {0, 1}),
                                           (5, {0}), (7, set()), (20, set())])
def test_frozen_depths_under_gradual_unfreezing(epoch, frozen):
    assert frozen_depths(epoch, num_layers=3, freeze="none", freeze_layers=0,
                         freeze_embeddings=False, unfreeze_every=2) == frozen


@pytest.mark.parametrize("epoch, kwargs, frozen", [
    (1, dict(freeze="backbone"), {0, 1, 2, 3}),
    (1, dict(freeze="intent_head"), set()),
    (1, dict(freeze="slot_head", freeze_layers=2), {1, 2}),
    (1, dict(freeze_embeddings=True), {0}),
    (1, dict(freeze_embeddings=True, freeze_layers=1), {0, 1}),
    (7, dict(freeze_layers=1, unfreeze_every=2), {1}),  # gradual unfreezing is over
    (7, dict(freeze_layers=1, unfreeze_every=3), {0, 1}),  # top 3 layers train, embeddings not yet
    (3, dict(freeze_layers=3, unfreeze_every=1), {0, 1, 2, 3}),
    (2, dict(freeze_embeddings=True, unfreeze_every=1), {0, 1}),
])
def test_frozen_depths_are_the_union_of_every_setting(epoch, kwargs, frozen):
    settings = dict(freeze="none", freeze_layers=0, freeze_embeddings=False, unfreeze_every=0)
    assert frozen_depths(epoch, num_layers=3, **{**settings, **kwargs}) == frozen


def test_frozen_heads_name_the_head_that_freeze_keeps_still():
    assert frozen_heads("intent_head") == {"intent_head"}
    assert frozen_heads("slot_head") == {"slot_head"}
    assert frozen_heads("backbone") == frozen_heads("none") == set()


@pytest.mark.parametrize("kwargs, message", [
    (dict(freeze="all"), "`freeze` 'all' is unknown; use one of none, backbone"),
    (dict(freeze_layers=4), r"`freeze_layers` must lie in \[0, 3\].*got 4"),
    (dict(freeze_layers=-1), r"`freeze_layers` must lie in \[0, 3\].*got -1"),
    (dict(unfreeze_every=-2), "`unfreeze_every` must be 0"),
    (dict(epoch=0), "`epoch` counts from 1"),
])
def test_frozen_depths_refuse_bad_arguments(kwargs, message):
    settings = dict(epoch=1, num_layers=3, freeze="none", freeze_layers=0, freeze_embeddings=False,
                    unfreeze_every=0)
    settings.update(kwargs)
    epoch = settings.pop("epoch")
    with pytest.raises(ValueError, match=message):
        frozen_depths(epoch, **settings)


def test_joint_loss_is_the_weighted_sum_and_its_gradient_the_weights():
    intent = torch.tensor(2.0, requires_grad=True)
    slot = torch.tensor(3.0, requires_grad=True)
    loss = joint_loss(intent, slot, intent_weight=0.5, slot_weight=2.0)
    assert loss.item() == pytest.approx(0.5 * 2.0 + 2.0 * 3.0)
    loss.backward()
    assert (intent.grad.item(), slot.grad.item()) == (0.5, 2.0)


def test_joint_loss_of_a_one_task_batch_is_that_task_weighted():
    assert joint_loss(None, torch.tensor(3.0), intent_weight=0.5, slot_weight=2.0).item() == 6.0
    assert joint_loss(torch.tensor(2.0), None, intent_weight=0.5, slot_weight=2.0).item() == 1.0


def test_joint_loss_refuses_no_loss_and_bad_weights():
    with pytest.raises(ValueError, match="both are None"):
        joint_loss(None, None, intent_weight=1.0, slot_weight=1.0)
    with pytest.raises(ValueError, match="`slot_weight` must be a finite number >= 0, but got -1"):
        joint_loss(torch.tensor(1.0), None, intent_weight=1.0, slot_weight=-1)


def test_normalised_embeddings_by_hand():
    x = torch.tensor([[3.0, -4.0], [0.0, 0.0]])
    assert normalise_embedding(x, "none") is x
    l2 = normalise_embedding(x, "l2")
    assert torch.allclose(l2, torch.tensor([[0.6, -0.8], [0.0, 0.0]]))
    l1 = normalise_embedding(x, "l1")
    assert torch.allclose(l1, torch.tensor([[3 / 7, -4 / 7], [0.0, 0.0]]))
    assert l1[0].abs().sum().item() == pytest.approx(1.0)
    assert not torch.isnan(l1).any() and not torch.isnan(l2).any()  # a zero row stays zero


def test_normalise_embedding_refuses_an_unknown_kind():
    with pytest.raises(ValueError, match="'l3' is unknown; use one of none, l1, l2"):
        normalise_embedding(torch.ones(1, 2), "l3")
