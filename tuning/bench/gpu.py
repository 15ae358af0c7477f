"""``tunebert bench --parts gpu``: the check to run first whenever a GPU machine is at hand.

One command, about 8 minutes on one H100, that answers what CPU runs cannot:

- ``environment``: torch, CUDA, the device, what ``precision: auto`` picks on it, and which of the
  optional engines (Ray, Optuna, MLflow, accelerate) are importable;
- ``cuda-tests``: the CUDA-marked tests (``pytest -m cuda``, ``tests/trainables/test_cuda.py``);
- ``precision``: tunebert's training loop (``trainables.loops.train_epoch`` with the trainable's
  optimizer, LLRD groups and schedule) at fp32, bf16 and fp16 with loss scaling, on the same
  examples, for the model's shape and for a bert-base shape;
- ``trainer``: Hugging Face's ``Trainer`` on the same model shape, examples, batch size and
  precision (length-grouped batches, fused AdamW), against tunebert's loop;
- ``packing``: two trainings side by side on the one GPU against one alone: what two trials
  with ``--gpus-per-trial 0.5`` can gain at best (Ray's fractional GPUs only share the device;
  each trial is its own process, as here);
- ``tune``: a 4-minute ``tunebert tune`` on the data, with one GPU per trial.

Speed is measured on randomly initialised weights of the model's shape (``AutoConfig``): speed
does not depend on the weights, and the check then runs where only the model's ``config.json``
and tokenizer files are at hand (a lent machine without the packaged model). Only ``tune`` needs
the real weights, and Ray, Optuna and MLflow; a step that cannot run says why and the others go
on. Each step writes ``results.md`` and ``results.json`` again when it ends, so a check stopped
by a time limit keeps what it measured.

On a machine without CUDA the command says so in one line and exits 0. ``gpu_check`` takes the
device, so the CPU tests run every step's wiring on tiny sizes.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import multiprocessing
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from trainables.aliases import resolve_model
from trainables.data import DataConfig, load_raw_splits
from trainables.encoding import EncodedSplit, encode_texts
from trainables.finetune import build_optimization, classification_loss
from trainables.hparams import HPARAMS, FinetuneConfig
from trainables.loops import train_epoch
from trainables.models import TextClassifier, load_encoder, load_tokenizer
from trainables.runtime import resolve_precision, set_threads, supports_precision
from tuning.bench.common import machine, say

STEPS = ("environment", "cuda-tests", "precision", "trainer", "packing", "tune")
# the registry's precisions but auto, in its order (fp32 first: the others are measured against it)
PRECISIONS = tuple(p for p in HPARAMS["precision"].choices if p != "auto")
# a BERT-base encoder (what GPU users tune) beside the model's own shape
BERT_BASE = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
             "intermediate_size": 3072}
GPU_BATCHES = 200     # timed batches per speed measurement on a GPU (a CPU run takes --batches)
WARMUP = 5            # untimed batches first (cuDNN/cuBLAS autotuning, allocator growth)
TUNE_BUDGET_S = 240   # the `tune` step's --time-budget
CUDA_TESTS_TIMEOUT_S = 180
ENGINES = ("ray", "optuna", "mlflow", "accelerate", "datasets")
REPO = Path(__file__).resolve().parents[2]
CUDA_TESTS = REPO / "tests" / "trainables" / "test_cuda.py"


@dataclass
class Step:
    name: str
    status: str = "ok"            # ok, skipped (cannot run here, why says it) or failed
    seconds: float = 0.0
    why: str = ""
    rows: list[dict] = field(default_factory=list)
    numbers: dict[str, Any] = field(default_factory=dict)


class Skip(Exception):
    """A step that cannot run on this machine (a missing engine, model or file)."""


@dataclass
class GpuCheck:
    out: Path
    device: Any                    # torch.device
    model: str
    data: str
    batches: int = GPU_BATCHES
    batch_size: int = 32
    tune_budget_s: float = TUNE_BUDGET_S
    precisions: tuple[str, ...] = PRECISIONS
    shapes: tuple[str, ...] = ("model", "bert-base")
    smoke: bool = False
    command: str = ""
    steps: list[Step] = field(default_factory=list)
    _examples_cache: Optional[list] = field(default=None, repr=False)

    def run(self, only: Optional[tuple[str, ...]] = None) -> list[Step]:
        self.out.mkdir(parents=True, exist_ok=True)
        for name in only or STEPS:
            step = Step(name)
            start = time.perf_counter()
            say(f"gpu: {name} ...")
            try:
                getattr(self, "_" + name.replace("-", "_"))(step)
            except Skip as exc:
                step.status, step.why = "skipped", str(exc)
            except Exception as exc:  # one step's failure is a finding; the others still run
                step.status, step.why = "failed", f"{type(exc).__name__}: {exc}"
                step.numbers["traceback"] = traceback.format_exc(limit=8)
            step.seconds = time.perf_counter() - start
            say(f"gpu: {name}: {step.status} in {step.seconds:.0f} s" + (f" ({step.why})" if step.why else ""))
            self.steps.append(step)
            self.write()
        return self.steps

    # ------------------------------------------------------------------ the steps

    def _environment(self, step: Step) -> None:
        info: dict[str, Any] = {"torch": torch.__version__, "cuda_build": torch.version.cuda,
                                "device": str(self.device), "machine": machine()}
        if self.device.type == "cuda":
            props = torch.cuda.get_device_properties(self.device)
            info.update(name=props.name, capability=f"{props.major}.{props.minor}",
                        memory_gib=round(props.total_memory / 2**30, 1),
                        multiprocessors=props.multi_processor_count)
        info["auto_precision"] = resolve_precision(self.device, "auto")
        info["supported"] = [p for p in PRECISIONS if supports_precision(self.device, p)]
        info["engines"] = {name: importlib.util.find_spec(name) is not None for name in ENGINES}
        step.numbers.update(info)
        step.rows = [{"what": k, "value": v} for k, v in info.items()]

    def _cuda_tests(self, step: Step) -> None:
        if not CUDA_TESTS.is_file():
            raise Skip(f"{CUDA_TESTS} is not here: the tests ship with a clone, not the package")
        cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider",
               str(CUDA_TESTS)]
        try:
            done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                                  timeout=CUDA_TESTS_TIMEOUT_S)
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"the CUDA tests ran past {CUDA_TESTS_TIMEOUT_S} s") from exc
        lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
        summary = next((line for line in reversed(lines) if " in " in line and
                        any(w in line for w in ("passed", "failed", "skipped", "error"))), "")
        step.numbers.update(returncode=done.returncode, summary=summary.strip("= "),
                            output_tail="\n".join(lines[-40:]))
        step.rows = [{"command": "python -m pytest -q -m cuda tests/trainables/test_cuda.py",
                      "result": step.numbers["summary"], "exit": done.returncode}]
        if done.returncode not in (0, 5):  # 5: nothing collected
            step.status, step.why = "failed", step.numbers["summary"] or f"pytest exited {done.returncode}"

    def _precision(self, step: Step) -> None:
        examples = self._examples()
        for shape in self.shapes:
            base = None
            for precision in self.precisions:
                row = {"shape": shape, "precision": precision,
                       **loop_speed(self._config(shape), examples, device=self.device,
                                    precision=precision, batch_size=self.batch_size,
                                    batches=self.batches)}
                base = base or row["samples_per_s"]
                row["vs_fp32"] = row["samples_per_s"] / base
                step.rows.append(row)
                step.numbers[f"loop_{shape}_{precision}_samples_per_s"] = row["samples_per_s"]

    def _trainer(self, step: Step) -> None:
        if importlib.util.find_spec("accelerate") is None:
            raise Skip("Hugging Face's Trainer needs the package accelerate, which is not installed")
        examples = self._examples()
        ours = {(r["shape"], r["precision"]): r["samples_per_s"] for s in self.steps
                if s.name == "precision" for r in s.rows}
        for shape in self.shapes:
            for precision in self.precisions:
                row = {"shape": shape, "precision": precision,
                       **trainer_speed(self._config(shape), examples, device=self.device,
                                       precision=precision, batch_size=self.batch_size,
                                       batches=self.batches)}
                if (shape, precision) in ours:
                    row["tunebert_vs_trainer"] = ours[(shape, precision)] / row["samples_per_s"]
                step.rows.append(row)
                step.numbers[f"trainer_{shape}_{precision}_samples_per_s"] = row["samples_per_s"]

    def _packing(self, step: Step) -> None:

        examples = self._examples()
        precision = resolve_precision(self.device, "auto")
        job = dict(model=self.model, examples=examples, device=str(self.device),
                   precision=precision, batch_size=self.batch_size, batches=self.batches)
        alone = run_side_by_side([job])
        together = run_side_by_side([job, job])
        ratio = together["samples_per_s"] / alone["samples_per_s"]
        step.rows = [{"run": "one training alone", **alone},
                     {"run": "two trainings side by side (--gpus-per-trial 0.5)", **together},
                     {"run": "throughput of two side by side / one alone", "ratio": ratio}]
        step.numbers.update(alone_samples_per_s=alone["samples_per_s"],
                            together_samples_per_s=together["samples_per_s"], packing_ratio=ratio,
                            precision=precision)

    def _tune(self, step: Step) -> None:
        missing = [name for name in ("ray", "optuna", "mlflow") if importlib.util.find_spec(name) is None]
        if missing:
            raise Skip(f"`tunebert tune` needs {', '.join(missing)}, not installed here")
        try:
            load_encoder(self.model)
        except Exception as exc:
            raise Skip(f"`tunebert tune` needs the model's weights, which do not load here: {exc}") from exc
        gpus = "1" if self.device.type == "cuda" else "0"
        name, storage = f"gpu-check-{time.strftime('%Y%m%d-%H%M%S')}", self.out / "tune-store"
        argv = ["tune", "--name", name, "--data", self.data, "--model", self.model, "--time-budget",
                f"{self.tune_budget_s:.0f}", "--storage", str(storage), "--gpus-per-trial", gpus]
        say("gpu: tunebert " + " ".join(argv + ["--smoke-test"] * self.smoke))
        start = time.time()
        # the command a user runs, in its own process: its Ray and MLflow stay out of this one
        done = subprocess.run([sys.executable, "-m", "tuning.cli", *argv, *["--smoke-test"] * self.smoke],
                              check=False)
        if done.returncode != 0:
            raise RuntimeError(f"tunebert tune exited with {done.returncode}")
        # its record on disk (tuning.results.pipeline_state.PIPELINE_FILE): the handed-over model
        saved = json.loads((storage / "ray" / name / "tunebert_pipeline.json").read_text())["state"]
        result = {**(saved.get("result") or {}), "wall_s": time.time() - start,
                  "sweep_s": saved.get("sweep_actual_s"), "select_s": saved.get("select_actual_s"),
                  "select_top_k": saved.get("top_k"), "select_seeds": saved.get("seeds")}
        keep = ("handed_over", "val", "test_accuracy", "wall_s", "sweep_s", "select_s",
                "select_top_k", "select_seeds")
        step.numbers.update({k: result.get(k) for k in keep})
        step.rows = [{"what": k, "value": result.get(k)} for k in keep]

    # ------------------------------------------------------------------ what the steps share

    def _config(self, shape: str):
        return speed_config(self.model, None if shape == "model" else BERT_BASE)

    def _examples(self) -> list[list[int]]:
        """A seeded sample of the data's train split, tokenized (batches × batch size texts)."""
        if self._examples_cache is None:
            self._examples_cache = sample_examples(self.data, self.model,
                                                   n=(self.batches + WARMUP) * self.batch_size)
        return self._examples_cache

    def write(self) -> None:
        data = {"command": self.command, "machine": machine(), "steps": [asdict(s) for s in self.steps]}
        (self.out / "results.json").write_text(json.dumps(data, indent=2, default=str))
        (self.out / "results.md").write_text(markdown(self.steps, self.command))


