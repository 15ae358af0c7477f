"""The scale benchmark's parts: memory sampled over a process tree, a cgroup memory limit that
holds, and the whole part end to end at smoke sizes."""

import json
import sys
import textwrap

import pytest

from tuning.bench.scale import GIB, MemoryCap, measured

ALLOCATE = textwrap.dedent("""
    import subprocess, sys, time
    if sys.argv[1] == "parent":
        subprocess.run([sys.executable, __file__, "child", sys.argv[2]], check=True)
    else:
        block = bytearray(int(sys.argv[2]) * 2**20)
        block[::4096] = b"x" * len(block[::4096])  # touch every page
        time.sleep(1.5)
""")


def test_the_sampler_sees_the_peak_of_a_child_process(tmp_path):
    script = tmp_path / "allocate.py"
    script.write_text(ALLOCATE)
    run = measured([sys.executable, str(script), "parent", "300"])
    assert run["rc"] == 0
    child = max(run["processes"], key=lambda p: p["anon_mib"])
    assert "child" in child["title"] and 290 <= child["anon_mib"] < 400
    assert run["driver"]["anon_mib"] < 100  # the parent itself holds little
    assert run["trial"] is None  # no Ray trial in this tree


def test_a_cgroup_limit_kills_what_goes_beyond_it_and_lets_the_rest_finish(tmp_path):
    script = tmp_path / "allocate.py"
    script.write_text(ALLOCATE)
    cap, why = MemoryCap.make(200 * 2**20)
    if cap is None:
        pytest.skip(f"no writable memory cgroup here: {why}")
    try:
        small = measured([sys.executable, str(script), "parent", "60"], preexec=cap.preexec)
        assert small["rc"] == 0
        big = measured([sys.executable, str(script), "parent", "400"], preexec=cap.preexec)
        assert big["rc"] != 0  # the child was killed at the limit, so the parent's check failed
        figures = cap.figures()
        assert figures["limit_mib"] == 200 and figures["peak_mib"] <= 200.5
        assert figures["oom_kills"] >= 1 or figures["limit_hits"] >= 1
    finally:
        cap.remove()
    assert not cap.path.exists()


@pytest.mark.slow
def test_the_scale_part_end_to_end_at_smoke_sizes(tmp_path, tiny_model_dir):
    from tuning.cli import main

    out = tmp_path / "out"
    rc = main(["bench", "--smoke-test", "--parts", "scale", "--data", "demo", "--model", tiny_model_dir,
               "--out", str(out), "--storage", str(tmp_path / "runs")])
    assert rc == 0
    result = json.loads((out / "scale.json").read_text())
    assert [row["gib"] for row in result["sizes"]] == [0.002, 0.004]
    for row in result["sizes"]:
        first, second = row["tokenize_first"]["inside"], row["tokenize_second"]["inside"]
        assert first["rows"] == second["rows"] and first["rows"]["train"] > 50_000
        assert row["sweep"]["rc"] == 0 and row["sweep"]["trial"]["rss_mib"] > 100
        assert row["sweep"]["driver"]["rss_mib"] > 100
    throughput = result["throughput"]
    assert throughput["order"] == "ABBA" and len(throughput["samples_per_s"]["token cache"]) == 2
    # both paths trained on the same batches: what differs between them is only how data is read
    assert throughput["train_loss"]["in memory"] == throughput["train_loss"]["token cache"]
    assert throughput["ratio"] > 0
    capped = result["capped"]
    assert not capped["run"] or (capped["rc"] == 0 and capped["rounds_per_trial"]
                                 and capped["limit_mib"] == 4 * GIB / 2**20)
    runs = result["two_workers"]["runs"]
    assert len(runs["1"]["train_loss"]) == len(runs["2"]["train_loss"]) == 3
    assert result["two_workers"]["max_abs_diff"] < 1e-3
    text = (out / "results.md").read_text()
    assert "k. Scale" in text and "Two workers" in text and "Throughput on MASSIVE" in text
    assert "tokenizing process: 0.004 GiB peak / 0.002 GiB peak" in text and "same batches" in text
