"""Predictions of a multi-task model folder (``trainables.joint_export``): each text's intent with
its probability, and its slots as spans with character offsets in the ORIGINAL text.

A text is split into words on whitespace (``\\S+``, as training data is split), keeping where each
word starts and ends (``word_offsets``). The words are encoded as training encoded them (the
folder's tokenizer, ``is_split_into_words``, cut to ``max_length`` keeping the closing special
token); a word takes the tag predicted at its first piece, "O" when it got no piece (cut off by
``max_length``); the tags become spans by conlleval's rules (``trainables.spans.bio_spans``), and a
span of words becomes characters from its first word's start to its last word's end
(``spans_to_char_spans``). So ``value`` is ``text[start:end]``: case, accents and the whitespace
inside a span are the user's, not the tokenizer's.

Each answer is a JSON-ready dict::

    {"text": "wake me up at 9 am", "intent": "set_alarm", "probability": 0.97,
     "slots": [{"slot": "time", "value": "9 am", "start": 14, "end": 18}]}

``intent`` and ``probability`` are None for a model without an intent head; ``slots`` is [] for
one without a slot head. ``end`` is exclusive. Nothing here imports Ray, MLflow or ``tuning``.
"""

from __future__ import annotations

import re
from typing import Iterable, Optional

import numpy as np
import torch

from trainables import registry
from trainables.encoding import bucketed_batches
from trainables.errors import UserError
from trainables.loops import autocast_context
from trainables.model_files import MULTITASK_KIND
from trainables.model_folder import LoadedModel
from trainables.spans import bio_spans
from trainables.tagging import (TAG_IGNORE, EncodedJointSplit, TagMap, collate_joint,
                                predicted_word_tags)

WORD = re.compile(r"\S+")


