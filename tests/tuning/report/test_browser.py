"""A finished sweep as a person sees it: the MLflow UI that `tunebert ui` opens, and the page
`tunebert report` writes, rendered by headless Chromium (screenshots, and the rendered DOM checked).

The finished tiny sweep is recorded by the product's own tracking code, without Ray or training:
``tracking.start_sweep_run``, then ``tracking.MlflowTrialLogger`` fed the Ray Tune hook calls a
sweep makes (trial start, one result per epoch, complete or error) for four stand-in trials, then
``tracking.finish_sweep_run`` with the best trial ``tuning.tracking.best`` picks. What reaches MLflow is what
a real sweep writes; ``tests/tuning/report/test_report.py`` covers a sweep that Ray really ran. The report
and the UI are the real commands (``python -m tuning.cli report`` and ``... ui``), run as a user
runs them. No trial has a checkpoint, so the report has no confusion matrix (it says why).

Chromium is Debian's ``chromium`` (``.ci/run`` installs it); without it these tests are skipped.
Screenshots go to each test's tmp_path; their paths are printed (``pytest -s`` shows them).
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Optional

import pytest

from tuning.tracking.ui import answers

REPO = Path(__file__).resolve().parents[3]
CHROMIUM = shutil.which("chromium")
SERVER_WAIT_S = 600  # a cold `mlflow server` on a loaded CI machine (as in test_ui.py)
COMMAND_TIMEOUT_S = 600  # `tunebert report` imports matplotlib, optuna and mlflow
CHROMIUM_TIMEOUT_S = 240  # one headless Chromium run, page load and rendering included
# Virtual time a page gets to run its scripts before Chromium dumps or shoots it; MLflow's React
# app needs a few seconds of it. A page that is not ready yet is loaded again with more.
BUDGETS_MS = (25_000, 60_000)
UI_WINDOW = (1440, 900)
REPORT_WINDOW = (1280, 4400)  # tall enough for the summary, the best trial and the figures

SWEEP = "browsed"
# (trial id as Ray names them, lr, weight_decay, val_accuracy per epoch; None: fails in epoch 1)
TRIALS = [("a1b2c_00000", 1e-4, 0.05, (0.41, 0.62)),
          ("a1b2c_00001", 3e-4, 0.01, (0.55, 0.71)),
          ("a1b2c_00002", 1e-3, 0.10, (0.58, 0.48)),
          ("a1b2c_00003", 5e-5, 0.00, None)]
BEST = "a1b2c_00001"
RANKED = ["a1b2c_00001", "a1b2c_00000", "a1b2c_00002", "a1b2c_00003"]  # best first; failed last
FIGURES_WITHOUT_CHECKPOINT = {"history", "importance", "parallel", "curves"}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (`chromium` not on PATH; "
                                                "Debian: apt-get install chromium, as .ci/run does)"),
]


# --------------------------------------------------------------------------- a finished sweep


def _record_sweep(storage: Path) -> dict:
    """Record sweep SWEEP in ``<storage>/mlflow.db`` as a finished sweep of TRIALS (see the
    module docstring). Returns the MLflow ids a test checks the pages against."""
    from tuning import tracking
    from tuning.tracking.best import top_k
    from trainables import registry

    uri = f"sqlite:///{storage / 'mlflow.db'}"
    settings = {"name": SWEEP, "metric": "val_accuracy", "mode": "max", "epochs": 2,
                "num_trials": len(TRIALS)}
    experiment_id, parent_id = tracking.start_sweep_run(
        uri, SWEEP, settings, (storage / "mlartifacts" / SWEEP).as_uri())
    logger = tracking.MlflowTrialLogger(uri, experiment_id, parent_id, registry.resolve_config, SWEEP)
    logger.setup()
    for trial_id, lr, weight_decay, accuracies in TRIALS:
        trial = SimpleNamespace(trial_id=trial_id, status="RUNNING", last_result={}, error_file=None,
                                config={"trainable": "finetune", "lr": lr,
                                        "weight_decay": weight_decay, "epochs": 2})
        logger.on_trial_start(0, [], trial)
        if accuracies is None:
            error = storage / f"error-{trial_id}.txt"
            error.write_text("Traceback (most recent call last):\n  ...\n"
                             "NonFiniteLossError: the training loss became nan in epoch 1\n")
            trial.status, trial.error_file = "ERROR", str(error)
            logger.on_trial_error(0, [], trial)
            continue
        for epoch, accuracy in enumerate(accuracies, start=1):
            best = max(accuracies[:epoch])
            result = {"epoch": epoch, "training_iteration": epoch, "trial_id": trial_id,
                      "train_loss": 2.6 - 2.2 * accuracy, "val_accuracy": accuracy,
                      "val_loss": 2.5 - 2 * accuracy, "best_val_accuracy": best,
                      "best_val_loss": 2.5 - 2 * best}
            trial.last_result = result
            logger.on_trial_result(0, [], trial, result)
        trial.status = "TERMINATED"
        logger.on_trial_complete(0, [], trial)
    assert logger.flush_until(120) == 0, "the MLflow writes of the stand-in trials were not delivered"
    logger.stop()
    (best,) = top_k(SWEEP, 1, tracking_uri=uri)
    tracking.finish_sweep_run(uri, parent_id, status="FINISHED", best_checkpoint=None, summary={
        "best_val_accuracy": best.score("val_accuracy"), "trials_finished": 3, "trials_failed": 1,
        "trials_killed": 0, "wall_time_s": 42.0, "best_trial_id": best.trial_id})
    runs = {run.data.tags[tracking.TRIAL_ID]: run for run in tracking.trial_runs(uri, SWEEP)}
    return {"uri": uri, "experiment_id": experiment_id, "parent_id": parent_id, "best": best,
            "run_ids": {trial_id: run.info.run_id for trial_id, run in runs.items()},
            "run_names": {trial_id: run.info.run_name for trial_id, run in runs.items()}}


def _env() -> dict:
    """The environment without MLFLOW_TRACKING_URI: the store comes from --storage."""
    return {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}


def _children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (Linux lists them per thread; the main one spawns)."""
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:  # it has exited
        return []