# ---------------------------------------------------------------------- measurements


def speed_config(model: str, shape: Optional[dict] = None):
    """The model's config (or a BERT of ``shape`` with the model's vocabulary): weights are not
    loaded, speed does not depend on them."""
    from transformers import AutoConfig, BertConfig


    config = AutoConfig.from_pretrained(resolve_model(model))
    if shape is not None:
        config = BertConfig(vocab_size=config.vocab_size, max_position_embeddings=512, **shape)
    return config


def sample_examples(data: str, model: str, *, n: int) -> list[list[int]]:

    texts = load_raw_splits(DataConfig(data))["train"].texts
    order = np.random.default_rng(0).permutation(len(texts))
    picked = [texts[i] for i in np.resize(order, n)]  # repeats when the split is smaller than n
    ids, _ = encode_texts(load_tokenizer(model), picked, 64)
    return [list(map(int, x)) for x in ids]


def _split(examples: list[list[int]], num_labels: int):

    labels = np.arange(len(examples)) % num_labels
    return EncodedSplit([np.asarray(x, dtype=np.int32) for x in examples], labels)


def _sync(device) -> None:

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def loop_speed(config, examples: list[list[int]], *, device, precision: str, batch_size: int,
               batches: int, num_labels: int = 60) -> dict:
    """Samples/s and peak GPU memory of tunebert's training loop: ``train_epoch`` with the
    trainable's LLRD groups, fused AdamW, schedule and (fp16 on CUDA) loss scaling."""
    from transformers import AutoModel


    torch.manual_seed(0)
    encoder = _encoder_from_config(AutoModel, config)
    model = TextClassifier(encoder, num_labels, pooling="mean", head="linear", head_hidden=256,
                           dropout=0.1).to(device)
    cfg = FinetuneConfig(batch_size=batch_size, precision=precision, perturb_eval=None)
    optimizer, scheduler = build_optimization(model, cfg, total_steps=batches + WARMUP)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" and device.type == "cuda" else None
    split = _split(examples, num_labels)
    warm = type(split)(split.input_ids[:WARMUP * batch_size], split.labels[:WARMUP * batch_size])
    timed = type(split)(split.input_ids[WARMUP * batch_size:(WARMUP + batches) * batch_size],
                        split.labels[WARMUP * batch_size:(WARMUP + batches) * batch_size])
    common = dict(batch_size=batch_size, pad_token_id=0, optimizer=optimizer, scheduler=scheduler,
                  loss_fn=classification_loss(0.0), device=device, precision=precision,
                  grad_clip=1.0, scaler=scaler)
    train_epoch(model, warm, rng=np.random.default_rng(0), **common)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    start = time.perf_counter()
    stats = train_epoch(model, timed, rng=np.random.default_rng(1), **common)
    _sync(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {"samples_per_s": stats.samples / seconds, "loss": stats.loss, "peak_mib": peak,
            "batches": batches}


def _encoder_from_config(auto, config):
    try:
        return auto.from_config(config, add_pooling_layer=False)
    except TypeError:  # an architecture without a pooler option
        return auto.from_config(config)


def trainer_speed(config, examples: list[list[int]], *, device, precision: str, batch_size: int,
                  batches: int, num_labels: int = 60) -> dict:
    """Samples/s of Hugging Face's ``Trainer`` on the same shape, examples, batch size and
    precision: length-grouped batches, fused AdamW on CUDA, linear warm-up schedule, clipping 1."""
    from transformers import (AutoModelForSequenceClassification, Trainer, TrainerCallback,
                              TrainingArguments)

    config = type(config).from_dict({**config.to_dict(), "num_labels": num_labels})
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config)
    rows = [{"input_ids": x, "labels": i % num_labels} for i, x in enumerate(examples)]

    def collate(features):
        width = max(len(f["input_ids"]) for f in features)
        ids = torch.zeros(len(features), width, dtype=torch.long)
        mask = torch.zeros(len(features), width, dtype=torch.long)
        for i, f in enumerate(features):
            ids[i, :len(f["input_ids"])] = torch.tensor(f["input_ids"])
            mask[i, :len(f["input_ids"])] = 1
        return {"input_ids": ids, "attention_mask": mask,
                "labels": torch.tensor([f["labels"] for f in features])}

    clock: dict[str, float] = {}

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == WARMUP:
                _sync(device)
                clock["start"] = time.perf_counter()

        def on_train_end(self, args, state, control, **kwargs):
            _sync(device)
            clock["end"] = time.perf_counter()

    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=batch_size, max_steps=WARMUP + batches,
            learning_rate=1e-4, warmup_steps=(WARMUP + batches) // 10, lr_scheduler_type="linear",
            max_grad_norm=1.0,
            weight_decay=0.01, bf16=precision == "bf16", fp16=precision == "fp16",
            optim="adamw_torch_fused" if device.type == "cuda" else "adamw_torch",
            save_strategy="no", logging_strategy="no", report_to=[], disable_tqdm=True,
            dataloader_num_workers=0, seed=0, use_cpu=device.type == "cpu", **_length_grouping())
        trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=collate,
                          callbacks=[Clock()])
        trainer.train()
    seconds = clock["end"] - clock["start"]
    return {"samples_per_s": batches * batch_size / seconds, "batches": batches}


