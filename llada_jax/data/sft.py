"""The SFT pipeline: JSONL rows -> prompt + response + EOS, EOS-padded to `seq_len` -> batches.

Every process validates every row in one pass (a malformed row stops with file:line, or is
skipped and counted) and keeps its strided shard of them; those rows are tokenized once, up
front, so the counts of dropped and truncated rows are known before training starts.
"""

from __future__ import annotations

import dataclasses

import grain
import numpy as np

from llada_jax.data.chat import encode_sft_example, parse_sft_row
from llada_jax.data.pipeline import check_pipeline_args, row_batches
from llada_jax.data.rows import scan_rows
from llada_jax.data.sources import DataError, DataStats


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


def fit_row(prompt: list[int], answer: list[int], eos_id: int, seq_len: int, too_long: str) -> list[int] | None:
    """prompt + answer + [EOS]; longer than `seq_len`: None (dropped), or with too_long="truncate"
    cut to `seq_len` when the prompt leaves room for at least one response token."""
    row = prompt + answer + [eos_id]
    if len(row) <= seq_len:
        return row
    if too_long == "drop" or len(prompt) >= seq_len:
        return None
    return row[:seq_len]


def build_sft_rows(data_cfg, tokenizer, seq_len: int, *, shard_index: int = 0, shard_count: int = 1,
                   stats: DataStats | None = None, split: str = "train") -> SFTRows:
    """Validate every JSONL or Parquet row of `data_cfg.files`, then tokenize this process's strided shard.

    A row is prompt + response + [EOS]. Longer than `seq_len`: dropped, or (too_long=truncate)
    cut to `seq_len` when the prompt leaves room for at least one response token.
    `split` keeps the training rows or the ones held out by `data_cfg.eval_fraction`.
    """
    stats = stats if stats is not None else DataStats()
    columns = (data_cfg.prompt_field, data_cfg.response_field, data_cfg.messages_field)
    mine = scan_rows(data_cfg, lambda obj: parse_sft_row(obj, data_cfg), columns, shard_index=shard_index,
                     shard_count=shard_count, stats=stats, split=split, what="SFT")
    tokens, offsets, prompt_lengths = [], [0], []
    dropped = truncated = 0
    for messages, response in mine:
        prompt, answer = encode_sft_example(messages, response, tokenizer, data_cfg)
        row = fit_row(prompt, answer, tokenizer.eos_id, seq_len, data_cfg.too_long)
        if row is None:
            dropped += 1
            continue
        truncated += len(row) < len(prompt) + len(answer) + 1
        tokens.append(np.asarray(row, np.int32))
        offsets.append(offsets[-1] + len(row))
        prompt_lengths.append(len(prompt))
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
                     stats: DataStats | None = None, split: str = "train") -> grain.IterDataset:
    """Batches {"tokens": int32 [batch_size, seq_len], "prompt_lengths": int32 [batch_size]}.

    This process's shard of the SFT rows (see `build_sft_rows`), shuffled by `seed` (anew each
    epoch), repeated `data_cfg.num_epochs` times (None: forever). `stats` (optional) receives
    the counts of rows indexed, kept, skipped, dropped and truncated. The iterator is
    checkpointable like the pretraining one.
    """
    check_pipeline_args(seq_len, batch_size, seed, shard_index, shard_count)
    rows = build_sft_rows(data_cfg, tokenizer, seq_len, shard_index=shard_index, shard_count=shard_count,
                          stats=stats, split=split)
    return row_batches(rows, data_cfg, batch_size, seed=seed, row_map=PadRow(seq_len, tokenizer.eos_id))
