"""Where a trial runs: device, threads and seeds."""

from __future__ import annotations

import functools
import os
import random
from pathlib import Path

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


@functools.lru_cache(maxsize=1)
def _cpu_has_fast_bf16() -> bool:
    """AVX512-BF16 or AMX: CPUs whose bf16 matrix units make autocast faster than fp32. Read
    once per process: ``resolve_precision`` runs for every training batch."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no evidence either way, stay on fp32
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(device: torch.device, precision: str) -> str:
    """``auto`` becomes the fastest safe precision of ``device``: bf16 on Ampere or newer GPUs
    and on CPUs with bf16 matrix units (measured 1.3-1.4x faster by ``tunebert bench`` on
    AVX512-BF16), fp16 with loss scaling on older GPUs, fp32 elsewhere. Other values pass."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        major, _ = torch.cuda.get_device_capability(device)
        return "bf16" if major >= 8 else "fp16" if major >= 7 else "fp32"
    if device.type == "cpu":
        return "bf16" if _cpu_has_fast_bf16() else "fp32"
    return "fp32"


def supports_precision(device: torch.device, precision: str) -> bool:
    precision = resolve_precision(device, precision)
    if precision == "fp32":
        return True
    if device.type == "cuda":
        return precision == "fp16" or torch.cuda.is_bf16_supported()
    return precision == "bf16"
