"""What a model costs to deploy: parameters, bytes, CPU latency and throughput, training memory.

Functions take a model (and inputs) and return numbers; the fine-tuning trainable reports them
with a trial's other metrics (``trainables.finetune.deployment_costs``). Units: ``MB`` is 10**6 bytes, ``params_m``
millions of parameters, latencies in milliseconds.

Latency and throughput are measured on the CPU with the threads torch has in this process (a
Ray trial sets them to its CPU share, ``trainables.runtime.set_threads``), in eval mode without
autograd, after warm-up runs, on a fixed set of texts padded to ``max_length``: the cost depends
on the model and the length only, never on the data a sweep trains on. They are timings, so they
vary with the machine and with whatever else runs on it; compare trials of one sweep, not sweeps
on different machines.
"""

from __future__ import annotations

import io
import resource
import sys
import time
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

MB = 1_000_000
LATENCY_RUNS = 50        # timed batch-1 calls (p95 is then the 3rd slowest)
LATENCY_WARMUP = 5
THROUGHPUT_BATCH = 32
THROUGHPUT_BATCHES = 5   # timed batch-32 calls
THROUGHPUT_WARMUP = 1

# The texts every trial is timed on (repeated to fill a batch); their content does not change the
# cost, since they are padded to max_length, but real words keep the tokenizer honest.
PROBE_TEXTS = (
    "wake me up at seven tomorrow morning",
    "play the latest album of my favourite band",
    "what is the weather going to be like in paris this weekend",
    "remind me to call the dentist",
    "turn off the lights in the living room",
    "how many calories are in a banana",
    "add milk and eggs to my shopping list",
    "tell me a joke",
)


def parameter_count(model: nn.Module) -> int:
    """Number of parameters (every element of every parameter tensor, trainable or frozen)."""
    return sum(p.numel() for p in model.parameters())


def serialized_bytes(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())``: the model's size on disk as one file (an int8
    model's packed weights included)."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def probe_batch(tokenizer, max_length: int, batch_size: int = THROUGHPUT_BATCH,
                texts: Sequence[str] = PROBE_TEXTS) -> tuple[torch.Tensor, torch.Tensor]:
    """``texts`` repeated to ``batch_size`` rows, tokenized and padded to exactly ``max_length``.

    Returns (input_ids, attention_mask), both (batch_size, max_length)."""
    rows = [texts[i % len(texts)] for i in range(batch_size)]
    encoded = tokenizer(rows, padding="max_length", truncation=True, max_length=max_length,
                        return_tensors="pt")
    return encoded["input_ids"], encoded["attention_mask"]


def _timed(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> float:
    start = time.perf_counter()
    model(ids, mask)
    return time.perf_counter() - start


@torch.inference_mode()
def latency_ms(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, *,
               runs: int = LATENCY_RUNS, warmup: int = LATENCY_WARMUP) -> dict[str, float]:
    """Median and 95th percentile of the time of one forward pass at batch 1, in milliseconds.

    Each call takes the next row of ``input_ids``/``attention_mask`` (batch, seq), cycling; the
    first ``warmup`` calls are not timed. Returns ``{"latency_ms_p50", "latency_ms_p95"}``."""
    if runs < 1:
        raise ValueError(f"`runs` must be at least 1, but got {runs}")
    model.eval()
    rows = input_ids.shape[0]
    times = []
    for i in range(warmup + runs):
        row = slice(i % rows, i % rows + 1)
        seconds = _timed(model, input_ids[row], attention_mask[row])
        if i >= warmup:
            times.append(seconds * 1000.0)
    p50, p95 = np.percentile(times, [50, 95])
    return {"latency_ms_p50": float(p50), "latency_ms_p95": float(p95)}


@torch.inference_mode()
def throughput(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, *,
               batches: int = THROUGHPUT_BATCHES, warmup: int = THROUGHPUT_WARMUP) -> float:
    """Texts per second when the whole (batch, seq) input goes through in one forward pass,
    over ``batches`` timed passes after ``warmup`` untimed ones."""
    if batches < 1:
        raise ValueError(f"`batches` must be at least 1, but got {batches}")
    model.eval()
    for _ in range(warmup):
        model(input_ids, attention_mask)
    seconds = sum(_timed(model, input_ids, attention_mask) for _ in range(batches))
    return input_ids.shape[0] * batches / seconds


def deployment_metrics(model: nn.Module, *, parameters: int,
                       probe: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> dict[str, float]:
    """The metrics a trial reports for the model it hands over; ``model`` as it would be deployed
    (on the CPU; fp32 or int8).

    ``parameters``: its parameter count, counted on the fp32 model (an int8 model holds the same
    parameters in fewer bytes, and its packed weights are no ``nn.Parameter``). ``probe``:
    ``probe_batch``'s (input_ids, attention_mask), (32, max_length), to time batch-1 latency and
    batch-32 throughput on; ``None`` skips the timings (the sizes cost nothing). Returns
    ``params_m``, ``size_mb`` and, when timed, ``latency_ms_p50``, ``latency_ms_p95``,
    ``throughput_b32`` (texts/s) and ``latency_threads`` (the CPU threads they ran on)."""
    metrics = {"params_m": parameters / 1e6, "size_mb": serialized_bytes(model) / MB}
    if probe is not None:
        input_ids, attention_mask = probe
        model = model.to("cpu").eval()
        metrics.update(latency_ms(model, input_ids, attention_mask))
        metrics["throughput_b32"] = throughput(model, input_ids[:THROUGHPUT_BATCH],
                                               attention_mask[:THROUGHPUT_BATCH])
        metrics["latency_threads"] = torch.get_num_threads()
    return metrics


def _max_rss_bytes() -> int:
    """The process's peak resident set so far (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


class PeakMemory:
    """Peak memory of training since this object was made, in MB.

    CUDA: ``torch.cuda.max_memory_allocated`` after resetting the peak (tensors only, not the
    allocator's cache). CPU: how far the process's peak resident set (``ru_maxrss``) rose above
    its value at the start; the process's peak never falls, so when it was already higher before
    (an earlier trial in the same worker process) this reads 0 until training exceeds it."""

    def __init__(self, device: torch.device):
        self.device = device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        self.start = _max_rss_bytes()

    def mb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / MB
        return max(0, _max_rss_bytes() - self.start) / MB
