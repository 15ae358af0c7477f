"""`tunebert bench`: the scaling rule of the table, argument errors, and every part end to end
in smoke mode on the tiny model (the numbers mean nothing there; the wiring and outputs do)."""

import json
import re

import pytest

from tuning import tracking
from tuning.bench import ablation, common, quality
from tuning.cli import main


def test_capped_limits_only_encoder_training():
    ft = quality._capped({"trainable": "finetune", "epochs": 10}, 2)
    assert ft["epochs"] == 2
    assert quality._capped({"trainable": "finetune", "epochs": 1}, 2)["epochs"] == 1
    two_stage = quality._capped({"trainable": "contrastive", "mode": "two-stage", "contrastive_epochs": 13,
                               "epochs": 20}, 2)
    # the head on cached frozen features is cheap: its epochs stay as the preset says
    assert (two_stage["contrastive_epochs"], two_stage["epochs"]) == (2, 20)
    joint = quality._capped({"trainable": "contrastive", "mode": "joint", "contrastive_epochs": 0,
                           "epochs": 20}, 2)
    assert joint["epochs"] == 2


def test_unknown_part_is_refused_before_any_work(tmp_path, capsys):
    rc = main(["bench", "--parts", "throughput,speed", "--out", str(tmp_path / "out"),
               "--storage", str(tmp_path / "runs")])
    assert rc != 0
    err = capsys.readouterr().err
    assert "speed" in err and "throughput" in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("option, value, rule", [
    ("--batches", "0", "--batches must be at least 1, but got 0"),
    ("--repeats", "0", "--repeats must be at least 1, but got 0"),
    ("--seeds", "0", "--seeds must be at least 1, but got 0"),
    ("--batch-size", "-1", "--batch-size must be at least 1, but got -1"),
    ("--table-epochs", "0", "--table-epochs must be at least 1, but got 0"),
    ("--search-budget", "nan", "--search-budget must be a number of seconds > 0, but got nan"),
    ("--front-budget", "-5", "--front-budget must be a number of seconds >= 0"),
])
def test_sizes_below_one_are_refused_before_any_work(tmp_path, capsys, option, value, rule):
    rc = main(["bench", option, value, "--smoke-test", "--out", str(tmp_path / "out"),
               "--storage", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(f"tunebert bench: error: {rule}") and err.count("\n") == 1
    assert not (tmp_path / "runs").exists() and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_smoke_throughput_and_table(tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    rc = main(["bench", "--smoke-test", "--parts", "throughput,table", "--data", "demo",
               "--model", tiny_model_dir, "--presets", "baseline,supcon",
               "--table-workers", "2", "--out", str(out),
               "--storage", str(tmp_path / "runs")])
    assert rc == 0
    text = (out / "results.md").read_text()
    assert "Command: `tunebert bench --smoke-test --parts throughput,table" in text
    assert "| baseline |" in text and "| supcon |" in text and "84.9 %" in text and "87.4 %" in text
    numbers = json.loads((out / "results.json").read_text())
    assert numbers["throughput_ratio"] > 0 and numbers["epoch_seconds_massive_train"] > 0
    assert 0.0 <= numbers["table_baseline_test_mean"] <= 1.0
    assert (out / "throughput.png").stat().st_size > 1000
    assert (out / "study_table.png").stat().st_size > 1000


@pytest.mark.slow
def test_smoke_search_and_overhead(tmp_path, tiny_model_dir, ray_local):
    out = tmp_path / "out"
    rc = main(["bench", "--smoke-test", "--parts", "overhead,search", "--data", "demo",
               "--model", tiny_model_dir, "--out", str(out), "--storage", str(tmp_path / "runs")])
    assert rc == 0
    text = (out / "results.md").read_text()
    assert "## b. Sweep overhead" in text and "## c. Search efficiency" in text
    assert "| ASHA + TPE |" in text and "| random, no early stopping |" in text
    for line in text.splitlines():
        if line.startswith(("| ASHA + TPE |", "| random, no early stopping |")):
            trials, trial_epochs = int(line.split("|")[2]), int(line.split("|")[3])
            assert trial_epochs >= 1 and trials >= 1
    numbers = json.loads((out / "results.json").read_text())
    assert numbers["sweep_overhead"] > -1.0
    for searcher in ("tpe", "random"):
        assert 0.0 <= numbers[f"search_{searcher}_test"] <= 1.0
    assert (out / "search_efficiency.png").stat().st_size > 1000


@pytest.mark.slow
def test_smoke_ablation_run_again_skips_the_jobs_it_finished(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "out"
    argv = ["bench", "--smoke-test", "--parts", "ablation", "--data", "demo", "--model", tiny_model_dir,
            "--seeds", "1", "--out", str(out), "--storage", str(tmp_path / "runs")]
    assert main(argv) == 0
    first = json.loads((out / "ablation.json").read_text())
    assert len(first) == len(ablation.VARIANTS)
    assert all(0.0 <= row["val_accuracy"][0] <= 1.0 for row in first)
    capsys.readouterr()
    assert main(argv) == 0  # the same command again: every job is found finished in MLflow
    said = capsys.readouterr().out
    assert said.count("not trained again") == len(ablation.VARIANTS)
    assert "training finetune" not in said
    again = json.loads((out / "ablation.json").read_text())
    assert [row["val_accuracy"] for row in again] == [row["val_accuracy"] for row in first]
    client = tracking.client_for(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(ablation.EXPERIMENT).experiment_id])
    assert len(runs) == len(ablation.VARIANTS)  # one run per job, none doubled
    assert all(r.data.tags["tunebert.code_version"] for r in runs)


def test_job_key_follows_config_and_data_not_the_order_of_keys():
    from tuning.results.jobs import job_key
    from trainables.data import DataConfig

    data = DataConfig("demo")
    assert job_key({"lr": 1e-4, "seed": 0}, data) == job_key({"seed": 0, "lr": 1e-4}, data)
    assert job_key({"lr": 1e-4, "seed": 0}, data) != job_key({"lr": 1e-4, "seed": 1}, data)
    assert job_key({"lr": 1e-4}, data) != job_key({"lr": 1e-4}, DataConfig("other"))
    assert job_key({"lr": 1e-4}, data) != job_key({"lr": 1e-4}, data, max_train_examples=64)


def test_a_row_short_of_seeds_is_marked_not_averaged():
    assert quality.ours_cell([0.80, 0.82], 2) == "81.00 ± 1.41 %"
    assert quality.ours_cell([0.80], 3) == "— (1 of 3 seeds: 80.00 %)"
    assert quality.ours_cell([], 2) == "— (0 of 2 seeds)"
    assert quality.table_job_names(("baseline", "llrd"), 2, tuned=True) == [
        "baseline-seed0", "baseline-seed1", "llrd-seed0", "llrd-seed1", "tuned-seed0", "tuned-seed1"]


def test_table_trains_the_picked_jobs_and_marks_rows_missing_some(tmp_path, monkeypatch):
    from trainables.data import DataConfig
    from tuning.results import jobs

    asked = {}

    def fake_run_bench_jobs(bench_jobs, *, uri, experiment, workers, say, selected=None):
        asked.update(names=[job.name for job in bench_jobs], selected=selected, experiment=experiment)
        done = {"baseline-seed0": 0.80, "baseline-seed1": 0.82, "llrd-seed1": 0.70}  # llrd-seed0 left out
        return {job.name: {"metrics": {"test_accuracy": done[job.name]}} if job.name in done else None
                for job in bench_jobs}

    monkeypatch.setattr(jobs, "run_bench_jobs", fake_run_bench_jobs)
    report = common.BenchReport()
    quality.study_table(DataConfig("demo"), "tiny", report, seeds=2, epochs=1, storage=tmp_path / "runs",
                      tuned=None, out=tmp_path, presets=("baseline", "llrd"), pick="baseline-*,llrd-seed1")
    assert asked == {"names": ["baseline-seed0", "baseline-seed1", "llrd-seed0", "llrd-seed1"],
                     "selected": ["baseline-seed0", "baseline-seed1", "llrd-seed1"],
                     "experiment": quality.TABLE_EXPERIMENT}
    lines = report.sections["d. The study's table"]
    assert "| baseline | 81.00 ± 1.41 % | 84.9 % |" in lines
    assert "| llrd | — (1 of 2 seeds: 70.00 %) | 81.2 % |" in lines
    assert any("--jobs" in line for line in lines)
    assert "table_baseline_test_mean" in report.numbers and "table_llrd_test_mean" not in report.numbers
    assert (tmp_path / "study_table.png").stat().st_size > 1000


@pytest.mark.parametrize("extra, said", [
    (["--parts", "table", "--jobs", "baseline-*,warmup-*"], ["warmup-*", "baseline-seed0, llrd-seed0"]),
    (["--parts", "throughput", "--jobs", "baseline-*"], ["--jobs", "table"]),
])
def test_jobs_matching_nothing_or_without_the_table_are_refused_before_any_work(tmp_path, capsys, extra, said):
    rc = main(["bench", *extra, "--presets", "baseline,llrd", "--seeds", "1",
               "--out", str(tmp_path / "out"), "--storage", str(tmp_path / "runs")])
    assert rc != 0
    err = capsys.readouterr().err
    assert all(text in err for text in said)
    assert not (tmp_path / "runs").exists()


def test_an_unfinished_job_run_is_found_by_its_key_and_continued(mlflow_uri):
    from tuning.results.jobs import job_tags

    run = tracking.TrainRun(mlflow_uri, "bench-x", {"trainable": "finetune"}, "baseline-seed0",
                            tags=job_tags("key1"))
    run.log_metrics({"epoch": 1, "val_accuracy": 0.5}, step=1)
    run.end("KILLED", error="KeyboardInterrupt: ")
    assert tracking.unfinished_job(mlflow_uri, "bench-x", "key1") == run.run_id
    assert tracking.unfinished_job(mlflow_uri, "bench-x", "key2") is None
    assert tracking.finished_job(mlflow_uri, "bench-x", "key1") is None
    again = tracking.TrainRun.reopen(mlflow_uri, run.run_id)
    assert (again.logged_through, again.logged) == (1, {"val_accuracy"})
    client = tracking.client_for(mlflow_uri)
    reopened = client.get_run(run.run_id)
    assert reopened.info.status == "RUNNING" and tracking.ERROR not in reopened.data.tags
    assert tracking.unfinished_job(mlflow_uri, "bench-x", "key1") == run.run_id  # killed again: found again
    again.log_metrics({"epoch": 2, "val_accuracy": 0.75}, step=2)
    again.end("FINISHED")
    assert tracking.unfinished_job(mlflow_uri, "bench-x", "key1") is None
    assert tracking.finished_job(mlflow_uri, "bench-x", "key1")["run_id"] == run.run_id


@pytest.mark.slow
def test_smoke_table_run_again_skips_the_finished_job_and_continues_the_stopped_one(
        tmp_path, tiny_model_dir, monkeypatch, capsys):
    from trainables import finetune

    out, storage = tmp_path / "out", tmp_path / "runs"
    argv = ["bench", "--smoke-test", "--parts", "table", "--data", "demo", "--model", tiny_model_dir,
            "--presets", "baseline,llrd", "--table-epochs", "2", "--out", str(out), "--storage", str(storage)]
    points = []

    def stop_in_the_second_job(point):  # called at the start of every epoch, and after the last
        points.append(point)
        if points.count(2) == 2:  # the second job's second epoch: as Ctrl-C would stop it
            raise KeyboardInterrupt

    monkeypatch.setattr(finetune, "maybe_inject_failure", stop_in_the_second_job)
    assert main(argv) == 130
    # after the first job: the progress, and the time left estimated from that job
    assert re.search(r"table: baseline-seed0 done in [^;]+; 1 of 2 jobs done, 1 running, 0 left; "
                     r"about [^(]+ left \([^)]+ per job, 1 at a time\)", capsys.readouterr().out)
    assert not (out / "results.md").exists()
    uri = f"sqlite:///{storage / 'mlflow.db'}"
    client = tracking.client_for(uri)
    experiment_id = client.get_experiment_by_name(quality.TABLE_EXPERIMENT).experiment_id
    first = {r.info.run_name: r for r in client.search_runs([experiment_id])}
    assert {name: r.info.status for name, r in first.items()} == {"baseline-seed0": "FINISHED",
                                                                  "llrd-seed0": "KILLED"}
    stopped = first["llrd-seed0"].info.run_id
    assert [step for step, _ in tracking.metric_history(uri, stopped, "val_accuracy")] == [1]
    assert all(r.data.tags["tunebert.bench_job"] and r.data.tags["tunebert.code_version"]
               for r in first.values())

    points.clear()
    capsys.readouterr()
    monkeypatch.setattr(finetune, "maybe_inject_failure", points.append)
    assert main(argv) == 0  # the same command again
    said = capsys.readouterr().out
    assert f"baseline-seed0: finished before (MLflow run {first['baseline-seed0'].info.run_id}), " \
           f"not trained again" in said
    assert said.count("[tunebert] training ") == 1  # the stopped job only
    assert f"MLflow run {stopped} continued from the checkpoint of epoch 1" in said
    assert points == [2, 3]  # its first epoch was not trained again
    assert "2 jobs: 1 finished before, 1 to train or continue" in said
    assert "llrd-seed0 done in " in said and "; 2 of 2 jobs done, 0 running, 0 left\n" in said
    after = {r.info.run_name: r for r in client.search_runs([experiment_id])}
    assert {n: r.info.run_id for n, r in after.items()} == {n: r.info.run_id for n, r in first.items()}
    assert {r.info.status for r in after.values()} == {"FINISHED"}
    for key in ("val_accuracy", "train_loss"):
        assert [step for step, _ in tracking.metric_history(uri, stopped, key)] == [1, 2]
    assert len(tracking.metric_history(uri, stopped, "test_accuracy")) == 1
    text = (out / "results.md").read_text()
    assert "| baseline |" in text and "| llrd |" in text and "seeds" not in text.split("| llrd |")[1].splitlines()[0]
    numbers = json.loads((out / "results.json").read_text())
    assert {"table_baseline_test_mean", "table_llrd_test_mean"} <= set(numbers)
    assert numbers["table_llrd_test_mean"] == after["llrd-seed0"].data.metrics["test_accuracy"]
    assert not any((storage / "jobs").iterdir())  # a finished job's checkpoints are removed


def test_the_pipeline_row_is_named_for_jobs_and_waits_for_its_anchor():
    names = quality.table_job_names(("baseline", "llrd_warmup"), 1, tuned=False)
    assert names == ["baseline-seed0", "llrd_warmup-seed0", "tune-seed0"]
    assert quality.table_job_names(("baseline",), 1, tuned=False) == ["baseline-seed0"]  # no anchor, no row
    records = {"llrd_warmup-seed0": {"seconds": 400.0}, "llrd_warmup-seed1": None}
    assert quality.pipeline_budget(records, 2) is None  # not before every seed of the anchor finished
    records["llrd_warmup-seed1"] = {"seconds": 500.0}
    assert quality.pipeline_budget(records, 2) == 900.0  # the anchor row's compute: both its runs
    assert quality.pipeline_budget(records, 2, core_share=0.5) == 450.0


@pytest.mark.slow
def test_smoke_table_pipeline_row_runs_tune_once_and_is_not_run_again(tmp_path, tiny_model_dir, capsys):
    out, storage = tmp_path / "out", tmp_path / "runs"
    argv = ["bench", "--smoke-test", "--parts", "table", "--data", "demo", "--model", tiny_model_dir,
            "--presets", "llrd_warmup", "--out", str(out), "--storage", str(storage)]
    assert main(argv) == 0
    said = capsys.readouterr().out
    assert "tune-seed0: tunebert tune for 10.0 min" in said  # the smoke floor over the anchor's seconds
    text = (out / "results.md").read_text()
    row = [line for line in text.splitlines() if line.startswith(f"| {quality.PIPELINE} |")]
    assert len(row) == 1 and "seeds" not in row[0] and "%" in row[0]
    numbers = json.loads((out / "results.json").read_text())
    assert 0.0 <= numbers["table_pipeline_test_mean"] <= 1.0 and numbers["table_pipeline_budget_s"] > 0
    uri = f"sqlite:///{storage / 'mlflow.db'}"
    client = tracking.client_for(uri)
    experiment_id = client.get_experiment_by_name(quality.TABLE_EXPERIMENT).experiment_id
    runs = {r.info.run_name: r for r in client.search_runs([experiment_id])}
    assert set(runs) == {"llrd_warmup-seed0", "tune-seed0"}
    assert runs["tune-seed0"].data.metrics["test_accuracy"] == numbers["table_pipeline_test_mean"]
    assert runs["tune-seed0"].data.tags["tunebert.bench_job"]

    assert main(argv) == 0  # the same command again: nothing is trained or tuned again
    said = capsys.readouterr().out
    assert "tune-seed0: finished before" in said and "tunebert tune for" not in said
    assert "[tunebert] training " not in said
    assert len(client.search_runs([experiment_id])) == 2


@pytest.mark.slow
def test_a_refused_pipeline_row_leaves_the_table_written_and_says_why(tmp_path, tiny_model_dir, capsys,
                                                                      monkeypatch):
    # on MASSIVE `tunebert tune` refused a budget below its floor (exit 2) after 4 hours of
    # presets, and the bench died with a traceback before writing any table
    from tuning.bench import compare

    def refuse(*args, **kwargs):
        raise compare.PipelineRefused("tunebert tune exited with 2")

    def interrupted(*args, **kwargs):
        raise RuntimeError("tunebert tune exited with 143")

    out, storage = tmp_path / "out", tmp_path / "runs"
    argv = ["bench", "--smoke-test", "--parts", "table", "--data", "demo", "--model", tiny_model_dir,
            "--presets", "llrd_warmup", "--out", str(out), "--storage", str(storage)]
    # a SIGTERM'd pipeline (143) is no refusal: the bench stops there, writes no table and does
    # not go on to the next seed (its next run resumes the pipeline)
    monkeypatch.setattr(compare, "tune_pipeline", interrupted)
    with pytest.raises(RuntimeError, match="143"):
        main(argv)
    assert not (out / "results.md").exists()
    capsys.readouterr()
    monkeypatch.setattr(compare, "tune_pipeline", refuse)
    assert main(argv) == 0
    said = capsys.readouterr().out
    assert "table: tune-seed0: tunebert tune exited with 2; the table is written without it" in said
    text = (out / "results.md").read_text()
    assert "| llrd_warmup | " in text and f"| {quality.PIPELINE} | — (0 of 1 seeds) |" in text
    assert "Not run: tune-seed0: tunebert tune exited with 2" in text
    assert (out / "study_table.png").is_file()


@pytest.mark.slow
def test_smoke_deploy_variants_and_their_front(tmp_path, tiny_model_dir, ray_local):
    """Issue 12's bench: the full model and one layer fewer, each fp32 and int8, with accuracy,
    perturbed accuracy, size and latency per row (int8 rows from the int8 model), and the front
    of an accuracy/latency sweep."""
    from tuning.bench import deploy

    out = tmp_path / "out"
    rc = main(["bench", "--smoke-test", "--parts", "deploy", "--data", "demo", "--model", tiny_model_dir,
               "--out", str(out), "--storage", str(tmp_path / "runs")])
    assert rc == 0
    saved = json.loads((out / "deploy.json").read_text())
    rows = {row["variant"]: row for row in saved["variants"]}
    assert list(rows) == list(deploy.variants((1,)))
    full, int8 = rows["all layers, fp32"], rows["all layers, int8"]
    assert rows["1 layer, fp32"]["params_m"] < full["params_m"] == int8["params_m"]
    assert int8["size_mb"] < full["size_mb"]  # int8 weights take fewer bytes
    for row in rows.values():
        assert 0.0 <= row["val_accuracy"][0] <= 1.0 and 0.0 <= row["val_accuracy_perturbed"][0] <= 1.0
        assert row["latency_ms_p50"] > 0 and row["throughput_b32"] > 0
    assert saved["front"] and all(point["latency_ms_p50"] > 0 for point in saved["front"])
    text = (out / "results.md").read_text()
    assert "## g. Deployment trade-offs" in text and "| all layers, int8 |" in text
    assert (out / "deploy.png").stat().st_size > 1000
