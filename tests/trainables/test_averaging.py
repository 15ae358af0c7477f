import pytest
import torch

from trainables.averaging import WeightAverage, ema_decay_at, ema_update, running_mean_update


def test_ema_update_by_hand():
    shadow = {"w": torch.tensor([1.0, 2.0]), "ids": torch.tensor([0, 1])}
    ema_update(shadow, {"w": torch.tensor([3.0, 0.0]), "ids": torch.tensor([5, 6])}, decay=0.75)
    # 0.75 * 1 + 0.25 * 3 = 1.5; 0.75 * 2 + 0.25 * 0 = 1.5; integer buffers are copied
    assert shadow["w"].tolist() == [1.5, 1.5] and shadow["ids"].tolist() == [5, 6]


def test_ema_decay_warms_up():
    assert ema_decay_at(0.999, 0) == pytest.approx(0.1)      # (1 + 0) / (10 + 0)
    assert ema_decay_at(0.999, 10) == pytest.approx(0.55)    # 11 / 20
    assert ema_decay_at(0.9, 1000) == 0.9                    # capped by the configured decay


def test_running_mean_by_hand():
    mean = {"w": torch.tensor([2.0])}
    running_mean_update(mean, {"w": torch.tensor([4.0])}, count=2)   # (2 + 4) / 2
    assert mean["w"].item() == 3.0
    running_mean_update(mean, {"w": torch.tensor([9.0])}, count=3)   # (2 + 4 + 9) / 3
    assert mean["w"].item() == 5.0


def test_weight_average_ema_and_swa_follow_the_model():
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = WeightAverage("ema", model, decay=0.5)
    for value in (10.0, 20.0):
        with torch.no_grad():
            model.weight.fill_(value)
        ema.after_step()
    # step 1: d = min(0.5, 1/10) = 0.1 -> 0.1*0 + 0.9*10 = 9; step 2: d = min(0.5, 2/11) -> 2/11*9 + 9/11*20
    assert ema.weights()["weight"].item() == pytest.approx(2 / 11 * 9 + 9 / 11 * 20)

    swa = WeightAverage("swa", model, swa_epochs=2, last_epoch=4)
    for epoch, value in ((1, 100.0), (2, 100.0), (3, 1.0), (4, 3.0)):
        with torch.no_grad():
            model.weight.fill_(value)
        swa.after_epoch(epoch)
        if epoch < 3:
            assert swa.weights() is None  # nothing averaged before the last 2 epochs
    assert swa.weights()["weight"].item() == 2.0  # mean of epochs 3 and 4 only
    again = WeightAverage("swa", model, swa_epochs=2, last_epoch=4)
    again.load_state_dict(swa.state_dict())
    assert again.count == 2 and again.weights()["weight"].item() == 2.0
