"""What every benchmark script shares: the timing loop, the machine it ran on, the JSON + table output.

    from harness import add_output_args, emit, machine, markdown_table, time_call

A script times its calls with `time_call` (the first call, which compiles, is reported apart from
the median of the repeats), builds one JSON-able result dict (with `machine()` in it), and hands it
to `emit` with the table it wants printed: one JSON line, the table, and the JSON written to
`--json-out` when given. Scripts are run as `python benchmarks/NAME.py`, so this module is imported
by its bare name.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence


class Timing(NamedTuple):
    """Seconds of one timed call: the first (compile included), then the median and min of the repeats."""

    first_s: float
    median_s: float
    min_s: float
    times: tuple[float, ...]
    value: Any  # what the last call returned


def _ready(value):
    """Block until every JAX array in `value` is computed (a no-op for anything else)."""
    try:
        import jax
    except ImportError:  # a benchmark that does not use JAX
        return value
    return jax.block_until_ready(value)


def time_call(fn: Callable[[], Any], repeats: int = 3, *, warmup: int = 0) -> Timing:
    """Call `fn` once (compiling), `warmup` more times untimed, then `repeats` timed times.

    Every call's result is waited for (`jax.block_until_ready`), so asynchronous dispatch is timed
    to completion.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    t0 = time.perf_counter()
    value = _ready(fn())
    first = time.perf_counter() - t0
    for _ in range(warmup):
        value = _ready(fn())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        value = _ready(fn())
        times.append(time.perf_counter() - t0)
    return Timing(first, statistics.median(times), min(times), tuple(times), value)


def machine() -> dict:
    """Where the numbers come from: device kind and count, backend, jax version, host CPUs."""
    info = {"host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version()}
    try:
        import jax
    except ImportError:
        return info
    devices = jax.devices()
    return {**info, "backend": jax.default_backend(), "device": str(devices[0].device_kind),
            "devices": len(devices), "jax": jax.__version__}


def markdown_table(rows: Sequence[dict], columns: Sequence[tuple[str, str, str]], title: str | None = None) -> str:
    """A Markdown table of `rows`: `columns` are (key, header, format spec); a missing value prints '-'."""
    def cell(row, key, spec):
        value = row.get(key)
        if value is None:
            return "-"
        try:
            return format(value, spec)
        except (TypeError, ValueError):
            return str(value)

    lines = [title, ""] if title else []
    lines.append("| " + " | ".join(h for _, h, _ in columns) + " |")
    lines.append("|" + "---|" * len(columns))
    lines += ["| " + " | ".join(cell(r, k, s) for k, _, s in columns) + " |" for r in rows]
    return "\n".join(lines)


def add_output_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add `--json-out PATH` (the result as indented JSON) to a script's parser."""
    parser.add_argument("--json-out", type=Path, default=None, help="also write the JSON result to this file")
    return parser


def emit(result: dict, table: str, json_out: Path | None = None) -> dict:
    """Print the result as one JSON line, then the table; write the JSON to `json_out` when given."""
    print(json.dumps(result, default=str), flush=True)
    print(table, flush=True)
    if json_out is not None:
        Path(json_out).write_text(json.dumps(result, indent=1, default=str) + "\n")
    return result
