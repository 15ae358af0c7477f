"""tuning.sweep.ray_internals: each private Ray API tunebert relies on is there and behaves as assumed,
a Ray outside the tested series is refused at import with the version that works, and no other
module reaches Ray's private API."""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import ray
from ray.tune import Checkpoint
from ray.tune.experiment import Trial
from ray.tune.schedulers import AsyncHyperBandScheduler, PopulationBasedTraining, TrialScheduler

from trainables.errors import ConfigError
from tuning.sweep import ray_internals as internals

ROOT = Path(__file__).resolve().parents[3]


def _trial(trial_id: str, config: dict | None = None) -> Trial:
    return Trial("trainable", config=config or {}, trial_id=trial_id, stub=True)


# -- the version check


def test_a_ray_outside_the_tested_series_is_refused_at_import_naming_the_version_that_works(monkeypatch):
    monkeypatch.setattr(ray, "__version__", "2.61.0")
    try:
        with pytest.raises(ConfigError) as caught:
            importlib.reload(internals)
        message = str(caught.value)
        assert "Ray 2.61.0" in message  # what this environment has
        assert "Ray 2.60.x (2.60.0)" in message  # what works
        assert "ray[tune]==2.60.*" in message  # how to fix it
        assert "tunebert" in message
    finally:
        monkeypatch.undo()
        importlib.reload(internals)  # back to the module as the installed Ray builds it


@pytest.mark.parametrize("version", ["2.60.0", "2.60.3", "2.60.0rc1"])
def test_every_release_of_the_tested_series_is_accepted(version):
    internals.check_ray_version(version)


@pytest.mark.parametrize("version", ["2.59.9", "2.61.0", "3.60.0", "2.6.0"])
def test_releases_outside_the_tested_series_are_refused(version):
    with pytest.raises(ConfigError, match=re.escape(f"this environment has Ray {version}")):
        internals.check_ray_version(version)


def test_the_tested_series_is_the_one_pyproject_pins():
    pin = re.search(r'"ray\[tune\]>=([\d.]+),<([\d.]+)"', (ROOT / "pyproject.toml").read_text())
    assert pin, "pyproject.toml no longer pins ray[tune]>=X,<Y"
    low, high = pin.groups()
    major, minor = internals.TESTED_RAY_SERIES.split(".")
    assert (low, high) == (f"{major}.{minor}", f"{major}.{int(minor) + 1}")
    assert all(v.startswith(internals.TESTED_RAY_SERIES + ".") for v in internals.TESTED_RAY_VERSIONS)


def test_the_installed_ray_is_one_the_internals_were_tested_with():
    assert ray.__version__ in internals.TESTED_RAY_VERSIONS, (
        f"Ray {ray.__version__} is installed: run this file against it and add it to "
        f"TESTED_RAY_VERSIONS once every test here passes")


@pytest.mark.parametrize("owner, name", [
    (PopulationBasedTraining, "_exploit"),
    (PopulationBasedTraining, "_get_new_config"),
])
def test_a_missing_internal_is_named_when_the_module_checks_them(monkeypatch, owner, name):
    monkeypatch.delattr(owner, name)
    with pytest.raises(ConfigError, match=re.escape(name)):
        internals.check_internals()


def test_a_missing_module_level_internal_is_named(monkeypatch):
    from ray.tune.trainable import metadata

    monkeypatch.delattr(metadata, "_TrainingRunMetadata")
    with pytest.raises(ConfigError, match="_TrainingRunMetadata.*install ray\\[tune\\]==2.60"):
        internals.check_internals()


# -- ASHA's rungs


def _asha() -> AsyncHyperBandScheduler:
    return AsyncHyperBandScheduler(time_attr="training_iteration", metric="score", mode="max",
                                   max_t=4, grace_period=1, reduction_factor=2)


def test_asha_rungs_hold_the_scores_asha_recorded_per_milestone():
    asha, trial = _asha(), _trial("a")
    asha.on_trial_add(None, trial)
    asha.on_trial_result(None, trial, {"training_iteration": 1, "score": 0.7})
    assert internals.asha_time_attr(asha) == "training_iteration"
    bracket = internals.asha_bracket_of(asha, "a")
    assert bracket in internals.asha_brackets(asha)
    assert dict(internals.asha_rungs(bracket))[1] == {"a": 0.7}
    assert internals.asha_bracket_of(asha, "unknown") is None


