"""Where the wall time of a training run goes, per logging interval and for the whole run.

The loop wraps its parts in `StepTimer.section(name)`: `step` (dispatching the train step and
waiting for its metrics: device compute), `data` (waiting for the input pipeline and placing
the batch), `rollout` (GRPO: sampling completions, rewards, old log-probabilities), `save`
(the blocking part of a checkpoint save), `eval` (validation), `profile` (stopping a trace)
and `setup` (start-up before the first step: restore or init; charged by `mark`). Compilation
is taken out of whichever section it happened in, from JAX's own compile-time events (tracing,
lowering, backend compile) on the loop's thread, and counted as `compile`. `split()` returns
the interval's `time/<name>` seconds and `time/wall`, measured independently, so their difference
is what no section covers (logging, bookkeeping). `summary()` gives the run's totals and `goodput`: the share of wall time spent in train steps.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Callable

import jax

CATEGORIES = ("step", "data", "rollout", "save", "compile", "eval", "profile", "setup")
# JAX's compile-time events (jax/_src/dispatch.py); they do not nest.
COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")
# Settings of the input pipeline (DataConfig) that buy throughput, named by the stall warning.
GRAIN_SETTINGS = ("worker_count", "worker_buffer_size", "read_threads", "prefetch_buffer_size")

logger = logging.getLogger(__name__)


class StepTimer:
    """Accumulates section times; `split()` per logging interval, `summary()` at the end."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self._clock = clock
        self._thread = threading.get_ident()
        self._compiled = 0.0   # compile seconds seen so far (loop thread)
        self._open: list | None = None  # [name, start, compiled at start] of the running section
        self._interval = dict.fromkeys(CATEGORIES, 0.0)
        self._total = dict.fromkeys(CATEGORIES, 0.0)
        self._t_split = self._t_start = self._t_free = clock()
        self._compiled_free = 0.0
        self._last_warning: float | None = None
        self._listener = self._on_event
        jax.monitoring.register_event_duration_secs_listener(self._listener)

    def _on_event(self, event: str, seconds: float, **kwargs) -> None:
        if event in COMPILE_EVENTS and threading.get_ident() == self._thread:
            self._compiled += seconds

    def _charge(self, name: str, start: float, compiled_at_start: float, end: float) -> None:
        elapsed = end - start
        compiled = min(max(self._compiled - compiled_at_start, 0.0), elapsed)
        self._interval[name] += elapsed - compiled
        self._interval["compile"] += compiled

    @contextlib.contextmanager
    def section(self, name: str):
        if name not in CATEGORIES:
            raise ValueError(f"unknown timing section '{name}' (one of {', '.join(CATEGORIES)})")
        outer = self._open
        if outer is not None:  # a nested section interrupts the outer one
            self._charge(outer[0], outer[1], outer[2], self._clock())
        self._open = [name, self._clock(), self._compiled]
        try:
            yield
        finally:
            self._charge(name, self._open[1], self._open[2], self._clock())
            self._open = outer
            self._t_free, self._compiled_free = self._clock(), self._compiled
            if outer is not None:
                outer[1], outer[2] = self._t_free, self._compiled

    def mark(self, name: str) -> None:
        """Charge the time since the last section ended (or the timer started) to `name`."""
        now = self._clock()
        self._charge(name, self._t_free, self._compiled_free, now)
        self._t_free, self._compiled_free = now, self._compiled

    def split(self) -> dict[str, float]:
        """`time/<category>` and `time/wall` seconds since the last split (a running section up to now)."""
        now = self._clock()
        if self._open is not None:
            self._charge(self._open[0], self._open[1], self._open[2], now)
            self._open[1], self._open[2] = now, self._compiled
        record = {f"time/{k}": v for k, v in self._interval.items()}
        record["time/wall"] = now - self._t_split
        for k, v in self._interval.items():
            self._total[k] += v
        self._interval = dict.fromkeys(CATEGORIES, 0.0)
        self._t_split = now
        return record

    def summary(self) -> dict[str, float]:
        """Run totals since the timer started (`time_total/<category>`, `time_total/wall`) and `goodput`."""
        wall = self._clock() - self._t_start
        totals = {k: self._total[k] + self._interval[k] for k in CATEGORIES}
        out = {f"time_total/{k}": v for k, v in totals.items()}
        out["time_total/wall"] = wall
        out["goodput"] = totals["step"] / wall if wall > 0 else 0.0
        return out

    def check_input_wait(self, record: dict, threshold: float, data_cfg, steps: str) -> str | None:
        """The stall warning for an interval `record` whose input wait exceeds `threshold` x step time.

        Logged (at most every 10 minutes) and returned; None when the pipeline keeps up.
        """
        step, wait = record["time/step"], record["time/data"]
        if threshold <= 0 or wait <= threshold * max(step, 1e-9):
            return None
        now = self._clock()
        if self._last_warning is not None and now - self._last_warning < 600.0:
            return None
        self._last_warning = now
        settings = ", ".join(f"data.{k} (now {getattr(data_cfg, k)})" for k in GRAIN_SETTINGS)
        message = (f"steps {steps}: waiting for input took {wait:.2f}s against {step:.2f}s of train steps "
                   f"({wait / max(step, 1e-9):.0%} > train.input_wait_warning={threshold:g}); the input pipeline "
                   f"is the bottleneck: raise {settings}")
        logger.warning(message)
        return message

    def close(self) -> None:
        jax.monitoring.unregister_event_duration_listener(self._listener)


def format_summary(summary: dict[str, float]) -> str:
    """One line: goodput and the share of each category in the run's wall time."""
    wall = summary.get("time_total/wall", 0.0)
    if wall <= 0:
        return "no timed steps"
    parts = ", ".join(f"{k} {summary[f'time_total/{k}'] / wall:.1%}" for k in CATEGORIES
                      if summary.get(f"time_total/{k}", 0.0) > 0)
    return f"goodput {summary['goodput']:.1%} of {wall:.1f}s wall time ({parts})"
