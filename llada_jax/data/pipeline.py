"""Grain stages of the pretraining and SFT pipelines: shard, shuffle, repeat, read, prefetch."""

from __future__ import annotations

import grain
import numpy as np


def check_pipeline_args(seq_len: int, batch_size: int, seed: int, shard_index: int, shard_count: int) -> None:
    """Raise ValueError naming the first bad argument of a `make_*_dataset` call."""
    if seq_len <= 0:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    if batch_size <= 0:
        raise ValueError(f"batch_size (per process) must be positive, got {batch_size}")
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    if shard_count <= 0 or not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index {shard_index} is outside [0, shard_count={shard_count})")


def shard(ds: grain.MapDataset, *, shard_index: int, shard_count: int, what: str) -> grain.MapDataset:
    """This process's strided shard of `ds`."""
    if len(ds) < shard_count:
        raise ValueError(f"{len(ds)} {what} cannot be split into {shard_count} process shards")
    return ds[shard_index::shard_count]


def shuffle_repeat(ds: grain.MapDataset, data_cfg, *, seed: int) -> grain.MapDataset:
    """`ds` shuffled by `seed` (anew each epoch) when `data_cfg.shuffle`, repeated `num_epochs` times."""
    if data_cfg.shuffle:
        ds = ds.shuffle(seed)
    return ds.repeat(data_cfg.num_epochs)


def to_iter(ds: grain.MapDataset, data_cfg) -> grain.IterDataset:
    """Read (and map) elements with `read_threads` threads; None elements are dropped."""
    return ds.to_iter_dataset(grain.ReadOptions(num_threads=data_cfg.read_threads,
                                                prefetch_buffer_size=data_cfg.prefetch_buffer_size))


def worker_prefetch(ds: grain.IterDataset, data_cfg) -> grain.IterDataset:
    """Run the pipeline in `worker_count` processes (each on a slice of the shard); 0: in-process."""
    if data_cfg.worker_count <= 0:
        return ds
    from absl import flags

    if not flags.FLAGS.is_parsed():  # Grain reads absl flags when it starts workers; keep their defaults
        flags.FLAGS.mark_as_parsed()
    return ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=data_cfg.worker_count,
                                                       per_worker_buffer_size=data_cfg.worker_buffer_size))


def row_batches(rows, data_cfg, batch_size: int, *, seed: int, row_map=None) -> grain.IterDataset:
    """Batches of a random-access row source (SFT rows, preference pairs, prompt indices): shuffled
    by `seed` (anew each epoch), repeated, each row mapped by `row_map` (e.g. padding) when given,
    batched (the last partial batch dropped) and prefetched; checkpointable."""
    ds = shuffle_repeat(grain.MapDataset.source(rows), data_cfg, seed=seed)
    if row_map is not None:
        ds = ds.map(row_map)
    return worker_prefetch(to_iter(ds, data_cfg).batch(batch_size, drop_remainder=True), data_cfg)


def stack_tokens(rows) -> dict[str, np.ndarray]:
    """Batch function of the pretraining pipeline: {"tokens": int32 [batch, seq_len]}."""
    return {"tokens": np.stack(rows).astype(np.int32, copy=False)}
