"""The pretraining pipeline: documents -> tokens with BOS/EOS -> packed `seq_len` rows -> batches."""

from __future__ import annotations

import grain
import numpy as np

from llada_jax.data.packing import PackIterDataset
from llada_jax.data.pipeline import check_pipeline_args, shard, shuffle_repeat, stack_tokens, to_iter, worker_prefetch
from llada_jax.data.sources import DataStats, open_documents
from llada_jax.data.split import split_documents


class TokenizeDocument:
    """Document text -> int32 [BOS, tokens..., EOS]; None (a skipped record) stays None."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, text: str | None) -> np.ndarray | None:
        if text is None:
            return None
        tok = self.tokenizer
        return np.asarray([tok.bos_id, *tok.encode(text), tok.eos_id], np.int32)


def make_pretrain_dataset(data_cfg, tokenizer, seq_len: int, batch_size: int, *, seed: int,
                          shard_index: int = 0, shard_count: int = 1,
                          stats: DataStats | None = None, split: str = "train") -> grain.IterDataset:
    """Batches {"tokens": int32 [batch_size, seq_len]} of packed documents for this process.

    Documents of `data_cfg.files` are split into `shard_count` disjoint strided shards (one per
    process), shuffled by `seed` (differently each epoch), repeated `data_cfg.num_epochs` times
    (None: forever), tokenized as `[BOS] text [EOS]`, concatenated and cut into rows of
    `seq_len`; rows are optionally shuffled in windows of `data_cfg.shuffle_window`. The
    iterator's `get_state`/`set_state` (and Grain's Orbax `CheckpointSave`) resume exactly.
    `stats` (optional) receives the counts of documents, empty and skipped rows.
    `split` picks the training documents or the ones held out by `data_cfg.eval_fraction`.
    With a finite `num_epochs`, processes may see different numbers of batches (shards hold
    different token counts): multi-host runs should train a fixed number of steps instead.
    """
    check_pipeline_args(seq_len, batch_size, seed, shard_index, shard_count)
    docs = split_documents(open_documents(data_cfg, stats), data_cfg.eval_fraction, split)
    ds = shard(grain.MapDataset.source(docs), shard_index=shard_index, shard_count=shard_count, what="documents")
    ds = shuffle_repeat(ds, data_cfg, seed=seed)
    rows = PackIterDataset(to_iter(ds.map(TokenizeDocument(tokenizer)), data_cfg), seq_len)
    if data_cfg.shuffle_window > 1:
        rows = grain.experimental.WindowShuffleIterDataset(rows, window_size=data_cfg.shuffle_window, seed=seed)
    batches = rows.batch(batch_size, drop_remainder=True, batch_fn=stack_tokens)
    return worker_prefetch(batches, data_cfg)
