"""Jobs N at a time: results in job order, workers in their own processes on their share of the
cores, errors raised where their result is read. Builtins stand in for training functions: a
spawned worker imports the function by name, which a test module's own function would not allow."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tuning.results.jobs import run_jobs, threads_per_worker


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


def test_on_done_hears_of_every_finished_job_with_its_seconds():
    for workers in (1, 2):
        heard = []
        results = list(run_jobs(json.loads, [{"s": "[1]"}, {"s": "[2]"}], workers,
                                on_done=lambda index, seconds: heard.append((index, seconds))))
        assert results == [[1], [2]]
        assert sorted(i for i, _ in heard) == [0, 1] and all(s >= 0 for _, s in heard)


def test_progress_says_done_running_left_and_the_time_left_from_jobs_trained_here():
    from tuning.results.jobs import JobProgress

    progress = JobProgress(total=5, workers=2, done=1)  # one job was found finished in MLflow
    assert progress.text() == ("1 of 5 jobs done, 2 running, 2 left; time left: unknown until a "
                               "job finishes")
    # the job found finished took no time here and does not count towards the mean
    assert progress.finished(600) == ("2 of 5 jobs done, 2 running, 1 left; about 15 min left "
                                      "(10 min per job, 2 at a time)")
    assert progress.finished(1200) == ("3 of 5 jobs done, 2 running, 0 left; about 15 min left "
                                       "(15 min per job, 2 at a time)")
    progress.finished(30)
    assert progress.finished(30) == "5 of 5 jobs done, 0 running, 0 left"
    one = JobProgress(total=4, workers=1)
    assert one.finished(2 * 3600 + 300).endswith("about 6 h 15 min left (2 h 05 min per job, 1 at a time)")
    assert JobProgress(total=3, workers=1).finished(40).endswith("about 80 s left (40 s per job, 1 at a time)")


def test_the_time_left_weighs_each_job_by_its_epochs_and_learns_each_kinds_pace():
    from search_spaces.presets import PRESETS
    from tuning.results.jobs import CONTRASTIVE_EPOCH, JobProgress, job_cost

    # the study's table: fine-tuning 10 epochs; SupCon 10 contrastive epochs and a classifier on
    # cached features (0.5); SimCLR 13 contrastive epochs and its classifier
    assert job_cost(PRESETS["baseline"]) == ("finetune", 10)
    assert job_cost(PRESETS["supcon"]) == ("contrastive", pytest.approx(10 * CONTRASTIVE_EPOCH + 0.5))
    assert job_cost(PRESETS["simclr"]) == ("contrastive", pytest.approx(13 * CONTRASTIVE_EPOCH + 0.5))
    assert job_cost({"trainable": "contrastive", "mode": "joint", "epochs": 3}) == (
        "contrastive", pytest.approx(3 * CONTRASTIVE_EPOCH))
    assert job_cost({"trainable": "contrastive", "mode": "two-stage-finetune", "epochs": 4,
                     "contrastive_epochs": 2}) == ("contrastive", pytest.approx(2 * CONTRASTIVE_EPOCH + 4))
    # two 10-epoch fine-tuning jobs took 12.5 min each; a 10- and a 20-unit contrastive job are
    # left. Before any contrastive job finished, they are priced at the fine-tuning pace: 75 s
    # x 30 units / 2 workers (the mean per job would have said 12.5 min in all)
    progress = JobProgress(total=4, workers=2, costs=[("finetune", 10), ("finetune", 10),
                                                      ("contrastive", 10), ("contrastive", 20)])
    progress.finished(750, 1)  # jobs finish out of order: the index says which one
    assert progress.finished(750, 0) == ("2 of 4 jobs done, 2 running, 0 left; about 19 min left "
                                         "(75 s per fine-tuning epoch, longer jobs weighted, 2 at a time)")
    # the first contrastive job took 1200 s for 10 units: the other one is priced at that pace
    assert progress.finished(1200, 2) == (
        "3 of 4 jobs done, 1 running, 0 left; about 20 min left (75 s per fine-tuning epoch, "
        f"{round(120 * CONTRASTIVE_EPOCH)} s per contrastive epoch, longer jobs weighted, 2 at a time)")
    with pytest.raises(ValueError):
        JobProgress(total=3, workers=1, done=1, costs=[("finetune", 1.0)])


def test_pick_jobs_matches_names_and_globs_in_job_order_and_refuses_a_pattern_matching_none():
    from trainables.errors import UserError
    from tuning.results.jobs import pick_jobs

    names = ["baseline-seed0", "baseline-seed1", "llrd-seed0", "llrd-seed1", "llrd_warmup-seed0"]
    assert pick_jobs(names, "llrd-seed1, baseline-*") == ["baseline-seed0", "baseline-seed1", "llrd-seed1"]
    assert pick_jobs(names, "*-seed0") == ["baseline-seed0", "llrd-seed0", "llrd_warmup-seed0"]
    with pytest.raises(UserError) as err:
        pick_jobs(names, "baseline-*,warmup-*")
    assert "warmup-*" in str(err.value) and "llrd_warmup-seed0" in str(err.value)


def test_job_folder_keeps_the_latest_complete_checkpoint_only(tmp_path):
    from tuning.results.jobs import JobFolder

    folder = JobFolder(tmp_path / "jobs" / "abc")
    assert folder.latest() is None and folder.metrics() == {}

    def write(directory):
        os.makedirs(directory)
        with open(os.path.join(directory, "state.pt"), "w") as f:
            f.write(directory)

    folder.save({"epoch": 1, "val_accuracy": 0.5}, write)
    folder.save({"epoch": 2, "val_accuracy": 0.75}, write)
    assert folder.latest() == tmp_path / "jobs" / "abc" / "epoch-0002"
    assert folder.metrics() == {"epoch": 2, "val_accuracy": 0.75}
    assert sorted(p.name for p in folder.path.iterdir()) == ["epoch-0002", "latest"]

    def killed_while_writing(directory):
        write(directory)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        folder.save({"epoch": 3, "val_accuracy": 0.8}, killed_while_writing)
    assert folder.metrics()["epoch"] == 2  # the half-saved epoch is not the one resumed from
    folder.remove()
    assert not folder.path.exists()


def _git(*args, cwd):
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, check=True).stdout


@pytest.mark.skipif(not (Path(__file__).resolve().parents[3] / ".git").exists(), reason="not a git checkout")
def test_the_code_version_is_the_commit_in_a_checkout_and_in_an_installed_git_archive(tmp_path):
    from tuning.results.jobs import code_version

    root = Path(__file__).resolve().parents[3]
    head = _git("rev-parse", "--short=12", "HEAD", cwd=root).decode().strip()
    assert code_version().split("+")[0] == head
    # a benchmark runs from an installed copy of `git archive HEAD`: no .git there
    (tmp_path / "copy.tar").write_bytes(_git("archive", "HEAD", cwd=root))
    subprocess.run(["tar", "-xf", "copy.tar"], cwd=tmp_path, check=True)
    said = subprocess.run([sys.executable, "-c", "from tuning.results.jobs import code_version; print(code_version())"],
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path)},
                          capture_output=True, text=True, check=True).stdout.strip()
    assert not (tmp_path / ".git").exists() and said == head
