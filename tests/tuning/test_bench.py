"""`tunebert bench`: the scaling rule of the table, argument errors, and every part end to end
in smoke mode on the tiny model (the numbers mean nothing there; the wiring and outputs do)."""

import json

import pytest

from tuning import ablation, bench, tracking
from tuning.cli import main


def test_capped_limits_only_encoder_training():
    ft = bench._capped({"trainable": "finetune", "epochs": 10}, 2)
    assert ft["epochs"] == 2
    assert bench._capped({"trainable": "finetune", "epochs": 1}, 2)["epochs"] == 1
    two_stage = bench._capped({"trainable": "contrastive", "mode": "two-stage", "contrastive_epochs": 13,
                               "epochs": 20}, 2)
    # the head on cached frozen features is cheap: its epochs stay as the preset says
    assert (two_stage["contrastive_epochs"], two_stage["epochs"]) == (2, 20)
    joint = bench._capped({"trainable": "contrastive", "mode": "joint", "contrastive_epochs": 0,
                           "epochs": 20}, 2)
    assert joint["epochs"] == 2


def test_unknown_part_is_refused_before_any_work(tmp_path, capsys):
    rc = main(["bench", "--parts", "throughput,speed", "--out", str(tmp_path / "out"),
               "--storage", str(tmp_path / "runs")])
    assert rc != 0
    err = capsys.readouterr().err
    assert "speed" in err and "throughput" in err
    assert not (tmp_path / "runs").exists()


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
    from tuning.jobs import job_key
    from trainables.data import DataConfig

    data = DataConfig("demo")
    assert job_key({"lr": 1e-4, "seed": 0}, data) == job_key({"seed": 0, "lr": 1e-4}, data)
    assert job_key({"lr": 1e-4, "seed": 0}, data) != job_key({"lr": 1e-4, "seed": 1}, data)
    assert job_key({"lr": 1e-4}, data) != job_key({"lr": 1e-4}, DataConfig("other"))
    assert job_key({"lr": 1e-4}, data) != job_key({"lr": 1e-4}, data, max_train_examples=64)
