"""Weight averaging: an exponential moving average of the weights (EMA) and stochastic weight
averaging over the last epochs (SWA). Pure tensor updates plus a small holder for the loop.

EMA (Polyak & Juditsky 1992; as in Tarvainen & Valpola 2017 and timm's ModelEmaV2): after every
optimizer step ``shadow = d * shadow + (1 - d) * weights``. The shadow starts as a copy of the
initial weights; ``d = min(decay, (1 + n) / (10 + n))`` after ``n`` earlier updates (the warm-up
of TensorFlow's ``ExponentialMovingAverage(num_updates=...)``), so the pretrained starting point
does not dominate the average of a short fine-tuning run.

SWA (Izmailov et al., UAI 2018, eq. 1 with cycle length one epoch): the running mean of the
weights taken at the end of each of the last ``swa_epochs`` epochs,
``mean_n = mean_{n-1} + (weights - mean_{n-1}) / n``. BERT has no batch-norm, so the averaged
weights need no statistics update.

Only floating-point entries of the state dict are averaged; integer buffers (position ids) are
copied from the live model.
"""

from __future__ import annotations

from typing import Optional

import torch


@torch.no_grad()
def ema_update(shadow: dict[str, torch.Tensor], weights: dict[str, torch.Tensor], decay: float) -> None:
    """In place: ``shadow[k] = decay * shadow[k] + (1 - decay) * weights[k]`` for float entries."""
    for key, value in weights.items():
        target = shadow[key]
        if target.is_floating_point():
            target.mul_(decay).add_(value.detach().to(target.dtype), alpha=1.0 - decay)
        else:
            target.copy_(value)


@torch.no_grad()
def running_mean_update(mean: dict[str, torch.Tensor], weights: dict[str, torch.Tensor], count: int) -> None:
    """In place: ``mean[k] += (weights[k] - mean[k]) / count``, ``count`` counting this sample."""
    for key, value in weights.items():
        target = mean[key]
        if target.is_floating_point():
            target.add_((value.detach().to(target.dtype) - target) / count)
        else:
            target.copy_(value)


def ema_decay_at(decay: float, updates: int) -> float:
    """The decay used for the update after ``updates`` earlier ones: ``min(decay, (1+n)/(10+n))``."""
    return min(decay, (1.0 + updates) / (10.0 + updates))


def _copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in state.items()}


class WeightAverage:
    """The averaged weights of one training run: ``kind`` is ``ema`` or ``swa``.

    ``after_step`` (EMA) runs after every optimizer step; ``after_epoch`` (SWA) at the end of an
    epoch, counting only the last ``swa_epochs`` of ``last_epoch``. ``weights()`` is ``None``
    while there is nothing averaged yet (SWA before its first epoch): evaluate the live model then.
    """

    def __init__(self, kind: str, model: torch.nn.Module, *, decay: float = 0.0,
                 swa_epochs: int = 0, last_epoch: int = 0):
        self.kind = kind
        self.decay = decay
        self.swa_start = last_epoch - swa_epochs + 1
        self.count = 0
        self.state: Optional[dict[str, torch.Tensor]] = _copy(model.state_dict()) if kind == "ema" else None
        self.model = model

    @classmethod
    def for_config(cls, cfg, model: torch.nn.Module) -> Optional["WeightAverage"]:
        if getattr(cfg, "ema_decay", 0.0):
            return cls("ema", model, decay=cfg.ema_decay)
        if getattr(cfg, "swa_epochs", 0):
            return cls("swa", model, swa_epochs=cfg.swa_epochs, last_epoch=cfg.last_epoch)
        return None

    def after_step(self) -> None:
        if self.kind == "ema":
            ema_update(self.state, self.model.state_dict(), ema_decay_at(self.decay, self.count))
            self.count += 1

    def after_epoch(self, epoch: int) -> None:
        if self.kind == "swa" and epoch >= self.swa_start:
            self.count += 1
            if self.state is None:
                self.state = _copy(self.model.state_dict())
            else:
                running_mean_update(self.state, self.model.state_dict(), self.count)

    def weights(self) -> Optional[dict[str, torch.Tensor]]:
        return self.state

    def state_dict(self) -> dict:
        return {"kind": self.kind, "count": self.count, "state": self.state}

    def load_state_dict(self, saved: Optional[dict]) -> None:
        if saved and saved.get("kind") == self.kind:
            self.count = saved["count"]
            self.state = None if saved["state"] is None else {
                k: v.to(next(iter(self.model.state_dict().values())).device) for k, v in saved["state"].items()}
