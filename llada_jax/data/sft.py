"""The SFT pipeline: JSONL rows -> prompt + response + EOS, EOS-padded to `seq_len` -> batches.

Rows are indexed and validated in every process (a malformed row stops with file:line, or is
skipped and counted), split into per-process shards, then this process's rows are tokenized
once, up front, so the counts of dropped and truncated rows are known before training starts.
"""

from __future__ import annotations

import dataclasses
import json

import grain
import numpy as np

from llada_jax.data.chat import encode_sft_example, parse_sft_row
from llada_jax.data.pipeline import check_pipeline_args, shard_shuffle_repeat, to_iter, worker_prefetch
from llada_jax.data.sources import DataError, DataStats, expand_files, file_format, scan_jsonl


@dataclasses.dataclass(frozen=True)
class SFTRows:
    """Tokenized rows (unpadded) stored flat: row i is `tokens[offsets[i]:offsets[i+1]]`."""

    tokens: np.ndarray          # int32, all rows concatenated
    offsets: np.ndarray         # int64 [n + 1]
    prompt_lengths: np.ndarray  # int32 [n]

    def __len__(self) -> int:
        return len(self.prompt_lengths)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return self.tokens[self.offsets[i]:self.offsets[i + 1]], int(self.prompt_lengths[i])


def build_sft_rows(data_cfg, tokenizer, seq_len: int, *, shard_index: int = 0, shard_count: int = 1,
                   stats: DataStats | None = None) -> SFTRows:
    """Validate every JSONL row of `data_cfg.files`, then tokenize this process's strided shard.

    A row is prompt + response + [EOS]. Longer than `seq_len`: dropped, or (too_long=truncate)
    cut to `seq_len` when the prompt leaves room for at least one response token.
    """
    stats = stats if stats is not None else DataStats()
    paths = expand_files(data_cfg.files)
    file_ids, starts, sizes = [], [], []  # where each valid row is: file index, byte offset, byte length
    for k, path in enumerate(paths):
        if file_format(path, data_cfg.format) != "jsonl":
            raise DataError(f"{path}: SFT data must be JSONL (got format '{file_format(path, data_cfg.format)}')")
        offsets, lengths = scan_jsonl(path, lambda obj: bool(parse_sft_row(obj, data_cfg)), data_cfg.on_error,
                                         stats)
        file_ids.append(np.full(len(offsets), k, np.int32))
        starts.append(offsets)
        sizes.append(lengths)
    file_ids, starts, sizes = (np.concatenate(a) for a in (file_ids, starts, sizes))
    stats.add(documents=len(starts))
    if len(starts) < shard_count:
        raise DataError(f"{len(starts)} SFT rows in data.files {list(data_cfg.files)} cannot be split into "
                        f"{shard_count} process shards")
    tokens, offsets, prompt_lengths = [], [0], []
    dropped = truncated = 0
    files: dict = {}
    try:
        for k, offset, length in zip(*(a[shard_index::shard_count] for a in (file_ids, starts, sizes))):
            if k not in files:
                files[k] = open(paths[k], "rb")
            files[k].seek(offset)
            messages, response = parse_sft_row(json.loads(files[k].read(length)), data_cfg)
            prompt, answer = encode_sft_example(messages, response, tokenizer, data_cfg)
            row = prompt + answer + [tokenizer.eos_id]
            if len(row) > seq_len:
                if data_cfg.too_long == "drop" or len(prompt) >= seq_len:
                    dropped += 1
                    continue
                row = row[:seq_len]
                truncated += 1
            tokens.append(np.asarray(row, np.int32))
            offsets.append(offsets[-1] + len(row))
            prompt_lengths.append(len(prompt))
    finally:
        for f in files.values():
            f.close()
    stats.add(rows=len(prompt_lengths), dropped=dropped, truncated=truncated)
    if not prompt_lengths:
        raise DataError(f"no SFT rows fit seq_len {seq_len} in this shard ({dropped} dropped as too long)")
    return SFTRows(np.concatenate(tokens), np.asarray(offsets, np.int64), np.asarray(prompt_lengths, np.int32))


class PadRow:
    """(row, prompt_length) -> {"tokens": int32 [seq_len] padded with EOS, "prompt_lengths": int32}."""

    def __init__(self, seq_len: int, eos_id: int):
        self.seq_len, self.eos_id = seq_len, eos_id

    def __call__(self, item: tuple[np.ndarray, int]) -> dict[str, np.ndarray]:
        row, prompt_length = item
        tokens = np.full(self.seq_len, self.eos_id, np.int32)
        tokens[: len(row)] = row
        return {"tokens": tokens, "prompt_lengths": np.int32(prompt_length)}


def make_sft_dataset(data_cfg, tokenizer, seq_len: int, batch_size: int, *, seed: int,
                     shard_index: int = 0, shard_count: int = 1,
                     stats: DataStats | None = None) -> grain.IterDataset:
    """Batches {"tokens": int32 [batch_size, seq_len], "prompt_lengths": int32 [batch_size]}.

    This process's shard of the SFT rows (see `build_sft_rows`), shuffled by `seed` (anew each
    epoch), repeated `data_cfg.num_epochs` times (None: forever). `stats` (optional) receives
    the counts of rows indexed, kept, skipped, dropped and truncated. The iterator is
    checkpointable like the pretraining one.
    """
    check_pipeline_args(seq_len, batch_size, seed, shard_index, shard_count)
    rows = build_sft_rows(data_cfg, tokenizer, seq_len, shard_index=shard_index, shard_count=shard_count,
                          stats=stats)
    ds = shard_shuffle_repeat(grain.MapDataset.source(rows), data_cfg, seed=seed, shard_index=0, shard_count=1,
                              what="SFT rows")
    batches = to_iter(ds.map(PadRow(seq_len, tokenizer.eos_id)), data_cfg).batch(batch_size, drop_remainder=True)
    return worker_prefetch(batches, data_cfg)