def test_a_rung_score_written_back_decides_asha_stopping_a_weak_trial():
    asha = _asha()
    bracket = internals.asha_brackets(asha)[0]
    internals.set_asha_bracket_of(asha, "strong", bracket)
    internals.set_asha_rung_score(bracket, 1, "strong", 0.9)
    weak = _trial("weak")
    asha.on_trial_add(None, weak)
    assert internals.asha_bracket_of(asha, "weak") is bracket  # one bracket: the same object
    action = asha.on_trial_result(None, weak, {"training_iteration": 1, "score": 0.1})
    assert action == TrialScheduler.STOP  # only because of the written score


def test_a_rung_that_does_not_exist_is_refused():
    bracket = internals.asha_brackets(_asha())[0]
    with pytest.raises(KeyError, match="milestone 3"):
        internals.set_asha_rung_score(bracket, 3, "a", 0.5)


# -- PBT's exploit step


class _Hooked(internals.PBTHooks, PopulationBasedTraining):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.calls = []

    def explored(self, config, operations):
        self.calls.append(("explored", dict(config), dict(operations)))
        config["lr"] = 0.5  # what the subclass returns is what the trial gets
        return config, operations

    def exploited(self, trial, donor, *, before, own_result, donor_result):
        self.calls.append(("exploited", trial.trial_id, donor.trial_id, before, own_result, donor_result))


def test_pbts_private_exploit_steps_have_the_signatures_the_hooks_call():
    exploit = inspect.signature(PopulationBasedTraining._exploit).parameters
    assert list(exploit) == ["self", "tune_controller", "trial", "trial_to_clone"]
    assert list(inspect.signature(PopulationBasedTraining._get_new_config).parameters) == [
        "self", "trial", "trial_to_clone"]


def test_an_exploit_goes_through_both_hooks_with_pbts_last_results():
    pbt = _Hooked(time_attr="training_iteration", metric="score", mode="max",
                  perturbation_interval=1, log_config=False, hyperparam_mutations={"lr": [0.1, 0.2, 0.3]})
    weak, strong = _trial("weak", {"lr": 0.1}), _trial("strong", {"lr": 0.3})
    paused = []
    controller = SimpleNamespace(search_alg=None,
                                 pause_trial=lambda trial, should_checkpoint: paused.append(trial))
    for trial, score in ((weak, 0.1), (strong, 0.9)):
        trial.set_status(Trial.RUNNING)
        pbt.on_trial_add(controller, trial)
        # what PBT does with a result at a perturbation point, before it decides to exploit
        result = {"training_iteration": 1, "score": score, "epoch": 1}
        pbt._save_trial_state(pbt._trial_state[trial], 1, result, trial)
    assert pbt._trial_state[weak].last_result["score"] == 0.1  # what exploited() is handed
    pbt._exploit(controller, weak, strong)
    assert paused == [weak]
    explored = [c for c in pbt.calls if c[0] == "explored"]
    assert len(explored) == 1 and "lr" in explored[0][2]  # Ray names how it changed lr
    exploited = [c for c in pbt.calls if c[0] == "exploited"]
    assert exploited == [("exploited", "weak", "strong", {"lr": 0.1},
                          {"training_iteration": 1, "score": 0.1, "epoch": 1},
                          {"training_iteration": 1, "score": 0.9, "epoch": 1})]
    assert weak.config == {"lr": 0.5}  # the config explored() returned


# -- OptunaSearch's study


def test_optuna_search_exposes_its_study_trials_and_metric_as_the_helpers_read_them():
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    def space(trial):
        trial.suggest_float("x", 0.0, 1.0)

    searcher = OptunaSearch(space=space, metric=["a", "b"], mode=["max", "min"], seed=0)
    assert internals.searcher_metric(searcher) == ["a", "b"]
    assert internals.searcher_mode(searcher) == ["max", "min"]
    config = searcher.suggest("t1")
    asked = internals.optuna_trials(searcher)
    assert asked["t1"].params == config  # the live Optuna trial Ray asked for t1
    study = internals.optuna_study(searcher)
    assert isinstance(study, optuna.Study)
    searcher.on_trial_complete("t1", {"a": 1.0, "b": 2.0})
    assert "t1" in internals.completed_trial_ids(searcher)
    assert study.trials[0].values == [1.0, 2.0]


