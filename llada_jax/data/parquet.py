"""Parquet sources (the format FineWeb and most public corpora ship in), local or on a bucket.

`ParquetSource` gives random access by row: the footer's row-group sizes map a global row to
(row group, offset), and one row group's column is read on demand and kept in a small cache,
so Grain's deterministic shuffle, sharding and exact resume work as for the other formats.
`scan_parquet_rows` yields every row as a dict (for SFT, which validates every row up front).
A malformed file or a missing column raises DataError naming the file and the column or row.
"""

from __future__ import annotations

import collections
import threading
from typing import Any, Callable, Sequence

import numpy as np

from llada_jax.data.errors import DataError, DataStats
from llada_jax.io.paths import as_path, path_str

_CACHED_ROW_GROUPS = 4


def _open(path):
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(as_path(path).open("rb"))
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError for a damaged footer
        raise DataError(f"{path_str(path)}: not a readable Parquet file ({str(e).splitlines()[0]})") from None


def _check_columns(path, pf, columns: Sequence[str], where: str) -> None:
    names = pf.schema_arrow.names
    for c in columns:
        if c not in names:
            raise DataError(f"{path_str(path)}: no column '{c}' ({where}; columns: {', '.join(names[:8])})")


class ParquetSource:
    """Documents of one Parquet file: the string in `column` of each row (empty rows: None)."""

    def __init__(self, path, column: str, on_error: str, stats: DataStats):
        self.path, self.column, self._on_error, self._stats = as_path(path), column, on_error, stats
        pf = _open(self.path)
        _check_columns(self.path, pf, [column], "data.text_field")
        sizes = [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)]
        self._starts = np.cumsum([0] + sizes)
        self._local = threading.local()
        self._cache: collections.OrderedDict[int, list] = collections.OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getstate__(self):  # picklable for Grain worker processes (file handles are reopened)
        return {k: v for k, v in self.__dict__.items() if k not in ("_local", "_cache", "_lock")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._local, self._cache, self._lock = threading.local(), collections.OrderedDict(), threading.Lock()

    def _row_group(self, g: int) -> list:
        with self._lock:
            if g in self._cache:
                self._cache.move_to_end(g)
                return self._cache[g]
        pf = getattr(self._local, "file", None)
        if pf is None:
            pf = self._local.file = _open(self.path)
        try:
            values = pf.read_row_group(g, columns=[self.column]).column(0).to_pylist()
        except Exception as e:
            raise DataError(f"{path_str(self.path)}: row group {g} unreadable ({str(e).splitlines()[0]})") from None
        with self._lock:
            self._cache[g] = values
            while len(self._cache) > _CACHED_ROW_GROUPS:
                self._cache.popitem(last=False)
        return values

    def __getitem__(self, i: int) -> str | None:
        g = int(np.searchsorted(self._starts, i, side="right")) - 1
        value = self._row_group(g)[i - int(self._starts[g])]
        if value is not None and not isinstance(value, str):
            if self._on_error == "raise":
                raise DataError(f"{path_str(self.path)}: row {i}: column '{self.column}' is "
                                f"{type(value).__name__}, not a string")
            self._stats.add(skipped=1)
            return None
        return value if value and value.strip() else None


def scan_parquet_rows(path, columns: Sequence[str], check: Callable[[Any], bool], on_error: str,
                      stats: DataStats) -> int:
    """Call `check(row_dict)` on every row (as `scan_jsonl` does for JSON lines); a row whose check
    raises ValueError stops with `file: row i: reason` or is skipped and counted (on_error='skip')."""
    pf = _open(path)
    present = [c for c in columns if c in pf.schema_arrow.names]
    if not present:
        raise DataError(f"{path_str(path)}: none of the columns {', '.join(columns)} "
                        f"(columns: {', '.join(pf.schema_arrow.names[:8])})")
    row = 0
    for g in range(pf.num_row_groups):
        for full in pf.read_row_group(g, columns=present).to_pylist():
            obj = {k: v for k, v in full.items() if v is not None}  # a null column is an absent field
            try:
                keep = check(obj)
            except ValueError as e:
                if on_error == "raise":
                    raise DataError(f"{path_str(path)}: row {row}: {e}") from None
                stats.add(skipped=1)
                keep = None
            if keep is False:
                stats.add(empty=1)
            row += 1
    return row