def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class TunebertUi:
    """``tunebert ui --storage ... --name SWEEP`` running in a session of its own; ``links`` are
    the two URLs it prints (the sweep's runs table, then its trials ranked)."""

    def __init__(self, storage: Path):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tuning.cli", "ui", "--storage", str(storage), "--name", SWEEP,
             "--start-timeout", str(SERVER_WAIT_S)],
            cwd=REPO, env=_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.lines: list[str] = []
        self.server_pids: list[int] = []  # the mlflow server: a child in a session of its own
        threading.Thread(target=lambda: self.lines.extend(iter(self.proc.stdout.readline, "")),
                         daemon=True).start()

    def wait_for_links(self) -> list[str]:
        deadline = time.time() + SERVER_WAIT_S + 120
        while not any("Ctrl-C stops" in line for line in self.lines):
            if self.proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"`tunebert ui` did not start the MLflow UI:\n{''.join(self.lines)}")
            time.sleep(0.5)
        self.server_pids = _children(self.proc.pid)
        links = [line.strip() for line in self.lines if line.startswith("  http://127.0.0.1:")]
        assert len(links) == 2, self.lines
        base = links[0].split("/#/")[0]
        deadline = time.time() + 120  # it answered /health; the page itself, before a browser
        while not answers(f"{base}/"):
            assert time.time() < deadline, f"the MLflow UI at {base} does not serve its page"
            time.sleep(1)
        return links

    def stop(self) -> None:
        """Ctrl-C, as a user stops it; then make sure nothing of it is left."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                pass
        _kill_group(self.proc.pid)
        self.proc.wait()
        for pid in self.server_pids:
            _kill_group(pid)


@pytest.fixture(scope="module")
def browsed_sweep(tmp_path_factory):
    """The recorded sweep, its report (``tunebert report``) and ``tunebert ui`` serving it."""
    storage = tmp_path_factory.mktemp("browsed")
    record = _record_sweep(storage)
    done = subprocess.run([sys.executable, "-m", "tuning.cli", "report", SWEEP, "--storage", str(storage)],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    assert done.returncode == 0, done.stdout + done.stderr
    ui = TunebertUi(storage)
    try:
        sweep_link, trials_link = ui.wait_for_links()
        yield SimpleNamespace(**record, storage=storage, report=storage / "reports" / SWEEP,
                              sweep_link=sweep_link, trials_link=trials_link,
                              base=sweep_link.split("/#/")[0])
    finally:
        ui.stop()


# --------------------------------------------------------------------------- the browser


class RenderedPage(HTMLParser):
    """What a test reads in a rendered DOM: every element's attributes, each link's text, the
    images inside links, and the page's text (whitespace collapsed)."""

    def __init__(self, dom: str):
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict]] = []
        self.links: list[list[str]] = []  # [href, text]
        self.images: list[dict] = []  # an <img>'s attributes, plus "link": the href around it
        self._link: Optional[list[str]] = None
        self._skip = 0  # inside <style> or <script>
        self._text: list[str] = []
        self.budget_ms = 0  # the virtual time it was rendered with (set by `rendered`)
        self.feed(dom)
        self.close()
        self.text = " ".join(" ".join(self._text).split())

    def handle_starttag(self, tag, attrs):
        attrs = {k: v or "" for k, v in attrs}
        self.elements.append((tag, attrs))
        if tag == "a":
            self._link = [attrs.get("href", ""), ""]
            self.links.append(self._link)
        elif tag == "img":
            self.images.append({**attrs, "link": self._link[0] if self._link else None})
        elif tag in ("style", "script"):
            self._skip += 1

    def handle_endtag(self, tag):
        if tag == "a":
            self._link = None
        elif tag in ("style", "script"):
            self._skip = max(0, self._skip - 1)

    def handle_data(self, data):
        if self._skip:
            return
        self._text.append(data)
        if self._link is not None:
            self._link[1] += data

    def link_text(self, href: str) -> list[str]:
        return [" ".join(text.split()) for link, text in self.links if link == href]


