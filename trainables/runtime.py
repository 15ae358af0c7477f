"""Where a trial runs: device, threads and seeds."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def pick_device(num_gpus: float) -> torch.device:
    """CUDA when the trial was given a GPU (Ray sets CUDA_VISIBLE_DEVICES for it), else CPU."""
    if num_gpus > 0 and torch.cuda.is_available():
        return torch.device("cuda", 0)
    return torch.device("cpu")


def set_threads(num_cpus: float) -> int:
    """One intra-op thread per CPU the trial was given, so concurrent trials do not oversubscribe."""
    threads = max(1, int(num_cpus))
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    return threads


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def supports_precision(device: torch.device, precision: str) -> bool:
    if precision == "fp32":
        return True
    if device.type == "cuda":
        return precision == "fp16" or torch.cuda.is_bf16_supported()
    return precision == "bf16"
