"""Training throughput accounting (FLOPs, TFLOP/s per device, MFU) and metric writers.

FLOPs come from `ModelConfig.flops_per_token` with full bidirectional attention (no causal
halving) and the backward pass (x3). Peak FLOP/s per device come from `PEAK_TFLOPS` (dense
bf16, by device kind) unless the config overrides them. Writers put one JSON object per line
in `metrics.jsonl` and TensorBoard events (tensorboardX) under `tb/`; only process 0 writes.
Keys with a group prefix (`eval/`, `time/`) keep it as their TensorBoard tag; the rest go under `train/`.
The run directory may be on a bucket: both files go through `llada_jax.io.paths.AppendFile`
(on `gs://` every write is appended at once; under other schemes the object is rewritten whole,
at most every `REMOTE_FLUSH_S` seconds and at close).
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping

import jax

from llada_jax.config import ModelConfig, TrainConfig
from llada_jax.io.paths import AppendFile, PathLike, as_path, is_file, is_remote, path_str, read_text

# Seconds between whole rewrites of a metrics.jsonl / events file under a remote scheme that cannot
# append (a local or gs:// one is flushed per write).
REMOTE_FLUSH_S = 10.0

# Dense bf16 peak TFLOP/s per device, matched as a lower-case substring of `device_kind`
# (first match wins, so the more specific names come first).
PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("v6 lite", 918.0),     # Trillium (v6e)
    ("v5 lite", 197.0),     # v5e
    ("v5e", 197.0),
    ("v5p", 459.0),
    ("v5", 459.0),
    ("v4", 275.0),
    ("v3", 123.0),
    ("h200", 989.0),
    ("h100", 989.0),        # SXM dense bf16
    ("gh200", 989.0),
    ("a100", 312.0),
    ("l40s", 362.0),
    ("a10g", 125.0),
)

# High-bandwidth memory per TPU chip in bytes (compile-check compares its plan against it).
HBM_BYTES: tuple[tuple[str, int], ...] = (
    ("v6 lite", 32 << 30),
    ("v5 lite", 16 << 30),
    ("v5e", 16 << 30),
    ("v5p", 95 << 30),
    ("v5", 95 << 30),
    ("v4", 32 << 30),
    ("v3", 32 << 30),
)


def _lookup(table, device_kind: str):
    kind = device_kind.lower()
    for key, value in table:
        if key in kind:
            return value
    return None


def peak_tflops(device_kind: str, override: float | None = None) -> float | None:
    """Per-device peak TFLOP/s: the override, else the table entry, else None (e.g. CPU)."""
    return override if override is not None else _lookup(PEAK_TFLOPS, device_kind)


def hbm_bytes(device_kind: str) -> int | None:
    return _lookup(HBM_BYTES, device_kind)


def flops_per_step(model: ModelConfig, train: TrainConfig, passes: tuple[int, int] = (1, 0)) -> float:
    """Training FLOPs of one optimizer step over the global batch.

    `passes`: sequences per batch row through forward + backward, and through a forward only
    (`Objective.passes`: pretraining and SFT (1, 0); VRPO (2n, 2n): two responses, n ELBO
    samples each, for the policy and for the frozen reference).
    """
    trained, forward_only = passes
    return (model.flops_per_token(train.seq_len, backward=True) * trained
            + model.flops_per_token(train.seq_len) * forward_only) * train.tokens_per_step


def throughput(model: ModelConfig, train: TrainConfig, seconds_per_step: float, num_devices: int,
               device_kind: str, passes: tuple[int, int] = (1, 0)) -> dict[str, float | None]:
    """tokens/s (of the batch rows), TFLOP/s per device and MFU (None when the peak is unknown) at a
    measured step time; `passes` as in `flops_per_step`."""
    flops = flops_per_step(model, train, passes)
    per_device = flops / seconds_per_step / num_devices / 1e12
    peak = peak_tflops(device_kind, train.peak_tflops)
    return {
        "tokens_per_s": train.tokens_per_step / seconds_per_step,
        "tflops_per_device": per_device,
        "mfu": None if peak is None else per_device / peak,
    }


def tensorboard_tag(key: str) -> str:
    """TensorBoard tag of a metric: grouped keys (`eval/loss`, `time/data`) as they are, others under `train/`."""
    return key if "/" in key else f"train/{key}"


class MetricWriter:
    """Appends metric dicts to `<dir>/metrics.jsonl` and TensorBoard scalars (process 0 only)."""

    def __init__(self, directory: PathLike, tensorboard: bool = True):
        self.enabled = jax.process_index() == 0
        self.directory = as_path(directory)
        self._jsonl = None
        self._tb = None
        if not self.enabled:
            return
        if is_file(self.directory):
            raise ValueError(f"run directory {path_str(self.directory)} is a file")
        self.directory.mkdir(parents=True, exist_ok=True)
        self._jsonl = AppendFile(self.directory / "metrics.jsonl", min_interval_s=REMOTE_FLUSH_S)
        if tensorboard:
            from tensorboardX import SummaryWriter

            if is_remote(self.directory):
                _route_tensorboard(str(self.directory).split("://")[0])
            self._tb = SummaryWriter(str(self.directory / "tb"))

    def write(self, step: int, values: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {k: v for k, v in values.items() if v is not None}
        self._jsonl.write(json.dumps({"step": int(step), **clean}) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for k, v in clean.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    self._tb.add_scalar(tensorboard_tag(k), v, int(step))
            self._tb.flush()

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def read_metrics(directory: PathLike) -> list[dict]:
    """The records of `<dir>/metrics.jsonl`, in order (for tests, benchmarks and reports)."""
    path = as_path(directory) / "metrics.jsonl"
    if not is_file(path):
        return []
    records = []
    for lineno, line in enumerate(read_text(path, "metrics file").splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path_str(path)}:{lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
    return records


class _EventFiles:
    """tensorboardX writer factory for a URL scheme: event files through `AppendFile` (etils.epath)."""

    def open(self, path):
        return AppendFile(path, min_interval_s=REMOTE_FLUSH_S)

    def directory_check(self, path):
        pass  # a bucket has no directories to create


def _route_tensorboard(scheme: str) -> None:
    from tensorboardX import record_writer

    record_writer.register_writer_factory(scheme, _EventFiles())
