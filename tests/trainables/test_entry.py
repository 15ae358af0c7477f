"""The Ray entry point's worker reuse (``trainables.entry.recycled``): a worker process runs the
next trial unless its memory grew, then Ray gets a fresh one."""

from __future__ import annotations

import pytest

from trainables import entry

MB = 2**20


def test_a_worker_is_reused_unless_its_memory_grew_by_both_the_floor_and_the_share():
    baseline = 1000 * MB
    assert entry.worth_reusing(baseline, baseline + 100 * MB)       # noise
    assert entry.worth_reusing(baseline, baseline + 510 * MB)       # under both bars
    assert not entry.worth_reusing(baseline, baseline + 600 * MB)  # > 512 MB and > 50 %
    big = 4000 * MB  # a large worker: 600 MB is under half of it
    assert entry.worth_reusing(big, big + 600 * MB) and not entry.worth_reusing(big, big + 2100 * MB)
    assert entry.worth_reusing(None, 5 * big) and entry.worth_reusing(baseline, None)  # unknown


def test_resident_bytes_reads_this_process():
    rss = entry.resident_bytes()
    assert rss is not None and 10 * MB < rss < 64 * 1024 * MB


class _Base:
    """Stands in for Ray Tune's FunctionTrainable: counts the resets it was asked for."""

    def __init__(self):
        self.resets = 0

    def reset_config(self, new_config):
        self.resets += 1
        return True


def test_reset_config_refuses_reuse_once_the_worker_has_grown(monkeypatch):
    held = iter([900 * MB, 1000 * MB, 2000 * MB])  # after trial 1, after trial 2, after trial 3
    monkeypatch.setattr(entry, "resident_bytes", lambda: next(held))
    monkeypatch.setattr(entry, "give_memory_back", lambda: None)
    worker = entry.recycled(_Base)()
    assert entry.recycled(_Base).__name__ == "_Base"
    assert worker.reset_config({"lr": 1e-4}) is True    # baseline 900 MB
    assert worker.reset_config({"lr": 2e-4}) is True    # +100 MB
    assert worker.reset_config({"lr": 3e-4}) is False   # +1100 MB: Ray starts a fresh process
    assert worker.resets == 2


@pytest.mark.slow
def test_a_sweeps_trials_share_worker_processes(ray_local, tiny_model_dir, tmp_path):
    from mlflow.tracking import MlflowClient

    from tuning.config import SweepConfig
    from tuning.sweep.runner import run_sweep

    cfg = SweepConfig(name="reuse", model=tiny_model_dir, max_length=64, epochs=1, num_trials=4,
                      storage=str(tmp_path), scheduler="none", max_concurrent=1, precision="fp32")
    outcome = run_sweep(cfg)
    assert outcome.counts["FINISHED"] == 4
    pids = set()
    for path in cfg.sweep_dir.glob("*/result.json"):
        import json

        pids |= {json.loads(line)["pid"] for line in path.read_text().splitlines() if line}
    assert len(pids) < 4, f"every trial had a process of its own: {pids}"
    client = MlflowClient(cfg.resolved_tracking_uri())
    assert len(client.search_runs([client.get_experiment_by_name("reuse").experiment_id])) == 5
