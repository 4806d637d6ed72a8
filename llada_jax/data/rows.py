"""Row datasets (SFT rows, preference pairs, prompt rows): every JSONL / Parquet row validated, this
process's strided shard of one split kept.

Every process validates every row in one pass (a malformed row stops with `file:line: reason` or
`file: row i: reason`, or is skipped and counted under `data.on_error=skip`) and keeps its
strided shard of the rows of `split` (`data.eval_fraction` holds some out), so every process
agrees on the rows and their order.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from llada_jax.data.errors import DataError, DataStats
from llada_jax.data.sources import expand_files, file_format, scan_jsonl
from llada_jax.data.split import in_split
from llada_jax.io.paths import path_str


def scan_rows(data_cfg, parse: Callable[[Any], Any], columns: Sequence[str], *, shard_index: int = 0,
              shard_count: int = 1, stats: DataStats | None = None, split: str = "train",
              what: str = "SFT", with_source: bool = False) -> list:
    """`parse(row)` of this process's rows of `split` in `data_cfg.files` (JSONL or Parquet), in order.

    `parse` raises ValueError saying what is wrong with a row; `columns` are the Parquet columns it
    reads; `what` names the rows in errors ("SFT", "preference", "prompt"). With `with_source`, each
    is `(parsed, where)`, `where` naming the row: "file: record k" (1-based) or "file: row k"
    (Parquet, 0-based), for errors found after the scan (e.g. a reward that fails on it).
    """
    stats = stats if stats is not None else DataStats()
    mine = []   # this process's rows, parsed while every row is validated
    total = 0   # valid rows of `split` so far, over all files
    seen = 0    # valid rows of both splits so far
    file = {"path": None, "fmt": None, "rows": 0}  # the file being read and its rows so far

    def keep(obj) -> bool:
        nonlocal total, seen
        n = file["rows"]
        file["rows"] += 1
        parsed = parse(obj)  # ValueError on a malformed row
        seen += 1
        if not in_split(seen - 1, data_cfg.eval_fraction, split):
            return True
        if total % shard_count == shard_index:
            if with_source:
                name = path_str(file["path"])
                parsed = (parsed, f"{name}: row {n}" if file["fmt"] == "parquet" else f"{name}: record {n + 1}")
            mine.append(parsed)
        total += 1
        return True

    for path in expand_files(data_cfg.files):
        fmt = file_format(path, data_cfg.format)
        file.update(path=path, fmt=fmt, rows=0)
        if fmt == "parquet":
            from llada_jax.data.parquet import scan_parquet_rows

            scan_parquet_rows(path, columns, keep, data_cfg.on_error, stats)
            continue
        if fmt != "jsonl":
            raise DataError(f"{path_str(path)}: {what} data must be JSONL or Parquet (got format '{fmt}')")
        scan_jsonl(path, keep, data_cfg.on_error, stats)
    stats.add(documents=total)
    if total < shard_count:
        raise DataError(f"{total} {what} rows in data.files {list(data_cfg.files)} cannot be split into "
                        f"{shard_count} process shards")
    return mine
