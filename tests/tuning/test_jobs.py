"""Jobs N at a time: results in job order, workers in their own processes on their share of the
cores, errors raised where their result is read. Builtins stand in for training functions: a
spawned worker imports the function by name, which a test module's own function would not allow."""

import json
import os

import pytest
import torch

from tuning.jobs import run_jobs, threads_per_worker


def test_one_worker_runs_the_jobs_here_one_at_a_time_when_asked():
    calls = []

    def job(x):
        calls.append(x)
        return x * 10

    results = run_jobs(job, [{"x": 1}, {"x": 2}, {"x": 3}], workers=1)
    assert calls == []  # nothing runs before its result is wanted
    assert next(results) == 10 and calls == [1]
    assert list(results) == [20, 30]


def test_several_workers_give_the_same_results_in_job_order():
    jobs = [{"s": json.dumps([i, "x" * i])} for i in range(5)]
    assert list(run_jobs(json.loads, jobs, workers=2)) == list(run_jobs(json.loads, jobs, workers=1))


def test_workers_are_other_processes_pinned_to_their_share_of_the_cores():
    pids = list(run_jobs(os.getpid, [{}] * 4, workers=2))
    assert os.getpid() not in pids and 1 <= len(set(pids)) <= 2
    threads = list(run_jobs(torch.get_num_threads, [{}] * 2, workers=2))
    assert threads == [threads_per_worker(2)] * 2 == [max(1, (os.cpu_count() or 1) // 2)] * 2


@pytest.mark.parametrize("workers", [1, 2])
def test_a_failing_job_raises_where_its_result_is_read(workers):
    results = run_jobs(json.loads, [{"s": "[1]"}, {"s": "{broken"}, {"s": "[3]"}], workers)
    assert next(results) == [1]
    with pytest.raises(json.JSONDecodeError):
        next(results)
