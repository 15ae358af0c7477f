"""k. Scale (issue 24): data bigger than memory, budgets in steps, trials over several workers.

On a corpus built from MASSIVE's train split (``tuning.bench.corpus``; honest for memory and speed,
not for accuracy) at each size of ``--scale-sizes`` (GiB of JSON Lines; the smaller corpora are the
first shards of the largest, linked):
- tokenization into the token cache, the first time and the second (from the cache), each in a
  process of its own (``python -m tuning.bench.scale tokenize``), timed inside it;
- a one-trial sweep with step budgets (``--eval-every``, two rounds) reading that cache, its
  processes' memory sampled from ``/proc`` five times a second: the driver's and the trial's
  peak resident set (all of it, and its anonymous part: the memory the process owns; the rest
  is pages of mapped files, which the kernel can drop);

then, once:
- training throughput on MASSIVE itself, the same config trained in memory and through the cache,
  in ABBA order (neither path always first), in this process;
- a two-trial ASHA sweep with step budgets on the largest corpus, the whole sweep (driver, Ray
  and trials) in a cgroup whose memory limit lies below the corpus's size;
- one trial on two Ray Train CPU workers against one, same global batch, dropout off, through the
  cache: its loss per round and its time.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

import torch

from trainables import task_data
from trainables.data import DataConfig
from trainables.finetune import fit
from trainables.hparams import FinetuneConfig
from trainables.models import load_tokenizer
from tuning.bench.common import BenchReport, say
from tuning.bench.corpus import build_corpus

GIB = 2**30
SHARD_BYTES = 64 * 2**20
ROUND_STEPS, ROUNDS = 20, 2  # each memory sweep's trial: two rounds of 20 steps
CAP_FRACTION = 0.9  # the capped sweep's memory limit (driver, Ray and trials together), a share of its corpus's size
SAMPLE_S = 0.2
REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- memory of a process tree


def _status(pid: int) -> Optional[dict]:
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
        title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in lines if ":" in line)

    def kib(name: str) -> int:
        return int(fields[name].split()[0]) * 1024 if name in fields else 0

    return {"ppid": int(fields.get("PPid", "0").split()[0] or 0), "title": title.strip()[:120],
            "rss": kib("VmRSS"), "anon": kib("RssAnon")}


class TreeSampler(threading.Thread):
    """Peak resident memory (all, and anonymous) of every process under ``root``, by /proc."""

    def __init__(self, root: int) -> None:
        super().__init__(daemon=True)
        self.root, self.peaks, self._halt = root, {}, threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            procs = {}
            for entry in os.listdir("/proc"):
                if entry.isdigit() and (status := _status(int(entry))) is not None:
                    procs[int(entry)] = status
            tree, grew = {self.root}, True
            while grew:
                grew = False
                for pid, status in procs.items():
                    if pid not in tree and status["ppid"] in tree:
                        tree.add(pid)
                        grew = True
            for pid in tree & procs.keys():
                now, peak = procs[pid], self.peaks.setdefault(pid, {"title": procs[pid]["title"], "rss": 0, "anon": 0})
                peak["title"] = now["title"] or peak["title"]
                peak["rss"], peak["anon"] = max(peak["rss"], now["rss"]), max(peak["anon"], now["anon"])
            self._halt.wait(SAMPLE_S)

    def stop(self) -> dict:
        self._halt.set()
        self.join()
        return self.peaks


def _is_trial(title: str) -> bool:
    """A Tune trial's process (Ray titles a function trainable's actor ``ray::ImplicitFunc``)."""
    return title.startswith("ray::ImplicitFunc")


def measured(cmd: list[str], *, env: Optional[dict] = None, preexec=None, timeout: float = 3600) -> dict:
    """Run ``cmd``; its wall time, exit code, output tail and the peaks of its driver (the process
    itself) and of its largest trial process (``_is_trial``), in MiB."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                            env={**os.environ, **(env or {})}, preexec_fn=preexec)
    sampler = TreeSampler(proc.pid)
    sampler.start()
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
    peaks = sampler.stop()
    trials = [p for p in peaks.values() if _is_trial(p["title"])]
    driver = peaks.get(proc.pid, {"rss": 0, "anon": 0})

    def mib(p: Optional[dict]) -> Optional[dict]:
        return None if p is None else {"rss_mib": round(p["rss"] / 2**20, 1), "anon_mib": round(p["anon"] / 2**20, 1)}

    return {"seconds": round(time.perf_counter() - start, 2), "rc": proc.returncode, "tail": output[-3000:],
            "driver": mib(driver), "trial": mib(max(trials, key=lambda p: p["rss"]) if trials else None),
            "processes": sorted(({"title": p["title"], "driver": pid == proc.pid, **mib(p)}
                                 for pid, p in peaks.items()), key=lambda p: -p["rss_mib"])[:12]}