def _length_grouping() -> dict:
    """Length-grouped batches, as tunebert's loop buckets them: ``train_sampling_strategy`` in
    newer transformers, ``group_by_length`` before it."""
    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    if "train_sampling_strategy" in names:
        return {"train_sampling_strategy": "group_by_length"}
    return {"group_by_length": True}


def _side_by_side_worker(job: dict, barrier, results) -> None:
    if job["device"] == "cpu":
        set_threads(1)
    device = torch.device(job["device"])
    config = speed_config(job["model"])
    barrier.wait()
    start = time.time()
    row = loop_speed(config, job["examples"], device=device, precision=job["precision"],
                     batch_size=job["batch_size"], batches=job["batches"])
    results.put({"start": start, "end": time.time(), "samples": job["batches"] * job["batch_size"],
                 "samples_per_s": row["samples_per_s"]})


def run_side_by_side(jobs: list[dict]) -> dict:
    """Each job in its own process, all started together (as Ray starts trials that share a GPU):
    their summed training samples/s, and the slowest one's wall time."""
    context = multiprocessing.get_context("spawn")  # CUDA cannot be forked into
    barrier, results = context.Barrier(len(jobs)), context.Queue()
    procs = [context.Process(target=_side_by_side_worker, args=(job, barrier, results)) for job in jobs]
    for proc in procs:
        proc.start()
    got = [results.get(timeout=900) for _ in procs]
    for proc in procs:
        proc.join()
    bad = [p.exitcode for p in procs if p.exitcode != 0]
    if bad:
        raise RuntimeError(f"a side-by-side training process exited with {bad}")
    return {"processes": len(jobs), "samples_per_s": sum(r["samples_per_s"] for r in got),
            "wall_s": max(r["end"] for r in got) - min(r["start"] for r in got)}


