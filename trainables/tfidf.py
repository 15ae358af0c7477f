"""The TF-IDF baseline: a logistic regression on TF-IDF weighted word-piece n-grams.

It reads the token ids every trial receives (the sweep's tokenizer, ``model``), so it needs no
text of its own and its model folder predicts from the same ids: features are the n-grams of
length 1..``tfidf_ngram_max`` of a text's ids (its [CLS] and [SEP] included), weighted as
scikit-learn's ``TfidfVectorizer`` weights them (smoothed idf, optional sublinear tf, rows
L2-normalised), and ``LogisticRegression`` (L2, ``C = tfidf_c``) classifies them.

scikit-learn fits; ``TfidfClassifier`` serves: a torch module that holds the fitted vocabulary,
idf and weights as tensors and computes the same features and logits, so the model a trial
scores, checkpoints and hands over is one state dict of tensors (``trainables.baseline_export``)
and ``forward(input_ids, attention_mask)`` gives class logits like every other family's.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from trainables import baselines
from trainables.checkpointing import load_checkpoint, model_weights
from trainables.data import TokenizedData
from trainables.deploy import PeakMemory
from trainables.errors import ConfigError
from trainables.finetune import Reporter
from trainables.hparams import TfidfConfig
from trainables.loops import EpochStats, evaluate
from trainables.runtime import seed_everything

# the logit of a class the training split lacks (the regression never saw it): never predicted
ABSENT_CLASS_LOGIT = -1e4
MAX_ITER = 1000  # lbfgs iterations of the logistic regression


def ngrams_of(ids: Sequence[int], n_max: int) -> list[tuple[int, ...]]:
    """Every n-gram of ``ids`` for n = 1..``n_max``, in order."""
    return [tuple(ids[i:i + n]) for n in range(1, n_max + 1) for i in range(len(ids) - n + 1)]


def _key(ngram: tuple[int, ...]) -> str:
    return " ".join(map(str, ngram))


class TfidfClassifier(nn.Module):
    """TF-IDF features of word-piece n-grams and a linear classifier over them.

    Buffers: ``ngrams`` (features, n_max) token ids, -1 padded: the vocabulary; ``idf``
    (features,). Parameters (fitted, not trained by gradient): ``weight`` (labels, features),
    ``bias`` (labels,)."""

    def __init__(self, num_features: int, n_max: int, num_labels: int, *, sublinear_tf: bool):
        super().__init__()
        self.register_buffer("ngrams", torch.full((num_features, n_max), -1, dtype=torch.long))
        self.register_buffer("idf", torch.zeros(num_features))
        self.weight = nn.Parameter(torch.zeros(num_labels, num_features), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(num_labels), requires_grad=False)
        self.sublinear_tf = sublinear_tf
        self._index: Optional[tuple[tuple, dict]] = None  # (version of ngrams, n-gram -> column)

    def vocabulary(self) -> dict[tuple[int, ...], int]:
        """n-gram -> feature column, rebuilt whenever ``ngrams`` changed (``load_state_dict``)."""
        version = (self.ngrams.data_ptr(), self.ngrams._version, self.ngrams.shape)
        if self._index is None or self._index[0] != version:
            rows = self.ngrams.tolist()
            self._index = (version, {tuple(t for t in row if t >= 0): col for col, row in enumerate(rows)})
        return self._index[1]

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(batch, features) sparse TF-IDF rows, L2-normalised, on the CPU."""
        vocabulary, n_max = self.vocabulary(), self.ngrams.shape[1]
        idf = self.idf.cpu().numpy()
        rows, cols, values = [], [], []
        for row, (ids, mask) in enumerate(zip(input_ids.cpu().tolist(), attention_mask.cpu().tolist())):
            kept = [t for t, m in zip(ids, mask) if m]
            counts = Counter(vocabulary[g] for g in ngrams_of(kept, n_max) if g in vocabulary)
            if not counts:
                continue
            col = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
            tf = np.fromiter(counts.values(), dtype=np.float64, count=len(counts))
            weights = (1.0 + np.log(tf) if self.sublinear_tf else tf) * idf[col]
            weights /= np.linalg.norm(weights)
            rows += [row] * len(col)
            cols.append(col)
            values.append(weights)
        size = (input_ids.shape[0], self.ngrams.shape[0])
        if not rows:
            return torch.sparse_coo_tensor(torch.zeros((2, 0), dtype=torch.long), torch.zeros(0), size)
        index = torch.from_numpy(np.stack([np.asarray(rows), np.concatenate(cols)]))
        return torch.sparse_coo_tensor(index, torch.from_numpy(np.concatenate(values)).float(), size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(batch, seq) ids and mask -> (batch, labels) float32 logits, on the ids' device."""
        with torch.autocast(device_type="cpu", enabled=False):  # sparse fp32 on the CPU
            x = self.features(input_ids, attention_mask)
            weight, bias = self.weight.detach().float().cpu(), self.bias.detach().float().cpu()
            logits = torch.sparse.mm(x, weight.t()) + bias
        return logits.to(input_ids.device)


def restore(cfg: TfidfConfig, state: dict[str, torch.Tensor], num_labels: int) -> TfidfClassifier:
    """An empty ``TfidfClassifier`` of the shape of ``state`` (a model folder's or checkpoint's
    tensors), to load ``state`` into."""
    features, n_max = state["ngrams"].shape
    return TfidfClassifier(features, n_max, num_labels, sublinear_tf=cfg.tfidf_sublinear_tf)


def fit_classifier(cfg: TfidfConfig, documents: list[list[int]], labels: np.ndarray,
                   num_labels: int) -> TfidfClassifier:
    """Fit scikit-learn's TF-IDF and logistic regression on ``documents`` (token ids without
    padding) and ``labels``; the fitted vocabulary, idf and weights as a ``TfidfClassifier``."""
    # local: scikit-learn is read by this trainable only
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    n_max = cfg.tfidf_ngram_max
    vectorizer = TfidfVectorizer(analyzer=lambda doc: [_key(g) for g in ngrams_of(doc, n_max)],
                                 min_df=cfg.tfidf_min_df, sublinear_tf=cfg.tfidf_sublinear_tf)
    try:
        features = vectorizer.fit_transform(documents)
    except ValueError as exc:  # min_df above every n-gram's document count
        raise ConfigError(f"`tfidf_min_df` ({cfg.tfidf_min_df}) leaves no n-gram: {exc}; lower it "
                          f"(the training split has {len(documents)} texts)") from None
    weight = None if cfg.tfidf_class_weight == "none" else cfg.tfidf_class_weight
    regression = LogisticRegression(C=cfg.tfidf_c, class_weight=weight, max_iter=MAX_ITER)
    regression.fit(features, labels)
    model = TfidfClassifier(len(vectorizer.vocabulary_), n_max, num_labels,
                            sublinear_tf=cfg.tfidf_sublinear_tf)
    with torch.no_grad():
        for key, col in vectorizer.vocabulary_.items():
            ids = [int(t) for t in key.split()]
            model.ngrams[col, :len(ids)] = torch.tensor(ids)
        model.idf.copy_(torch.from_numpy(vectorizer.idf_))
        _set_weights(model, regression.classes_, regression.coef_, regression.intercept_)
    return model


def _set_weights(model: TfidfClassifier, classes: np.ndarray, coef: np.ndarray, intercept: np.ndarray) -> None:
    """Copy the regression's weights into ``model``'s rows of ``classes``. A binary regression
    has one row, the second class's log-odds: the first class's row stays 0, which gives the
    same probabilities. Classes absent from training get ``ABSENT_CLASS_LOGIT``."""
    model.bias.fill_(ABSENT_CLASS_LOGIT)
    if len(classes) == 2 and coef.shape[0] == 1:
        model.bias[int(classes[0])] = 0.0
        classes = classes[1:]
    for row, label in enumerate(classes):
        model.weight[int(label)] = torch.from_numpy(coef[row]).float()
        model.bias[int(label)] = float(intercept[row])


def fit(cfg: TfidfConfig, data: TokenizedData, *, device: torch.device, report: Reporter,
        resume_dir: Optional[str] = None,
        progress: Optional[Callable[[int], None]] = None) -> TfidfClassifier:
    """Fit once on the training split and report one epoch (``trainables.baselines``: validation
    scores, ``best_*``, the fit's time and throughput, serving costs); return the model.

    ``resume_dir``: its one checkpoint holds the fitted model, which is returned unreported
    (a trial's only report is its last)."""
    train = data.splits["train"]
    if resume_dir is not None:
        weights = model_weights(load_checkpoint(resume_dir))
        model = restore(cfg, weights, data.num_labels)
        model.load_state_dict(weights)
        return model
    seed_everything(cfg.seed)
    memory = PeakMemory(device)
    start = time.perf_counter()
    documents = [np.asarray(ids).tolist() for ids in train.input_ids]
    model = fit_classifier(cfg, documents, np.asarray(train.labels), data.num_labels)
    seconds = time.perf_counter() - start
    if progress is not None:
        progress(len(train))
    scorer = baselines.EpochScorer(cfg, data, device, memory, baselines.serving_costs(cfg, model, data))
    train_loss = evaluate(model, train, **scorer.kwargs).loss
    metrics = scorer(model, 1, EpochStats(loss=train_loss, samples=len(train), seconds=seconds))
    report(metrics, baselines.checkpoint_writer(cfg, data, model, scorer.best, 1, 1))
    return model