# --------------------------------------------------------------------------- a cgroup memory limit


class MemoryCap:
    """A memory cgroup (v1 or v2) under this process's own, limited to ``limit`` bytes; a process
    started with ``preexec`` joins it (its children with it). ``None`` from ``make`` where no
    cgroup can be written (then the capped sweep is reported as not run)."""

    def __init__(self, path: Path, v2: bool, limit: int) -> None:
        self.path, self.v2, self.limit = path, v2, limit

    @classmethod
    def make(cls, limit: int) -> tuple[Optional["MemoryCap"], str]:
        try:
            lines = Path("/proc/self/cgroup").read_text().splitlines()
            v1 = next((l.split(":", 2)[2] for l in lines if l.split(":")[1] == "memory"), None)
            if v1 is not None and Path("/sys/fs/cgroup/memory").is_dir():
                path, v2 = Path("/sys/fs/cgroup/memory") / v1.lstrip("/") / f"tunebert-cap-{os.getpid()}", False
            else:
                own = next(l.split(":", 2)[2] for l in lines if l.startswith("0::"))
                path, v2 = Path("/sys/fs/cgroup") / own.lstrip("/") / f"tunebert-cap-{os.getpid()}", True
            path.mkdir()
            (path / ("memory.max" if v2 else "memory.limit_in_bytes")).write_text(str(limit))
            if v2:
                (path / "memory.swap.max").write_text("0") if (path / "memory.swap.max").exists() else None
            return cls(path, v2, limit), ""
        except (OSError, StopIteration, IndexError) as exc:
            return None, f"{type(exc).__name__}: {exc}"

    def preexec(self) -> None:
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def figures(self) -> dict:
        def read(name: str) -> str:
            try:
                return (self.path / name).read_text()
            except OSError:
                return ""
        if self.v2:
            events = dict(l.split() for l in read("memory.events").splitlines() if l)
            peak = read("memory.peak").strip()
            return {"limit_mib": self.limit / 2**20, "peak_mib": int(peak) / 2**20 if peak else None,
                    "oom_kills": int(events.get("oom_kill", 0)), "limit_hits": int(events.get("max", 0))}
        control = dict(l.split() for l in read("memory.oom_control").splitlines() if l)
        return {"limit_mib": self.limit / 2**20, "peak_mib": int(read("memory.max_usage_in_bytes") or 0) / 2**20,
                "oom_kills": int(control.get("oom_kill", 0)), "limit_hits": int(read("memory.failcnt") or 0)}

    def remove(self) -> None:
        for _ in range(50):  # Ray's last processes leave a moment after the driver
            pids = [int(p) for p in (self.path / "cgroup.procs").read_text().split() if p.strip()]
            for pid in pids:
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.2)


# --------------------------------------------------------------------------- the corpora and the commands


def corpora(source: str, sizes: list[float], storage: Path) -> dict[float, Path]:
    """A folder per size: the largest corpus, and for the others its first shards, linked."""
    largest = storage / "scale-corpus"
    manifest = build_corpus(source, largest, int(max(sizes) * GIB), shard_bytes=SHARD_BYTES, say=say)
    folders = {}
    for size in sizes:
        folder = storage / f"scale-{size:g}g"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for name in manifest["files"][:max(1, math.ceil(size * GIB / SHARD_BYTES))] + ["validation.jsonl", "test.jsonl"]:
            (folder / name).symlink_to(largest / name)
        folders[size] = folder
    return folders


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "tuning.cli", *args]


def tokenize_main(folder: str, cache: str, model: str, max_length: int) -> None:
    """``python -m tuning.bench.scale tokenize FOLDER CACHE MODEL MAX_LENGTH``: load the folder
    through the token cache and print how long that took and how many rows each split has."""
    tokenizer = load_tokenizer(model)
    start = time.perf_counter()
    data, _ = task_data.load_encoded(DataConfig(folder, token_cache=True, cache_dir=cache), "finetune",
                                     tokenizer, model=model, max_length=max_length, say=print)
    print(json.dumps({"seconds": time.perf_counter() - start,
                      "rows": {k: len(v) for k, v in data.splits.items()}}))


