"""`tunebert bench --parts ship-knobs,ship-tune` in smoke mode: every row and candidate of the
issue-25 benchmark is produced (numbers mean nothing at this size), the targets are judged, and
the tune part scores the candidates it kept on test only after the pipeline's own choice."""

import json

import pytest

from tuning.bench import ship
from tuning.cli import main


@pytest.mark.slow
def test_smoke_ship_knobs_and_tune(tmp_path, tiny_model_dir, ray_local):
    out = tmp_path / "out"
    argv = ["bench", "--smoke-test", "--parts", "ship-knobs,ship-tune", "--data", "demo",
            "--model", tiny_model_dir, "--seeds", "2", "--tune-budget", "1800", "--out", str(out),
            "--storage", str(tmp_path / "runs")]
    assert main(argv) == 0
    text = (out / "results.md").read_text()
    assert "## i. The model worth shipping" in text and "## j. The model worth shipping" in text
    knobs = json.loads((out / "ship-knobs.json").read_text())
    variants = [r["variant"] for r in knobs["rows"]]
    assert variants == ["hand config", "hand config + typo-robust training",
                        "teacher: ensemble of the 2 hand models", "student (T 2, alpha 0.5)",
                        "student (T 4, alpha 0.9)", *ship.BASELINES]
    for row in knobs["rows"]:
        if not row["variant"].startswith("teacher"):
            assert row["seeds"] == 2 and len(row["test_accuracy"]) == 2
            assert len(row["val_accuracy_perturbed"]) == 2  # every family reports it
        assert all(0.0 <= v <= 1.0 for v in row["test_accuracy"])
    for target in ("typo-robust: perturbed validation", "typo-robust: clean test",
                   "a distilled student", "handed-over model", "distilled student ≥"):
        assert target in text
    tuned = json.loads((out / "ship-tune.json").read_text())
    kinds = [c["kind"] for c in tuned["candidates"]]
    assert kinds == ["single", "ensemble", "cross", "student"]
    for c in tuned["candidates"]:
        assert 0.0 <= c["test_accuracy"] <= 1.0 and 0.0 <= c["val_accuracy_perturbed"] <= 1.0
        assert c["val_clean_recomputed"] == pytest.approx(c["val"], abs=1e-9)
    handed = next(c for c in tuned["candidates"] if c["handed_over"])
    assert handed["test_accuracy"] == pytest.approx(tuned["test_accuracy"], abs=1e-9)
