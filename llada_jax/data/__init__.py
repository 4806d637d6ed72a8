"""Grain data pipelines for pretraining (packed documents), SFT (prompt/response rows) and preference pairs.

`make_pretrain_dataset` and `make_sft_dataset` return a `grain.IterDataset` of numpy batches
whose iterator is checkpointable (`get_state`/`set_state`, `grain.checkpoint.CheckpointSave`).
Grain is imported only when a pipeline is used, so the corpus, chat and source helpers work
without it (the GPU image has no grain). Imports `config` and `io` only.
"""

import importlib

from llada_jax.data.chat import encode_sft_example, parse_sft_row
from llada_jax.data.corpus import default_corpus_text, default_corpus_topics, write_default_corpus
from llada_jax.data.sources import DataError, DataStats, expand_files, open_documents

_LAZY = {"make_pretrain_dataset": "pretrain", "make_sft_dataset": "sft", "build_sft_rows": "sft",
         "SFTRows": "sft", "PackIterDataset": "packing", "make_preference_dataset": "preference",
         "build_preference_rows": "preference", "parse_preference_row": "preference"}

__all__ = ["make_pretrain_dataset", "make_sft_dataset", "build_sft_rows", "SFTRows", "DataStats", "DataError",
           "make_preference_dataset", "build_preference_rows", "parse_preference_row",
           "open_documents", "expand_files", "PackIterDataset", "parse_sft_row", "encode_sft_example",
           "default_corpus_text", "default_corpus_topics", "write_default_corpus"]


def __getattr__(name):  # grain-backed names, imported on first use
    if name in _LAZY:
        return getattr(importlib.import_module(f"llada_jax.data.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'llada_jax.data' has no attribute '{name}'")
