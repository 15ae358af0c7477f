"""The default search spaces of the cheap baselines (``tfidf``, ``bilstm``; docs/baselines.md),
read from the hyperparameter registry: each parameter's range, choices and condition are declared
once, in ``trainables.hparams.HPARAMS``; this module only selects the searched ones.
"""

from __future__ import annotations

from search_spaces.finetune import searched_params
from search_spaces.space import Param, SearchSpace

TFIDF_PARAMS: tuple[Param, ...] = searched_params("tfidf")
BILSTM_PARAMS: tuple[Param, ...] = searched_params("bilstm")


def tfidf_space(**constants) -> SearchSpace:
    """C, n-gram length, sublinear tf, min_df and class weights; ``constants`` are the
    sweep-level settings (the tokenizer's ``model``, ``max_length``, ...)."""
    return SearchSpace(TFIDF_PARAMS, {"trainable": "tfidf", **constants})


def bilstm_space(**constants) -> SearchSpace:
    """Learning rate, embedding and hidden sizes, layers, dropout and batch size."""
    return SearchSpace(BILSTM_PARAMS, {"trainable": "bilstm", **constants})
