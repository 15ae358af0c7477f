"""Device, precision and thread choices of a trial."""

import pytest
import torch

from trainables import runtime
from trainables.loops import autocast_context


def test_explicit_precisions_pass_through():
    cpu = torch.device("cpu")
    for precision in ("fp32", "bf16", "fp16"):
        assert runtime.resolve_precision(cpu, precision) == precision


@pytest.mark.parametrize("fast, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_on_cpu_follows_the_bf16_units(monkeypatch, fast, expected):
    monkeypatch.setattr(runtime, "_cpu_has_fast_bf16", lambda: fast)
    assert runtime.resolve_precision(torch.device("cpu"), "auto") == expected
    # the autocast context agrees with the resolution
    with autocast_context(torch.device("cpu"), "auto"):
        out = torch.ones(4, 4) @ torch.ones(4, 4)
    assert out.dtype == (torch.bfloat16 if fast else torch.float32)


@pytest.mark.parametrize("major, expected", [(9, "bf16"), (8, "bf16"), (7, "fp16"), (6, "fp32")])
def test_auto_on_cuda_follows_the_compute_capability(monkeypatch, major, expected):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (major, 0))
    assert runtime.resolve_precision(torch.device("cuda", 0), "auto") == expected


def test_cpu_flag_detection_reads_cpuinfo(monkeypatch, tmp_path):
    fake = tmp_path / "cpuinfo"
    fake.write_text("flags\t\t: fpu sse avx512f avx512_bf16\n")
    real_path = runtime.Path
    monkeypatch.setattr(runtime, "Path", lambda p: real_path(fake) if p == "/proc/cpuinfo" else real_path(p))
    detect = runtime._cpu_has_fast_bf16.__wrapped__  # uncached: the real one reads once per process
    assert detect()
    fake.write_text("flags\t\t: fpu sse avx2\n")
    assert not detect()