def _chromium(url: str, profile: Path, window: tuple[int, int], budget_ms: int,
              *action: str) -> subprocess.CompletedProcess:
    """One headless Chromium run in a process group of its own (killed whole at the end), with
    its own profile (nothing remembered from an earlier page, such as a table's sort order)."""
    proc = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--user-data-dir={profile}", f"--window-size={window[0]},{window[1]}",
         f"--virtual-time-budget={budget_ms}", *action, url],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    try:
        out, err = proc.communicate(timeout=CHROMIUM_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        proc.communicate()
        pytest.fail(f"headless Chromium did not finish {url} within {CHROMIUM_TIMEOUT_S}s")
    finally:
        _kill_group(proc.pid)  # its renderer and helper processes, should any outlive it
    assert proc.returncode == 0, f"chromium {action} {url} exited {proc.returncode}:\n{err[-3000:]}"
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def rendered(url: str, tmp_path: Path, ready: Callable[[RenderedPage], bool],
             window: tuple[int, int] = UI_WINDOW) -> RenderedPage:
    """The DOM of ``url`` once its scripts ran (``--dump-dom``): loaded again with a larger
    virtual-time budget while ``ready`` says it is not there yet; the last one otherwise."""
    for budget in BUDGETS_MS:
        page = RenderedPage(_chromium(url, tmp_path / f"profile-dom-{time.monotonic_ns()}", window,
                                      budget, "--dump-dom").stdout)
        page.budget_ms = budget
        if ready(page):
            break
    return page


def screenshot(url: str, path: Path, page: RenderedPage, window: tuple[int, int] = UI_WINDOW) -> Path:
    """A PNG of ``url`` as Chromium draws it with the virtual time ``page`` (its rendered DOM)
    needed, checked to be a picture of something."""
    from PIL import Image

    _chromium(url, path.parent / f"profile-{path.stem}", window, page.budget_ms,
              f"--screenshot={path}")
    print(f"screenshot: {path}")
    with Image.open(path) as image:
        assert image.size == window, (path, image.size)
        colors = image.convert("RGB").getcolors(maxcolors=256)  # None: more than 256
        low, high = image.convert("L").getextrema()
    assert (colors is None or len(colors) > 50) and high - low > 150, f"{path} looks blank: {colors}"
    return path


# --------------------------------------------------------------------------- the MLflow UI


def _ranked_rows(page: RenderedPage) -> list[str]:
    """Run ids of the runs table's rows, in the order the table shows them (ag-grid draws rows
    positioned absolutely, so the DOM's order is not the table's; row-index is)."""
    rows = {attrs["row-id"]: int(attrs["row-index"]) for tag, attrs in page.elements
            if attrs.get("role") == "row" and "row-id" in attrs and "row-index" in attrs}
    return sorted(rows, key=rows.get)


def test_the_mlflow_ui_shows_the_sweep_and_its_trials(browsed_sweep, tmp_path):
    """The two links `tunebert ui` prints, opened in Chromium. MLflow keeps a parent row's
    expansion in the browser, not in the address, so the first link shows the sweep's run (with
    the count of its runs, trials included) and the second is where the trials are listed."""
    sweep = browsed_sweep
    runs_page = f"#/experiments/{sweep.experiment_id}/runs/"

    sweep_page = rendered(sweep.sweep_link, tmp_path, lambda p: "matching runs" in p.text)
    assert sweep_page.link_text(runs_page + sweep.parent_id) == [SWEEP], sweep_page.text[:3000]
    assert re.search(rf"(?<!\d){1 + len(TRIALS)} matching runs", sweep_page.text), sweep_page.text[:3000]
    assert _ranked_rows(sweep_page) == [sweep.parent_id]  # one row: the sweep, trials folded in
    screenshot(sweep.sweep_link, tmp_path / "mlflow-ui-sweep.png", sweep_page)

    names = [sweep.run_names[trial_id] for trial_id in RANKED]
    trials_page = rendered(sweep.trials_link, tmp_path, lambda p: all(n in p.text for n in names))
    for trial_id in RANKED:  # each trial's row, with its run's name as the link to the run
        assert trials_page.link_text(runs_page + sweep.run_ids[trial_id]) == [f"finetune-{trial_id}"]
    assert re.search(rf"(?<!\d){len(TRIALS)} matching runs", trials_page.text)
    assert _ranked_rows(trials_page) == [sweep.run_ids[t] for t in RANKED]  # best first
    assert sweep.parent_id not in _ranked_rows(trials_page)
    screenshot(sweep.trials_link, tmp_path / "mlflow-ui-trials.png", trials_page)


# --------------------------------------------------------------------------- the report


def test_the_report_shows_its_figures_and_the_best_trial(browsed_sweep, tmp_path):
    """report.html opened from disk (as `tunebert report` prints it), then from the sweep run's
    description in the MLflow UI, where `tunebert report` links it."""
    sweep = browsed_sweep
    page_url = (sweep.report / "report.html").as_uri()
    report = rendered(page_url, tmp_path, lambda p: bool(p.images), REPORT_WINDOW)

    figures = {image["link"]: image for image in report.images}
    assert len(figures) == len(report.images) == len(FIGURES_WITHOUT_CHECKPOINT), report.images
    assert set(figures) == {f"{key}.png" for key in FIGURES_WITHOUT_CHECKPOINT}
    for name, image in figures.items():
        png = sweep.report / name  # the link beside each picture, relative to the page
        assert png.is_file() and png.stat().st_size > 15_000, (name, png.stat().st_size)
        prefix = "data:image/png;base64,"
        assert image["src"].startswith(prefix) and image["alt"], image.keys()
        assert base64.b64decode(image["src"][len(prefix):]) == png.read_bytes(), name
    assert f"Best trial: {BEST}" in report.text
    best_score = f"{sweep.best.score('val_accuracy'):.4f}"
    assert f"best val_accuracy {best_score}" in report.text, report.text[:2000]  # the summary
    assert f"best trial {BEST}" in report.text
    assert f"MLflow run {sweep.run_ids[BEST]}" in report.text
    assert "NonFiniteLossError" in report.text  # the failed trial, with its error
    assert "Confusion matrix" in report.text and "Skipped" in report.text  # no checkpoint: says so
    screenshot(page_url, tmp_path / "report.png", report, REPORT_WINDOW)

    # the sweep run's description links the report, logged as an artifact of the run
    from tuning import tracking

    note = tracking.client_for(sweep.uri).get_run(sweep.parent_id).data.tags[tracking.NOTE]
    link = re.search(r"\]\((#/experiments/[^)]+)\)", note.split(tracking.REPORT_LINK)[1]).group(1)
    in_mlflow = f"{sweep.base}/{link}"
    artifact_page = rendered(in_mlflow, tmp_path,
                             lambda p: any(a.get("class") == "mlflow-html-iframe" for _, a in p.elements))
    assert "report/report.html" in artifact_page.text
    assert any(tag == "iframe" and attrs.get("class") == "mlflow-html-iframe"
               for tag, attrs in artifact_page.elements), artifact_page.text[:2000]
    screenshot(in_mlflow, tmp_path / "report-in-mlflow.png", artifact_page)
