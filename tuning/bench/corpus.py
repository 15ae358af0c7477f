"""A large classification corpus for the scale benchmark (issue 24): MASSIVE's train split repeated
with the project's own perturbations (``trainables.perturb``) and fresh ids, written as JSON Lines
shards until it weighs the size asked for.

Each pass over train writes every utterance once: the first pass as it is, later passes one of
``VARIANTS`` perturbed copies of it drawn once (perturbing every row afresh would take most of an
hour for 4 GB on two cores). Honest for memory and speed (real utterance lengths, real
vocabulary, every row its own id; neither tokenizing nor the cache shares anything between equal
texts), not for accuracy: every row is a noisy copy of one of MASSIVE's 11.5k utterances, so a
model trained on it learns nothing MASSIVE's train split does not already teach.

``build_corpus`` writes ``train-00000.jsonl`` ... (each at most ``shard_bytes``), copies the source's
validation and test splits, and writes ``corpus.json`` last: a folder with that manifest, for the
same source, size and seed, is complete and is reused as it is. A folder without it is written
again when it holds only the files written here (a killed build), and refused otherwise.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np

from trainables.data import DataConfig, load_raw_splits
from trainables.errors import UserError
from trainables.perturb import parse_spec, perturb_text

# typos and word-level noise at the rates of the robustness evaluation, a little stronger
PERTURBATIONS = "typo:0.1,delete:0.05,word_swap:0.1"
VARIANTS = 32  # perturbed copies of each utterance
MANIFEST = "corpus.json"
SHARD_BYTES = 256 * 2**20


def _clear(out: Path) -> None:
    """Make ``out`` an empty folder, removing only what ``build_corpus`` writes: a folder holding
    anything else is refused (``UserError``), never deleted."""
    if out.exists():
        foreign = sorted(p.name for p in out.iterdir()
                         if not re.fullmatch(r"train-\d{5}\.jsonl|validation\.jsonl|test\.jsonl", p.name))
        if foreign:
            raise UserError(f"{out} holds files the corpus builder did not write ({', '.join(foreign[:5])}): "
                            f"pass a new or empty folder")
        shutil.rmtree(out)
    out.mkdir(parents=True)


def build_corpus(source: str | Path, out: str | Path, size_bytes: int, *, seed: int = 0,
                 shard_bytes: int = SHARD_BYTES, say=lambda message: None) -> dict:
    """``out`` holding at least ``size_bytes`` of train rows (JSON Lines, ``id``/``text``/``label``)
    and the source's validation and test splits; its manifest (rows, bytes, shards, files)."""
    out = Path(out)
    wanted = {"source": str(Path(source).resolve()), "size_bytes": int(size_bytes), "seed": seed,
              "perturbations": PERTURBATIONS, "variants": VARIANTS, "shard_bytes": shard_bytes}
    manifest = out / MANIFEST
    if manifest.is_file():
        saved = json.loads(manifest.read_text())
        if {k: saved.get(k) for k in wanted} == wanted:
            say(f"corpus: {out} is built ({saved['rows']:,} rows, {saved['bytes'] / 2**30:.2f} GiB), reused")
            return saved
    _clear(out)
    raw = load_raw_splits(DataConfig(str(source)))
    train = raw["train"]
    perturbations = parse_spec(PERTURBATIONS)
    rng = np.random.default_rng(seed)
    # each row's JSON after its id, made once: the original, then VARIANTS perturbed copies
    tails = [[json.dumps({"text": text, "label": label}, ensure_ascii=False)[1:] + "\n"]
             for text, label in zip(train.texts, train.labels)]
    for row_tails, text, label in zip(tails, train.texts, train.labels):
        row_tails += [json.dumps({"text": perturb_text(text, perturbations, rng), "label": label},
                                 ensure_ascii=False)[1:] + "\n" for _ in range(VARIANTS)]
    rows = written = shard = 0
    files: list[str] = []
    handle = None
    repetition = 0
    while written < size_bytes:
        variant = 0 if repetition == 0 else 1 + (repetition - 1) % VARIANTS
        for row_tails in tails:
            if handle is None or written >= shard * shard_bytes:
                if handle is not None:
                    handle.close()
                name = f"train-{shard:05d}.jsonl"
                files.append(name)
                handle = open(out / name, "w", encoding="utf-8")
                shard += 1
            line = f'{{"id": "r{rows:09d}", ' + row_tails[variant]
            handle.write(line)
            written += len(line.encode("utf-8"))
            rows += 1
            if written >= size_bytes:
                break
        repetition += 1
        if repetition % 50 == 0:
            say(f"corpus: {written / 2**30:.2f} of {size_bytes / 2**30:.2f} GiB")
    if handle is not None:
        handle.close()
    for split in ("validation", "test"):
        rows_of = raw[split]
        (out / f"{split}.jsonl").write_text("".join(
            json.dumps({"id": f"{split[0]}{i:06d}", "text": t, "label": y}, ensure_ascii=False) + "\n"
            for i, (t, y) in enumerate(zip(rows_of.texts, rows_of.labels))), encoding="utf-8")
    saved = {**wanted, "rows": rows, "bytes": written, "shards": len(files), "files": files,
             "repetitions": repetition}
    manifest.write_text(json.dumps(saved, indent=2))  # last: the folder is complete
    say(f"corpus: wrote {rows:,} rows, {written / 2**30:.2f} GiB in {len(files)} shard(s) to {out}")
    return saved