# -- Ray's saved experiment state


def test_the_checkpoint_a_trial_records_is_read_from_rays_own_saved_json(tmp_path):
    """The trial's JSON state as Ray's TuneController writes it into experiment_state-*.json
    (``Trial.get_json_state``), read back through ``tuning.sweep.pruning.saved_trials``."""
    from ray.train._internal.session import _TrainingResult

    from tuning.sweep.pruning import saved_trials

    folder = tmp_path / "trainable_T1" / "checkpoint_000001"
    folder.mkdir(parents=True)
    trial = _trial("T1")
    trial.set_status(Trial.TERMINATED)
    assert internals.saved_checkpoint_path(_trial("T0").get_json_state()[1]) is None  # none yet
    trial.run_metadata.checkpoint_manager.register_checkpoint(
        _TrainingResult(checkpoint=Checkpoint.from_directory(str(folder)), metrics={}))
    state_json, metadata_json = trial.get_json_state()
    assert internals.saved_checkpoint_path(metadata_json) == str(folder)
    (tmp_path / "experiment_state-2026-01-01_00-00-00.json").write_text(
        json.dumps({"trial_data": [[state_json, metadata_json]]}))
    saved = saved_trials(tmp_path)
    assert saved["T1"].status == "TERMINATED" and saved["T1"].checkpoint == str(folder)


def test_trainable_restore_is_handed_a_result_whose_checkpoint_has_the_folder(tmp_path):
    """``trainables.entry.restored_checkpoint_path`` duck-types Ray's private ``_TrainingResult``."""
    from ray.train._internal.session import _TrainingResult
    from ray.tune.trainable import Trainable

    from trainables.entry import restored_checkpoint_path

    assert "_TrainingResult" in str(inspect.signature(Trainable.restore).parameters["checkpoint_path"])
    result = _TrainingResult(checkpoint=Checkpoint.from_directory(str(tmp_path)), metrics={})
    assert restored_checkpoint_path(result) == str(tmp_path)
    assert restored_checkpoint_path(Checkpoint.from_directory(str(tmp_path))) == str(tmp_path)
    assert restored_checkpoint_path(str(tmp_path)) is None


# -- the cluster


def test_single_node_mode_is_the_constant_ray_reads_when_it_starts_its_servers():
    from ray._private import ray_constants, services

    # services reads the module attribute at call time, so setting it before ray.init counts
    assert "ray_constants.ENABLE_RAY_CLUSTER" in inspect.getsource(services)
    before = ray_constants.ENABLE_RAY_CLUSTER
    try:
        internals.set_multi_node(False)
        assert ray_constants.ENABLE_RAY_CLUSTER is False
        internals.set_multi_node(True)
        assert ray_constants.ENABLE_RAY_CLUSTER is True
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before


@pytest.mark.slow
def test_a_local_ray_publishes_no_autoscaler_ceiling(ray_local):
    assert internals.autoscaler_max_resources() == {}


def test_the_autoscaler_ceiling_is_a_method_of_rays_global_state_taking_no_arguments():
    from ray._private.state import state

    assert list(inspect.signature(state.get_max_resources_from_cluster_config).parameters) == []


# -- no other module reaches Ray's private API

SCANNED = ("tuning", "trainables", "search_spaces")
INTERNALS_MODULE = ROOT / "tuning" / "sweep" / "ray_internals.py"


@functools.lru_cache(maxsize=1)
def _ray_private_names() -> frozenset[str]:
    """Private attribute names of the Ray classes whose objects reach tunebert's code: their class
    attributes and the ``self._x`` they set."""
    from ray.train._internal.checkpoint_manager import _CheckpointManager
    from ray.tune import Callback, Stopper, Tuner
    from ray.tune.schedulers.async_hyperband import _Bracket
    from ray.tune.schedulers.pbt import _PBTTrialState
    from ray.tune.trainable.metadata import _TrainingRunMetadata
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.schedulers.pb2 import PB2
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.basic_variant import BasicVariantGenerator
    from ray.tune.search.optuna import OptunaSearch
    from ray.tune.trainable import Trainable

    names: set[str] = set()
    for cls in (AsyncHyperBandScheduler, PopulationBasedTraining, PB2, OptunaSearch, Trial, Callback,
                Stopper, Tuner, TuneController, Trainable, ConcurrencyLimiter, BasicVariantGenerator,
                Checkpoint, _Bracket, _PBTTrialState, _TrainingRunMetadata, _CheckpointManager):
        for klass in cls.__mro__:
            if not klass.__module__.startswith("ray."):
                continue
            names.update(n for n in vars(klass) if n.startswith("_") and not n.startswith("__"))
            try:
                names.update(re.findall(r"self\.(_[a-z]\w*)\s*(?::[^=\n]+)?=", inspect.getsource(klass)))
            except (OSError, TypeError):
                pass
    return frozenset(names)