def word_offsets(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` (end exclusive) of each whitespace-separated word of ``text``."""
    return [(match.start(), match.end()) for match in WORD.finditer(text)]


def spans_to_char_spans(text: str, offsets: list[tuple[int, int]],
                        spans: list[tuple[str, int, int]]) -> list[dict]:
    """Word spans ``(type, first word, last word inclusive)`` as slots in ``text``:
    ``{"slot", "value", "start", "end"}`` with ``value == text[start:end]``."""
    slots = []
    for kind, first, last in spans:
        start, end = offsets[first][0], offsets[last][1]
        slots.append({"slot": kind, "value": text[start:end], "start": start, "end": end})
    return slots


def _encoded(tokenizer, words: list[list[str]], max_length: int) -> EncodedJointSplit:
    """The texts' words as an ``EncodedJointSplit`` without targets: piece ids and each word's
    first piece (-1 for a word cut off)."""
    encoding = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length)
    ids, starts = [], []
    for i, text_words in enumerate(words):
        first = np.full(len(text_words), -1, dtype=np.int64)
        for position, word in enumerate(encoding.word_ids(i)):
            if word is not None and first[word] < 0:
                first[word] = position
        ids.append(np.asarray(encoding["input_ids"][i], dtype=np.int32))
        starts.append(first)
    return EncodedJointSplit(ids, np.full(len(words), TAG_IGNORE, dtype=np.int64),
                             [np.full(len(row), TAG_IGNORE, dtype=np.int64) for row in ids],
                             starts, words, [None] * len(words), np.zeros(len(words), np.int64))


class MultitaskPredictor:
    """A loaded multi-task model folder: ``predict(texts)`` → one dict per text (see the module
    docstring). Mirrors ``tuning.serve.predict.Predictor``'s attributes (``kind``, ``labels``,
    ``folder``, ``source``, ``batch_size``)."""

    kind = MULTITASK_KIND

    def __init__(self, loaded: LoadedModel, *, device=None, batch_size: int = 64,
                 source: Optional[str] = None):
        if loaded.kind != MULTITASK_KIND:
            raise TypeError(f"MultitaskPredictor needs a multi-task model, but got a "
                            f"{loaded.kind!r} one")
        if device is None:
            device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
        self.device = torch.device(device)
        self.model = loaded.model.to(self.device).eval()
        self.config = registry.config_class(loaded.config["trainable"]).from_dict(loaded.config)
        self.labels: list[str] = list(loaded.label_map["names"])
        self.tag_map = TagMap(list(loaded.label_map["tag_names"])) \
            if loaded.label_map["tag_names"] else None
        self.tokenizer = loaded.tokenizer
        self.folder = str(loaded.folder)
        self.source = source or self.folder
        self.batch_size = batch_size
        self._download = None  # a downloaded model's temporary folder, kept while in use

    def predict(self, texts: Iterable[str], *, probabilities: bool = False) -> list[dict]:
        """One answer per text, in the order given; with ``probabilities`` each answer also
        holds ``"probabilities"``: every intent's probability."""
        texts = list(texts)
        bad = [i for i, text in enumerate(texts) if not isinstance(text, str)]
        if bad:
            raise UserError(f"texts must be strings, but text {bad[0]} is {texts[bad[0]]!r}")
        offsets = [word_offsets(text) for text in texts]
        split = _encoded(self.tokenizer, [[text[a:b] for a, b in spans]
                                          for text, spans in zip(texts, offsets)],
                         self.config.max_length)
        proba, tags = self._run(split)
        return [self._answer(text, spans, None if proba is None else proba[i], tags[i],
                             probabilities)
                for i, (text, spans) in enumerate(zip(texts, offsets))]

    def predict_words(self, words: list[list[str]]) -> tuple[Optional[np.ndarray], list[list[str]]]:
        """For texts already split into words (as data files hold them): the (texts, intents)
        probabilities (None without an intent head) and each text's predicted word tags (all "O"
        without a slot head), encoded as training encodes them. What ``tunebert evaluate``
        scores."""
        words = [list(w) for w in words]
        if not words:
            return (np.zeros((0, len(self.labels)), dtype=np.float32) if self.labels else None), []
        return self._run(_encoded(self.tokenizer, words, self.config.max_length))

    @torch.no_grad()
    def _run(self, split: EncodedJointSplit) -> tuple[Optional[np.ndarray], list[list[str]]]:
        """(texts, intents) probabilities (None without an intent head) and each text's word
        tags (all "O" without a slot head)."""
        n = len(split)
        proba = np.zeros((n, len(self.labels)), dtype=np.float32) if self.labels else None
        tags = [["O"] * len(words) for words in split.words]
        pad = int(self.tokenizer.pad_token_id or 0)
        for indices in bucketed_batches(split.lengths(), self.batch_size,
                                        rng=np.random.default_rng(0), shuffle=False):
            batch = collate_joint(split, indices, pad)
            with autocast_context(self.device, self.config.precision):
                sentence, tokens = self.model(batch["input_ids"].to(self.device),
                                              batch["attention_mask"].to(self.device))
            if sentence is not None and proba is not None:
                proba[indices] = torch.softmax(sentence.float(), dim=-1).cpu().numpy()
            if tokens is not None and self.tag_map is not None:
                pieces = tokens.float().argmax(-1).cpu().numpy()
                for row, i in enumerate(indices):
                    tags[i] = predicted_word_tags(split.word_starts[i], pieces[row], self.tag_map,
                                                  len(split.words[i]))
        return proba, tags

    def _answer(self, text: str, offsets: list[tuple[int, int]], proba: Optional[np.ndarray],
                tags: list[str], probabilities: bool) -> dict:
        best = None if proba is None else int(proba.argmax())
        answer = {"text": text, "intent": None if best is None else self.labels[best],
                  "probability": None if best is None else float(proba[best]),
                  "slots": spans_to_char_spans(text, offsets, bio_spans(tags))}
        if probabilities and proba is not None:
            answer["probabilities"] = dict(zip(self.labels, map(float, proba)))
        return answer


def predict_utterances(loaded: LoadedModel, texts: Iterable[str], *, batch_size: int = 64,
                       device=None) -> list[dict]:
    """Each text's intent, its probability and its slots (see the module docstring) by the
    multi-task model ``loaded`` (``trainables.export.load_model`` of its folder)."""
    return MultitaskPredictor(loaded, device=device, batch_size=batch_size).predict(texts)
