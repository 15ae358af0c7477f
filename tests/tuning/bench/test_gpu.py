"""`tunebert bench --parts gpu`: one line and exit 0 without CUDA, refused beside other parts, and
every step's wiring run on the CPU with the tiny model (the numbers mean nothing here)."""

import json

import pytest
import torch

from tuning.bench import gpu
from tuning.cli import main


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_without_cuda_it_says_so_in_one_line_and_exits_0(tmp_path, capsys):
    rc = main(["bench", "--parts", "gpu", "--out", str(tmp_path / "out"), "--storage", str(tmp_path / "runs")])
    captured = capsys.readouterr()
    assert rc == 0
    said = [line for line in (captured.out + captured.err).splitlines() if line.strip()]
    assert len(said) == 1 and "no CUDA device here" in said[0]
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()


def test_gpu_runs_alone(tmp_path, capsys):
    rc = main(["bench", "--parts", "gpu,throughput", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and "gpu is the check for a GPU machine and runs alone" in err
    assert not (tmp_path / "out").exists()


def _check(tmp_path, tiny_model_dir, **changes) -> gpu.GpuCheck:
    settings = dict(out=tmp_path / "gpu", device=torch.device("cpu"), model=tiny_model_dir, data="demo",
                    batches=2, batch_size=4, precisions=("fp32",), smoke=True, tune_budget_s=60,
                    command="test")
    return gpu.GpuCheck(**{**settings, **changes})


def test_a_failing_step_is_recorded_and_the_others_run(tmp_path, tiny_model_dir):
    check = _check(tmp_path, tiny_model_dir, data=str(tmp_path / "no-such-data"))
    steps = check.run(only=("environment", "precision", "packing"))
    status = {s.name: s.status for s in steps}
    assert status == {"environment": "ok", "precision": "failed", "packing": "failed"}
    saved = json.loads((tmp_path / "gpu" / "results.json").read_text())
    assert [s["name"] for s in saved["steps"]] == ["environment", "precision", "packing"]
    assert "no-such-data" in saved["steps"][1]["why"]
    text = (tmp_path / "gpu" / "results.md").read_text()
    assert "| precision | failed |" in text and "| environment | ok |" in text


def test_the_tune_step_says_why_it_cannot_run(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    check = gpu.GpuCheck(tmp_path / "gpu", torch.device("cpu"), model="minilm-l6", data="demo")
    [step] = check.run(only=("tune",))
    assert step.status == "skipped" and "needs ray, not installed here" in step.why


@pytest.mark.slow
def test_every_step_runs_on_the_cpu(tmp_path, tiny_model_dir):
    steps = _check(tmp_path, tiny_model_dir).run()
    by_name = {s.name: s for s in steps}
    assert list(by_name) == list(gpu.STEPS)
    assert by_name["environment"].numbers["auto_precision"] in ("fp32", "bf16")
    # the CUDA tests ran in their own pytest and were skipped here: no CUDA
    tests = by_name["cuda-tests"]
    assert tests.status == "ok" and "skipped" in tests.numbers["summary"], tests.numbers
    precision = by_name["precision"]
    assert precision.status == "ok", precision.why
    assert {(r["shape"], r["precision"]) for r in precision.rows} == {("model", "fp32"), ("bert-base", "fp32")}
    assert all(r["samples_per_s"] > 0 and r["vs_fp32"] == 1.0 for r in precision.rows)
    trainer = by_name["trainer"]
    assert trainer.status == "ok", trainer.why
    assert all(r["samples_per_s"] > 0 and r["tunebert_vs_trainer"] > 0 for r in trainer.rows)
    packing = by_name["packing"]
    assert packing.status == "ok", packing.why
    assert packing.rows[1]["processes"] == 2 and packing.numbers["packing_ratio"] > 0
    tune = by_name["tune"]
    assert tune.status == "ok", tune.why
    assert 0.0 <= tune.numbers["test_accuracy"] <= 1.0
    text = (tmp_path / "gpu" / "results.md").read_text()
    for name in gpu.STEPS:
        assert f"| {name} | ok |" in text
    assert "## packing" in text and "tunebert_vs_trainer" in text
