"""Device traces of chosen training steps, planned (`train.profile_steps`) or on demand.

A trace of optimizer steps a..b goes to `RUN/profile/steps_a-b/process_<i>/plugins/profile/
<time>/`: the XPlane file (`*.xplane.pb`, for TensorBoard's profile plugin: `tensorboard
--logdir RUN/profile`) and `perfetto_trace.json.gz` (open it at ui.perfetto.dev). Every process
writes its own. On demand, without a restart: `kill -USR1 <pid>` (that process), or touch
`RUN/PROFILE` (every process that sees the run folder; checked every `log_every` steps):
the next `train.profile_on_demand_steps` steps are traced.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path

import jax

FLAG_FILE = "PROFILE"
PROFILE_DIR = "profile"

logger = logging.getLogger(__name__)


def _mtime(path: Path) -> float | None:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


class Profiler:
    """Starts and stops `jax.profiler` traces around the loop's steps (numbered from 1)."""

    def __init__(self, run_dir: str | Path, train, *, process_index: int | None = None):
        self.run_dir = Path(run_dir)
        self.planned = tuple(train.profile_steps) if train.profile_steps else None
        self.on_demand_steps = train.profile_on_demand_steps
        self.poll_every = train.log_every
        self.process_index = jax.process_index() if process_index is None else process_index
        self.traces: list[Path] = []          # trace directories written by this process
        self._requested = False               # by SIGUSR1
        self._flag_mtime = _mtime(self.run_dir / FLAG_FILE)  # a flag file older than the run is not a request
        self._active: tuple[int, int, Path] | None = None
        self._previous = None

    def install(self) -> "Profiler":
        """Take SIGUSR1 (main thread only; the previous handler comes back on `close`)."""
        if hasattr(signal, "SIGUSR1") and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGUSR1, self._on_signal)
        return self

    def _on_signal(self, signum, frame) -> None:
        self._requested = True

    def _flag_touched(self) -> bool:
        mtime = _mtime(self.run_dir / FLAG_FILE)
        if mtime is not None and mtime != self._flag_mtime:
            self._flag_mtime = mtime
            return True
        return False

    def before_step(self, step: int) -> None:
        """Start a trace when optimizer step `step` (about to run) opens a planned or requested window."""
        if step % self.poll_every == 0 and self._flag_touched():
            self._requested = True
        if self._active is not None:
            return
        window = None
        if self.planned is not None and self.planned[0] <= step <= self.planned[1]:
            window = (step, self.planned[1])  # a resumed run inside the window traces what is left of it
            self.planned = None
        elif self._requested:
            window = (step, step + self.on_demand_steps - 1)
        self._requested = False
        if window is None:
            return
        path = self.run_dir / PROFILE_DIR / f"steps_{window[0]}-{window[1]}" / f"process_{self.process_index}"
        try:
            jax.profiler.start_trace(str(path), create_perfetto_trace=True)
        except RuntimeError as e:  # e.g. a trace the user started is running
            logger.warning("profiling steps %d-%d not started: %s", window[0], window[1], e)
            return
        self._active = (window[0], window[1], path)

    def after_step(self, step: int, state) -> Path | None:
        """Stop the trace once its last step has run (waiting for it); returns the trace directory."""
        if self._active is None or step < self._active[1]:
            return None
        return self._stop(state)

    def _stop(self, state=None) -> Path:
        start, stop, path = self._active
        self._active = None
        if state is not None:
            jax.block_until_ready(state)
        jax.profiler.stop_trace()
        self.traces.append(path)
        logger.info("profile of steps %d-%d written to %s", start, stop, path)
        return path

    def close(self) -> None:
        if self._active is not None:
            self._stop()
        if self._previous is not None:
            signal.signal(signal.SIGUSR1, self._previous)
            self._previous = None


def trace_files(run_dir: str | Path) -> list[Path]:
    """The XPlane trace files under `RUN/profile`, sorted."""
    return sorted((Path(run_dir) / PROFILE_DIR).glob("**/*.xplane.pb"))