def _space(storage: Path, rounds: int, **fixed) -> Path:
    path = storage / f"scale-space-{rounds}.yaml"
    path.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in
                            {"stop_epoch": rounds, "batch_size": 32, **fixed}.items()))
    return path


def _sweep(name: str, folder: Path, cache: Path, storage: Path, model: str, space: Path, *extra: str,
           steps: int) -> list[str]:
    return _cli("sweep", "--name", name, "--storage", str(storage / name), "--data", str(folder),
                "--token-cache", "on", "--cache-dir", str(cache), "--model", model, "--max-length", "64",
                "--epochs", "1", "--eval-every", str(steps), "--space", str(space), *extra)


def _results(storage: Path, name: str) -> list[list[dict]]:
    """Each trial's reports (Ray Tune's result.json), in order."""
    return [[json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            for path in sorted((storage / name).rglob("result.json"))]


# --------------------------------------------------------------------------- the part


def run_part(data_cfg: DataConfig, args, report: BenchReport, storage: Path, out: Path) -> None:
    steps = 1 if args.smoke_test else ROUND_STEPS  # a smoke test's 128 examples make 4 steps
    sizes = sorted(float(s) for s in args.scale_sizes.split(","))
    model = args.model
    folders = corpora(data_cfg.source, sizes, storage)
    rows = []
    for size in sizes:
        cache = storage / f"scale-cache-{size:g}g"
        shutil.rmtree(cache, ignore_errors=True)
        tokenize = [sys.executable, "-m", "tuning.bench.scale", "tokenize", str(folders[size]), str(cache), model, "64"]
        first, second = measured(tokenize), measured(tokenize)
        for which, run in (("first", first), ("second", second)):
            run["inside"] = json.loads(run["tail"].strip().splitlines()[-1]) if run["rc"] == 0 else None
            if run["rc"] != 0:
                say(f"scale: {size:g} GiB: tokenizing ({which} time) exited {run['rc']}:\n{run['tail'][-1500:]}")
        sweep = measured(_sweep(f"scale-{size:g}g", folders[size], cache, storage, model,
                                _space(storage, ROUNDS), "--trials", "1", "--scheduler", "none", steps=steps))
        rows.append({"gib": size, "bytes": sum(f.stat().st_size for f in folders[size].glob("train-*")),
                     "tokenize_first": first, "tokenize_second": second, "sweep": sweep})
        say(f"scale: {size:g} GiB: tokenized in {first['seconds']:.0f} s, again in {second['seconds']:.1f} s; "
            f"sweep rc {sweep['rc']}, driver {sweep['driver']}, trial {sweep['trial']}")
    throughput = _throughput(data_cfg, model, storage, repeats=2 if args.smoke_test else 6)
    capped = _capped(folders[sizes[-1]], storage / f"scale-cache-{sizes[-1]:g}g", storage, model,
                     floor=4 * GIB if args.smoke_test else 0, steps=steps)
    workers = _two_workers(data_cfg, storage, model, steps=steps)
    result = {"sizes": rows, "throughput": throughput, "capped": capped, "two_workers": workers,
              "round_steps": steps}
    (out / "scale.json").write_text(json.dumps(result, indent=2, default=str))
    report.add("k. Scale: data bigger than memory, step budgets, trials over workers", markdown(result))
    report.numbers.update(numbers(result))


def _throughput(data_cfg: DataConfig, model: str, storage: Path, *, repeats: int) -> dict:
    """samples/s of the same trial (same batches: its train loss is reported) on MASSIVE in memory
    and through the cache, in ABBA order (in memory, cache, cache, in memory, ...) so that neither
    path always runs first: the machine's drift over the runs falls on both alike."""
    tokenizer = load_tokenizer(model)
    paths = {"in memory": DataConfig(data_cfg.source, token_cache=False),
             "token cache": DataConfig(data_cfg.source, token_cache=True, cache_dir=str(storage / "scale-cache-massive"))}
    data = {k: task_data.load_encoded(v, "finetune", tokenizer, model=model, max_length=64,
                                      include_test=False)[0] for k, v in paths.items()}
    cfg = FinetuneConfig(model=model, max_length=64, batch_size=32, epochs=1, eval_every="40", stop_epoch=1)
    speeds: dict[str, list[float]] = {k: [] for k in paths}
    losses: dict[str, list[float]] = {k: [] for k in paths}
    names = list(paths)
    for pair in range(repeats):
        for name in (names if pair % 2 == 0 else names[::-1]):
            reports = []
            fit(cfg, data[name], device=torch.device("cpu"), report=lambda m, w: reports.append(m))
            speeds[name].append(reports[-1]["samples_per_s"])
            losses[name].append(reports[-1]["train_loss"])
    medians = {k: statistics.median(v) for k, v in speeds.items()}
    return {"order": "ABBA", "samples_per_s": speeds, "train_loss": losses, "median": medians,
            "ratio": medians["token cache"] / medians["in memory"]}


def _capped(folder: Path, cache: Path, storage: Path, model: str, *, floor: int = 0, steps: int) -> dict:
    """The two-trial sweep in a cgroup limited to ``CAP_FRACTION`` of the corpus's size (at least
    ``floor``: a smoke test's corpus is smaller than Ray alone)."""
    size = sum(f.stat().st_size for f in folder.glob("train-*"))
    cap, why = MemoryCap.make(max(int(size * CAP_FRACTION), floor))
    if cap is None:
        return {"run": False, "why": why, "data_mib": size / 2**20}
    try:
        run = measured(_sweep("scale-capped", folder, cache, storage, model, _space(storage, 3),
                              "--trials", "2", "--scheduler", "asha", "--max-concurrent", "2", steps=steps),
                       preexec=cap.preexec)
        trials = _results(storage, "scale-capped")
        return {"run": True, "data_mib": size / 2**20, **cap.figures(), "rc": run["rc"], "seconds": run["seconds"],
                "rounds_per_trial": [len(t) for t in trials], "driver": run["driver"], "trial": run["trial"],
                "tail": run["tail"][-1500:]}
    finally:
        cap.remove()


def _two_workers(data_cfg: DataConfig, storage: Path, model: str, *, steps: int) -> dict:
    """One trial on 2 Ray Train CPU workers against 1 (same global batch, dropout off): its loss
    per round and wall time. MASSIVE through the token cache."""
    space = _space(storage, 3, classifier_dropout=0.0, hidden_dropout=0.0, attention_dropout=0.0)
    runs = {}
    for workers in (1, 2):
        name = f"scale-workers-{workers}"
        shutil.rmtree(storage / name, ignore_errors=True)
        run = measured(_sweep(name, Path(data_cfg.source), storage / "scale-cache-massive", storage, model,
                              space, "--trials", "1", "--scheduler", "none", "--workers-per-trial", str(workers),
                              steps=steps))
        trials = _results(storage, name)
        runs[workers] = {"rc": run["rc"], "seconds": run["seconds"],
                         "train_loss": [r["train_loss"] for r in trials[0]] if trials else [],
                         "val_loss": [r["val_loss"] for r in trials[0]] if trials else [],
                         "tail": run["tail"][-1500:] if run["rc"] else ""}
    pairs = list(zip(runs[1]["train_loss"] + runs[1]["val_loss"], runs[2]["train_loss"] + runs[2]["val_loss"]))
    return {"runs": runs, "max_abs_diff": max((abs(a - b) for a, b in pairs), default=None)}


# --------------------------------------------------------------------------- the report


def numbers(result: dict) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for row in result["sizes"]:
        key = f"scale_{row['gib']:g}g"
        out[f"{key}_tokenize_first_s"] = (row["tokenize_first"].get("inside") or {}).get("seconds")
        out[f"{key}_tokenize_second_s"] = (row["tokenize_second"].get("inside") or {}).get("seconds")
        for who in ("driver", "trial"):
            out[f"{key}_{who}_rss_mib"] = (row["sweep"].get(who) or {}).get("rss_mib")
    out["scale_throughput_ratio"] = result["throughput"]["ratio"]
    out["scale_capped_completed"] = bool(result["capped"].get("run") and result["capped"].get("rc") == 0)
    out["scale_two_workers_max_abs_diff"] = result["two_workers"]["max_abs_diff"]
    return out


def _worker(run: dict) -> Optional[dict]:
    """The largest process a tokenizing run started (its tokenizing workers), if any."""
    return max((p for p in run["processes"] if not p.get("driver")), key=lambda p: p["rss_mib"], default=None)


def _peak(p: Optional[dict]) -> str:
    return "n/a" if not p else f"{p['rss_mib']:.0f} ({p['anon_mib']:.0f})"


def markdown(result: dict) -> str:
    rows, first = result["sizes"], result["sizes"][0]
    lines = ["Corpus: MASSIVE train repeated with perturbations (honest for memory and speed, not accuracy). "
             "Memory: peak resident MiB (its anonymous part in brackets; the rest are pages of mapped "
             "files), sampled every 0.2 s.", "",
             "| corpus | train rows | tokenize, first (s) | again, from the cache (s) | second/first | "
             "tokenizing peak MiB (its largest worker) | sweep driver peak MiB | trial peak MiB | sweep rc |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        a, b = (row[k].get("inside") or {} for k in ("tokenize_first", "tokenize_second"))
        ratio = b.get("seconds", math.nan) / a.get("seconds", math.nan) if a and b else math.nan
        lines.append(f"| {row['bytes'] / GIB:.2f} GiB | {a.get('rows', {}).get('train', 'n/a'):,} | "
                     f"{a.get('seconds', math.nan):.1f} | {b.get('seconds', math.nan):.2f} | {ratio:.2%} | "
                     f"{_peak(row['tokenize_first']['driver'])} ({_peak(_worker(row['tokenize_first']))}) | "
                     f"{_peak(row['sweep']['driver'])} | {_peak(row['sweep']['trial'])} | {row['sweep']['rc']} |")
    last = rows[-1]
    for who, small, big in (("tokenizing process", first["tokenize_first"]["driver"], last["tokenize_first"]["driver"]),
                            ("its largest worker", _worker(first["tokenize_first"]), _worker(last["tokenize_first"]))):
        if small and big:
            lines.append(f"\n{who}: {last['gib']:g} GiB peak / {first['gib']:g} GiB peak = "
                         f"{big['rss_mib'] / small['rss_mib']:.2f}x resident, "
                         f"{big['anon_mib'] / max(small['anon_mib'], 1):.2f}x anonymous")
    for who in ("driver", "trial"):
        small, big = first["sweep"].get(who), last["sweep"].get(who)
        if small and big:
            lines.append(f"\n{who}: {last['gib']:g} GiB peak / {first['gib']:g} GiB peak = "
                         f"{big['rss_mib'] / small['rss_mib']:.2f}x resident, "
                         f"{big['anon_mib'] / max(small['anon_mib'], 1):.2f}x anonymous (target <= 1.2x)")
    t = result["throughput"]
    same = all(a == b for a, b in zip(*t.get("train_loss", {}).values())) if t.get("train_loss") else None
    lines += ["", f"Throughput on MASSIVE, same trial, {len(t['samples_per_s']['in memory'])} runs each in "
                  f"{t.get('order', 'AB')} order: median in memory {t['median']['in memory']:.1f} "
                  f"samples/s, through the token cache {t['median']['token cache']:.1f} samples/s: "
                  f"**{t['ratio']:.3f}x** (target >= 0.95x); runs "
                  f"{[round(x) for x in t['samples_per_s']['in memory']]} against "
                  f"{[round(x) for x in t['samples_per_s']['token cache']]}"
                  + ("; the same batches (equal train losses)" if same else "")]
    c = result["capped"]
    if c.get("run"):
        lines += ["", f"Memory cap: a 2-trial ASHA sweep with step budgets on the {c['data_mib'] / 1024:.2f} GiB "
                      f"corpus, the whole sweep in a cgroup limited to {c['limit_mib']:.0f} MiB: exit code "
                      f"{c['rc']}, rounds per trial {c['rounds_per_trial']}, cgroup peak {c['peak_mib']:.0f} MiB "
                      f"(page cache included), limit reached {c['limit_hits']} times, OOM kills {c['oom_kills']}."]
    else:
        lines += ["", f"Memory cap: not run here ({c.get('why')})."]
    w = result["two_workers"]
    r1, r2 = w["runs"][1], w["runs"][2]
    lines += ["", f"Two workers: one trial on 2 Ray Train CPU workers against 1, same global batch (32), "
                  f"dropout off, 3 rounds of {result.get('round_steps', ROUND_STEPS)} steps: train/val loss per round 1 worker "
                  f"{[round(x, 5) for x in r1['train_loss']]} / {[round(x, 5) for x in r1['val_loss']]}, "
                  f"2 workers {[round(x, 5) for x in r2['train_loss']]} / {[round(x, 5) for x in r2['val_loss']]}; "
                  f"largest difference {w['max_abs_diff']}; sweep wall time {r1['seconds']:.0f} s against "
                  f"{r2['seconds']:.0f} s (two workers share these 2 cores: speed is not the point here)."]
    return "\n".join(lines)


if __name__ == "__main__" and len(sys.argv) == 6 and sys.argv[1] == "tokenize":
    tokenize_main(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