def _own_attributes(tree: ast.AST) -> set[str]:
    """``_x`` names a module assigns as ``self._x = ...``: its own state, even where a Ray class
    happens to use the same name."""
    own = set()
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else \
            [node.target] if isinstance(node, ast.AnnAssign) else []
        own.update(t.attr for t in targets if isinstance(t, ast.Attribute)
                   and isinstance(t.value, ast.Name) and t.value.id == "self")
    return own


def _uses_of_ray_private_api(tree: ast.AST, private: frozenset[str]) -> list[str]:
    """Imports of Ray's private modules or names, and ``x._name`` / methods ``def _name`` where
    ``_name`` is private to a Ray class (a module's own ``self._x`` state excepted)."""
    found, own = [], _own_attributes(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] == "ray"
                      and any(part.startswith("_") for part in a.name.split("."))]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "ray":
            parts = node.module.split(".")
            if any(part.startswith("_") for part in parts):
                found.append(f"import from {node.module}")
            found += [f"{node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
        elif isinstance(node, ast.Attribute) and node.attr in private:
            on_self = isinstance(node.value, ast.Name) and node.value.id == "self"
            if not (on_self and node.attr in own):
                found.append(f".{node.attr} (line {node.lineno})")
        elif isinstance(node, ast.ClassDef):
            found += [f"def {item.name} (line {item.lineno}): overrides a private Ray method"
                      for item in node.body if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))
                      and item.name in private]
    return found


def test_no_module_but_ray_internals_names_a_private_ray_api():
    private = _ray_private_names()
    assert {"_exploit", "_rungs", "_trial_info", "_ot_trials"} <= private  # the scan sees Ray's
    offenders = {}
    for package in SCANNED:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == INTERNALS_MODULE:
                continue
            uses = _uses_of_ray_private_api(ast.parse(path.read_text(), str(path)), private)
            if uses:
                offenders[str(path.relative_to(ROOT))] = uses
    assert not offenders, (f"Ray's private API is reached outside tuning/sweep/ray_internals.py: {offenders}. "
                           f"Add a named function there (checked at import, tested here) and call it.")


@pytest.mark.parametrize("source, expected", [
    ("from ray._private import ray_constants", "import from ray._private"),
    ("import ray._private.state", "ray._private.state"),
    ("from ray.tune.trainable.metadata import _TrainingRunMetadata", "_TrainingRunMetadata"),
    ("def f(s):\n    return s._rungs", "._rungs"),
    ("class P:\n    def _exploit(self, c, t, d):\n        pass", "def _exploit"),
])
def test_the_scan_catches_each_kind_of_private_use(source, expected):
    uses = _uses_of_ray_private_api(ast.parse(source), _ray_private_names())
    assert any(expected in use for use in uses), uses


def test_the_scan_leaves_a_modules_own_private_names_alone():
    source = ("def _wrapped():\n    pass\n"  # a module function named like a Ray method
              "class A:\n    def __init__(self):\n        self._deadline = None\n"
              "    def stop(self):\n        return self._deadline")  # own state named like Ray's
    private = _ray_private_names()
    assert {"_wrapped", "_deadline"} <= private  # the names do collide with Ray's
    assert _uses_of_ray_private_api(ast.parse(source), private) == []


def test_a_trial_finds_the_sweeps_state_through_rays_public_can_restore(tmp_path):
    """``trainables.entry.check_storage_visible`` asks ``Tuner.can_restore`` (public) instead of
    naming Ray's state file; the folder is visible exactly when the driver's state is in it."""
    from trainables.entry import check_storage_visible

    with pytest.raises(ConfigError, match="is not shared with Ray node n1"):
        check_storage_visible(tmp_path, "n1")
    (tmp_path / "tuner.pkl").write_bytes(b"")  # what Tuner.fit writes before any trial starts
    check_storage_visible(tmp_path, "n1")
