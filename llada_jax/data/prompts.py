"""GRPO prompt rows: JSONL/Parquet `{"prompt", "answer"}` -> left-padded prompt ids with their answer.

A row is `{"prompt": str, "answer": str | number}` or `{"messages": [...], "answer": ...}` (the
messages are the whole prompt); field names from `data.prompt_field` / `messages_field` /
`answer_field`. The prompt goes through the chat template as an SFT prompt does
(`data.chat_template`). Every process validates every row (an empty or missing answer stops
with the file and row, or is skipped and counted with on_error=skip) and keeps its strided
shard; prompts longer than the prompt width are dropped and counted.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import grain
import numpy as np

from llada_jax.data.chat import encode_sft_example, parse_sft_row
from llada_jax.data.pipeline import check_pipeline_args, row_batches
from llada_jax.data.rows import scan_rows
from llada_jax.data.sources import DataError, DataStats


def parse_prompt_row(obj: Any, data_cfg) -> tuple[list[dict], str, str]:
    """(prompt messages, prompt text, answer) of a row, or ValueError saying what is wrong."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    af, pf, mf = data_cfg.answer_field, data_cfg.prompt_field, data_cfg.messages_field
    if af not in obj:
        raise ValueError(f"missing '{af}' (the reference answer; keys: {', '.join(list(obj)[:8])})")
    answer = obj[af]
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        raise ValueError(f"field '{af}' is {type(answer).__name__}, not a string or number")
    answer = str(answer)
    if not answer.strip():
        raise ValueError(f"field '{af}' is empty")
    if mf in obj:
        msgs = obj[mf]
        if not isinstance(msgs, list) or not msgs:
            raise ValueError(f"'{mf}' must be a non-empty list of messages (the prompt)")
        # The SFT parser checks each message; the answer stands in for the assistant turn it expects.
        messages, _ = parse_sft_row({mf: [*msgs, {"role": "assistant", "content": answer}]}, data_cfg)
        return messages, messages[-1]["content"], answer
    if pf not in obj:
        raise ValueError(f"expected a '{pf}' field or a '{mf}' list (keys: {', '.join(list(obj)[:8])})")
    if not isinstance(obj[pf], str):
        raise ValueError(f"field '{pf}' is {type(obj[pf]).__name__}, not a string")
    if not obj[pf].strip():
        raise ValueError(f"field '{pf}' is empty")
    return [{"role": "user", "content": obj[pf]}], obj[pf], answer


@dataclasses.dataclass(frozen=True)
class PromptRows:
    """This process's prompt rows: ids left-padded to `width`, the texts the reward sees, sources."""

    ids: np.ndarray                # int32 [n, width], left-padded with the pad id
    lengths: np.ndarray            # int32 [n]: real prompt tokens (the last `lengths[i]` of row i)
    prompts: tuple[str, ...]       # prompt text (the last message for `messages` rows)
    answers: tuple[str, ...]
    sources: tuple[str, ...]       # "file: record k" (1-based) or "file: row k" (Parquet, 0-based)

    def __len__(self) -> int:
        return len(self.lengths)


def build_prompt_rows(data_cfg, tokenizer, width: int, pad_id: int, *, shard_index: int = 0, shard_count: int = 1,
                      stats: DataStats | None = None, split: str = "train") -> PromptRows:
    """Validate every row of `data_cfg.files`, then encode this process's strided shard."""
    stats = stats if stats is not None else DataStats()
    columns = (data_cfg.prompt_field, data_cfg.messages_field, data_cfg.answer_field)
    mine = scan_rows(data_cfg, lambda obj: parse_prompt_row(obj, data_cfg), columns, shard_index=shard_index,
                     shard_count=shard_count, stats=stats, split=split, what="prompt", with_source=True)
    ids, lengths, prompts, answers, sources = [], [], [], [], []
    dropped = 0
    for (messages, text, answer), where in mine:
        prompt, _ = encode_sft_example(messages, "", tokenizer, data_cfg)
        if len(prompt) > width:
            dropped += 1
            continue
        row = np.full(width, pad_id, np.int32)
        row[width - len(prompt):] = prompt
        ids.append(row)
        lengths.append(len(prompt))
        prompts.append(text)
        answers.append(answer)
        sources.append(where)
    stats.add(rows=len(lengths), dropped=dropped)
    if not lengths:
        raise DataError(f"no prompt rows fit the prompt width {width} (train.seq_len - sample.gen_length) in this "
                        f"shard ({dropped} dropped as too long)")
    return PromptRows(np.stack(ids), np.asarray(lengths, np.int32), tuple(prompts), tuple(answers), tuple(sources))


class _RowIndex:
    """Row i -> {"row": i}: the pipeline carries indices; ids and texts stay in `PromptRows`."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return {"row": np.int32(i)}


def make_prompt_dataset(rows: PromptRows, data_cfg, batch_size: int, *, seed: int) -> grain.IterDataset:
    """Batches {"row": int32 [batch_size]} of indices into `rows`, shuffled by `seed` (anew each
    epoch), repeated `data_cfg.num_epochs` times; checkpointable like the SFT pipeline."""
    check_pipeline_args(1, batch_size, seed, 0, 1)
    return row_batches(_RowIndex(len(rows)), data_cfg, batch_size, seed=seed)
