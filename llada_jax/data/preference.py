"""The preference pipeline (VRPO): rows of (prompt, chosen, rejected) -> two SFT rows per pair -> batches.

Rows (JSONL lines or Parquet rows), the layouts TRL's DPO trainer reads:

- `{"prompt": str, "chosen": str, "rejected": str}`: one user turn and two answers;
- `{"chosen": [messages], "rejected": [messages]}`: two conversations that share every message
  but the last, the assistant's answer (the shared messages are the prompt);
- `{"prompt": [messages], "chosen": [messages], "rejected": [messages]}`: the prompt's messages and
  each answer as one assistant message.

Field names are `data.prompt_field`, `data.chosen_field`, `data.rejected_field`. Both answers go
through the chat template as an SFT response does (data/chat.py) after the same prompt, and each
row is prompt + answer + EOS, EOS-padded to `seq_len`; a pair with either row too long is
dropped (or both truncated: `data.too_long`). A malformed row (a field missing, an empty answer,
a wrong type, prompts that differ) stops with `file:line: reason` (or is skipped and counted).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import grain
import numpy as np

from llada_jax.data.chat import encode_sft_example
from llada_jax.data.pipeline import check_pipeline_args, row_batches
from llada_jax.data.rows import scan_rows
from llada_jax.data.sft import PadRow, SFTRows, fit_row
from llada_jax.data.sources import DataError, DataStats


def _messages(value: Any, name: str) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"'{name}' must be a string or a non-empty list of messages, got {type(value).__name__}")
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ValueError(f"'{name}'[{i}] must be an object with string 'role' and 'content'")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _answer(messages: list[dict], name: str) -> str:
    if messages[-1]["role"] != "assistant":
        raise ValueError(f"the last message of '{name}' must be the assistant's answer, got role "
                         f"'{messages[-1]['role']}'")
    return messages[-1]["content"]


def parse_preference_row(obj: Any, data_cfg) -> tuple[list[dict], str, str]:
    """(prompt messages, chosen answer, rejected answer) of a row, or ValueError saying what is wrong."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    pf, cf, rf = data_cfg.prompt_field, data_cfg.chosen_field, data_cfg.rejected_field
    missing = [k for k in (cf, rf) if k not in obj]
    if missing:
        raise ValueError(f"no '{missing[0]}' field: a preference row needs '{cf}' and '{rf}' (and '{pf}' unless "
                         f"they are message lists sharing the prompt) (keys: {', '.join(list(obj)[:8])})")
    chosen, rejected = obj[cf], obj[rf]
    prompt = obj.get(pf)
    if isinstance(chosen, str) or isinstance(rejected, str):
        for k, v in ((cf, chosen), (rf, rejected)):
            if not isinstance(v, str):
                raise ValueError(f"field '{k}' is {type(v).__name__}, but '{cf if k == rf else rf}' is a string")
        if not isinstance(prompt, str):
            raise ValueError(f"field '{pf}' is {type(prompt).__name__ if pf in obj else 'missing'}, expected a "
                             f"string beside string answers")
        messages = [{"role": "user", "content": prompt}]
    else:
        chosen_msgs, rejected_msgs = _messages(chosen, cf), _messages(rejected, rf)
        if prompt is None:
            messages = chosen_msgs[:-1]
            if not messages:
                raise ValueError(f"'{cf}' has no prompt messages before the answer and there is no '{pf}' field")
            if rejected_msgs[:-1] != messages:
                raise ValueError(f"'{cf}' and '{rf}' must share every message but the last (the prompt)")
        else:
            messages = _messages(prompt, pf)
            for k, msgs in ((cf, chosen_msgs), (rf, rejected_msgs)):
                if len(msgs) != 1:
                    raise ValueError(f"'{k}' must be the one assistant message after '{pf}', got {len(msgs)}")
        chosen, rejected = _answer(chosen_msgs, cf), _answer(rejected_msgs, rf)
    for k, v in ((cf, chosen), (rf, rejected)):
        if not v.strip():
            raise ValueError(f"field '{k}' is an empty answer")
    return messages, chosen, rejected