# ---------------------------------------------------------------------- the report


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 10 else f"{value:,.0f}"
    return "—" if value is None else str(value)


def markdown(steps: list[Step], command: str) -> str:
    lines = ["# tunebert GPU check", "", f"Command: `{command}`", "", f"Machine: {machine()}", "",
             "| step | status | seconds | note |", "|---|---|---:|---|"]
    lines += [f"| {s.name} | {s.status} | {s.seconds:.0f} | {s.why} |" for s in steps]
    for s in steps:
        if not s.rows:
            continue
        keys = list(dict.fromkeys(k for row in s.rows for k in row))
        lines += ["", f"## {s.name}", "", "| " + " | ".join(keys) + " |",
                  "|" + "---|" * len(keys)]
        lines += ["| " + " | ".join(_cell(row.get(k)) for k in keys) + " |" for row in s.rows]
    if any(s.name == "precision" for s in steps):
        lines += ["", "Speed is measured on randomly initialised weights of each shape (speed does "
                  "not depend on the weights); `vs_fp32` and `tunebert_vs_trainer` are ratios "
                  "within this one run."]
    return "\n".join(lines) + "\n"


def run(args) -> int:
    """The ``--parts gpu`` command: one line and exit 0 without CUDA, else every step."""
    if not torch.cuda.is_available():
        say(f"gpu: no CUDA device here (torch {torch.__version__}, CUDA build "
            f"{torch.version.cuda or 'none'}): nothing to check; run this on a GPU machine")
        return 0
    command = "tunebert " + " ".join(shlex.quote(a) for a in getattr(args, "argv", sys.argv[1:]))
    check = GpuCheck(Path(args.out), torch.device("cuda", 0), model=args.model, data=args.data,
                     batches=1 if args.smoke_test else max(args.batches, GPU_BATCHES),
                     batch_size=args.batch_size, smoke=args.smoke_test, command=command,
                     tune_budget_s=60 if args.smoke_test else TUNE_BUDGET_S)
    steps = check.run()
    say(f"gpu: wrote {Path(args.out) / 'results.md'}: "
        + ", ".join(f"{s.name} {s.status}" for s in steps))
    return 1 if any(s.status == "failed" for s in steps) else 0
