"""The validation split: held-out documents (SFT: rows) of the training files, or separate files.

`data.eval_fraction = f` holds out item i of the training sources (documents in file order;
SFT: valid rows) when `floor((i + 1) f) > floor(i f)`: exactly `floor(n f)` of the first n
items, spread evenly through the files, decided one item at a time (no total needed). The
training pipelines leave those items out and the validation pipeline reads only them.
`data.eval_files` names validation files instead.
"""

from __future__ import annotations

import math
from typing import Sequence

SPLITS = ("train", "eval")


def is_held_out(index: int, fraction: float) -> bool:
    """Whether item `index` of the training sources belongs to the validation split."""
    return fraction > 0 and math.floor((index + 1) * fraction) > math.floor(index * fraction)


def in_split(index: int, fraction: float, split: str) -> bool:
    """Whether item `index` belongs to `split` ('train' or 'eval') under `data.eval_fraction`."""
    if split not in SPLITS:
        raise ValueError(f"split '{split}' is not one of {', '.join(SPLITS)}")
    return is_held_out(index, fraction) == (split == "eval")


class IndexSubset(Sequence):
    """The items of `source` at `indices`, in order (a random-access view for Grain)."""

    def __init__(self, source: Sequence, indices: Sequence[int]):
        self._source, self._indices = source, list(indices)

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, i: int):
        return self._source[self._indices[i]]


def split_documents(docs: Sequence, fraction: float, split: str) -> Sequence:
    """`docs` itself when nothing is held out, else the view of its items in `split`."""
    if fraction <= 0 and split == "train":
        return docs
    return IndexSubset(docs, [i for i in range(len(docs)) if in_split(i, fraction, split)])


def eval_data_config(data_cfg):
    """`(data config, split)` of the validation pipeline, or None when no validation data is configured.

    Read in order, in this process (no shuffle, no worker processes); repeated, so a small
    split still fills a fixed number of batches.
    """
    fixed = dict(shuffle=False, shuffle_window=0, num_epochs=None, worker_count=0)
    if data_cfg.eval_files:
        return data_cfg.replace(files=tuple(data_cfg.eval_files), eval_files=(), eval_fraction=0.0, **fixed), "train"
    if data_cfg.eval_fraction > 0:
        return data_cfg.replace(**fixed), "eval"
    return None