@dataclasses.dataclass(frozen=True)
class PreferenceRows:
    """Tokenized pairs: row i of `chosen` and of `rejected` share `prompt_lengths[i]` (the same prompt)."""

    chosen: SFTRows
    rejected: SFTRows

    def __len__(self) -> int:
        return len(self.chosen)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray, int]:
        (c, p), (r, _) = self.chosen[i], self.rejected[i]
        return c, r, p


def _flat(rows: list[list[int]], prompt_lengths: list[int]) -> SFTRows:
    offsets = np.cumsum([0] + [len(r) for r in rows]).astype(np.int64)
    return SFTRows(np.concatenate([np.asarray(r, np.int32) for r in rows]), offsets,
                   np.asarray(prompt_lengths, np.int32))


def build_preference_rows(data_cfg, tokenizer, seq_len: int, *, shard_index: int = 0, shard_count: int = 1,
                          stats: DataStats | None = None, split: str = "train") -> PreferenceRows:
    """Validate every preference row of `data_cfg.files`, then tokenize this process's strided shard."""
    stats = stats if stats is not None else DataStats()
    columns = (data_cfg.prompt_field, data_cfg.chosen_field, data_cfg.rejected_field)
    mine = scan_rows(data_cfg, lambda obj: parse_preference_row(obj, data_cfg), columns, shard_index=shard_index,
                     shard_count=shard_count, stats=stats, split=split, what="preference")
    chosen, rejected, prompt_lengths = [], [], []
    dropped = truncated = 0
    for messages, chosen_text, rejected_text in mine:
        prompt, chosen_ids = encode_sft_example(messages, chosen_text, tokenizer, data_cfg)
        _, rejected_ids = encode_sft_example(messages, rejected_text, tokenizer, data_cfg)
        rows = [fit_row(prompt, ids, tokenizer.eos_id, seq_len, data_cfg.too_long) for ids in (chosen_ids, rejected_ids)]
        if rows[0] is None or rows[1] is None:
            dropped += 1
            continue
        truncated += len(rows[0]) < len(prompt) + len(chosen_ids) + 1 or len(rows[1]) < len(prompt) + len(rejected_ids) + 1
        chosen.append(rows[0])
        rejected.append(rows[1])
        prompt_lengths.append(len(prompt))
    stats.add(rows=len(prompt_lengths), dropped=dropped, truncated=truncated)
    if not prompt_lengths:
        raise DataError(f"no preference pairs fit seq_len {seq_len} in this shard ({dropped} dropped as too long)")
    return PreferenceRows(_flat(chosen, prompt_lengths), _flat(rejected, prompt_lengths))


class PadPair:
    """(chosen, rejected, prompt_length) -> {"chosen", "rejected": int32 [seq_len] EOS-padded, "prompt_lengths"}."""

    def __init__(self, seq_len: int, eos_id: int):
        self.pad = PadRow(seq_len, eos_id)

    def __call__(self, item: tuple[np.ndarray, np.ndarray, int]) -> dict[str, np.ndarray]:
        chosen, rejected, prompt_length = item
        return {"chosen": self.pad((chosen, prompt_length))["tokens"],
                "rejected": self.pad((rejected, prompt_length))["tokens"], "prompt_lengths": np.int32(prompt_length)}


def make_preference_dataset(data_cfg, tokenizer, seq_len: int, batch_size: int, *, seed: int,
                            shard_index: int = 0, shard_count: int = 1,
                            stats: DataStats | None = None, split: str = "train") -> grain.IterDataset:
    """Batches {"chosen", "rejected": int32 [batch_size, seq_len], "prompt_lengths": int32 [batch_size]}.

    Shuffled by `seed` (anew each epoch), repeated `data_cfg.num_epochs` times (None: forever);
    the iterator is checkpointable like the SFT one.
    """
    check_pipeline_args(seq_len, batch_size, seed, shard_index, shard_count)
    rows = build_preference_rows(data_cfg, tokenizer, seq_len, shard_index=shard_index, shard_count=shard_count,
                                 stats=stats, split=split)
    return row_batches(rows, data_cfg, batch_size, seed=seed, row_map=PadPair(seq_len, tokenizer.eos_id))
