"""One trial over several workers: data-parallel training with ``torch.distributed`` (issue 24).

A trial runs data-parallel when its process belongs to an initialised process group of more than
one worker (Ray Train sets that group up for each of a trial's workers; a test does it by hand
with gloo). Every worker then builds the same model from the same seed, draws the same global
batches from the same generator, and trains on its contiguous part of each one
(``shard_batches``); ``DistributedDataParallel`` averages the gradients across workers. Each
worker's loss is weighted by its part's share of the global batch times the number of workers
(``part_weights``), so that the average of the workers' gradients is the gradient of the global
batch's mean loss even when the batch does not divide evenly: the same update, and so the same
loss curve, as one worker on the same global batch, up to float rounding. The reported train loss
is the global batch's (``global_mean``); evaluation and scoring run on every worker (validation is
small beside train) so that every worker reports the same metrics. Every worker's ``report`` is
handed a checkpoint writer; which of them writes is the caller's choice (the Ray Train wrapper,
not built yet, is to let only the first).
"""

from __future__ import annotations

from typing import Optional

import numpy as np


def world() -> tuple[int, int]:
    """(this worker's rank, the number of workers): (0, 1) outside a process group."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard_batches(batches: list[np.ndarray], rank: int, size: int) -> list[np.ndarray]:
    """Worker ``rank``'s part of each global batch: contiguous, sizes differing by at most one
    (``np.array_split``); a part can be empty when a batch holds fewer examples than workers."""
    return [np.array_split(batch, size)[rank] for batch in batches]


def part_weights(batches: list[np.ndarray], rank: int, size: int) -> list[float]:
    """The factor on worker ``rank``'s mean loss for each batch: ``size * len(part) / len(batch)``.
    Averaged over workers (as DDP averages gradients) the weighted means give the global mean."""
    return [size * len(np.array_split(batch, size)[rank]) / len(batch) for batch in batches]


def wrap(model, device):
    """``model`` in ``DistributedDataParallel`` when there are several workers, else itself."""
    if world()[1] == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def global_mean(value: float, count: int, device) -> float:
    """The mean over all workers of per-example ``value`` (this worker's mean over ``count``)."""
    if world()[1] == 1:
        return value
    import torch
    import torch.distributed as dist

    both = torch.tensor([value * count, float(count)], dtype=torch.float64,
                        device=device if device.type == "cuda" else "cpu")
    dist.all_reduce(both)
    return float(both[0] / both[1]) if both[1] > 0 else float("nan")


def split_for_worker(batches: list[np.ndarray]) -> tuple[list[np.ndarray], Optional[list[float]]]:
    """This worker's parts of ``batches`` and their loss weights (None: one worker, no change).
    A global batch smaller than the number of workers (at most the last one) is left out: a
    worker with nothing to train would miss the gradients' all-reduce that the others wait in."""
    rank, size = world()
    if size == 1:
        return batches, None
    batches = [b for b in batches if len(b) >= size]
    parts = shard_batches(batches, rank, size)
    return parts, [size * len(part) / len(batch) for part, batch in zip(parts, batches)]
