"""The names of the files in a tunebert model folder (``trainables.export``) and an ensemble folder
(``trainables.ensemble``). A leaf that imports no torch, so ``tuning.results.outputs`` can tell a folder
tunebert wrote without loading torch (``tunebert --help`` stays quick)."""

from __future__ import annotations

import re

FORMAT = "tunebert-text-classifier"
FORMAT_VERSION = 1
MULTITASK_FORMAT = "tunebert-multitask"  # one encoder, a sentence head and/or a token head
MULTITASK_FORMAT_VERSION = 1
BASELINE_FORMAT = "tunebert-baseline"  # a tfidf or bilstm model (trainables.baseline_export)
BASELINE_FORMAT_VERSION = 1
MODEL_FORMATS = (FORMAT, MULTITASK_FORMAT, BASELINE_FORMAT)  # the "format" of a tunebert.json tunebert wrote
MODEL_FILE = "tunebert.json"
HEAD_FILE = "head.safetensors"
SLOT_HEAD_FILE = "slot_head.safetensors"  # a multi-task model's token head
BASELINE_WEIGHTS = "baseline.safetensors"  # a baseline model's tensors, all of them
LABEL_MAP_FILE = "label_map.json"
CARD_FILE = "README.md"
ENCODER_CONFIG_FILE = "config.json"
ENCODER_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")  # whole, or sharded
# Every name ``save_model`` (or ``save_multitask_model``) can write into a model folder, and
# nothing else: what tunebert may replace (``tuning.results.outputs``). Its own files; the
# encoder's (``save_pretrained``: whole or sharded weights, and generation_config.json for
# encoders that generate); the tokenizer's,
# which depend on its kind and on the transformers version (WordPiece: vocab.txt; BPE:
# vocab.json, merges.txt; SentencePiece: *.model; before transformers 5 also
# special_tokens_map.json and added_tokens.json).
WRITTEN_FILES = frozenset({
    MODEL_FILE, HEAD_FILE, SLOT_HEAD_FILE, BASELINE_WEIGHTS, LABEL_MAP_FILE, CARD_FILE, ENCODER_CONFIG_FILE,
    *ENCODER_WEIGHTS,
    "generation_config.json", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "added_tokens.json", "vocab.txt", "vocab.json", "merges.txt",
    "spiece.model", "sentencepiece.bpe.model", "tokenizer.model", "chat_template.jinja",
    "chat_template.json"})
WEIGHT_SHARD = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")
ENSEMBLE_FILE = "ensemble.json"
STATE_FILE = "state.pt"  # an older model folder: a training checkpoint (trainables.checkpointing)
ENSEMBLE_KIND = "ensemble"
MULTITASK_KIND = "multitask"  # a loaded multi-task model (LoadedModel.kind), beside single/ensemble


def written_by_save_model(name: str) -> bool:
    """Whether ``save_model`` can write a file of this name into a model folder."""
    return name in WRITTEN_FILES or WEIGHT_SHARD.fullmatch(name) is not None
