"""Step-level continuous batching: a background thread that runs the denoising steps of a batch
of slots, admitting queued requests into free slots between model calls.

`Scheduler(params, cfg, max_batch=8, max_queue=64, chunk_s=0.05)`; `start()`; `submit(request) -> Ticket`;
`Ticket.frames()` (blocking) or `Ticket.aframes()` (asyncio) yields a `Frame` after every model
call that touched the request (or, submitted with `every_call=False`, after every chunk), the
last one with `done=True` or an `error`; `Ticket.cancel()`
frees the slot at the next admission; `stop(grace_s)` stops admitting, lets in-flight requests
finish within the grace period and answers the rest with an error: every accepted request ends
with a final frame. The slots themselves (state on the device, one jitted chunk of model calls
per shape bucket) are `serving.slots.SlotBatch`; each answer equals `lj.generate` on its prompt alone.

Between admissions the model calls run as one jitted chunk (`chunk_s`): a host round trip per
call costs ~0.5 ms of dispatch, transfers and bookkeeping, which at one request on a small model
is a tenth of the call itself. A chunk ends where the first of its requests finishes, so a
finished slot is refilled at once; what waits for a chunk's end (at most `chunk_s`) is a request
arriving while slots are free, a cancellation and a timeout. `chunk_s=0` admits between every
two calls.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import threading
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Iterator

import numpy as np

from llada_jax.config import ModelConfig
from llada_jax.serving import DEFAULT_CHUNK_S
from llada_jax.serving.requests import RequestError, SamplingRequest
from llada_jax.serving.slots import SlotBatch

CANCELLED = "cancelled"
SHUTDOWN = "server shutting down"


class QueueFull(RuntimeError):
    """`max_queue` requests are already waiting; `retry_after` is an estimate in seconds."""

    def __init__(self, retry_after: float):
        super().__init__(f"queue full: retry after {retry_after:.1f} s")
        self.retry_after = retry_after


class ShuttingDown(RuntimeError):
    """The scheduler is stopping (or not started): it admits nothing new."""


@dataclass(frozen=True)
class Frame:
    """The answer after a model call: tokens int32 [max_tokens] (mask id where still masked), the
    request's model calls so far (`step`, from 1), and whether it is the last frame (`done`,
    or `error` set: 'cancelled', 'server shutting down', or the failure)."""

    tokens: np.ndarray
    step: int
    done: bool
    error: str | None = None


class Ticket:
    """A submitted request's handle: its frames as they come, and cancellation. Thread-safe."""

    def __init__(self, request: SamplingRequest, request_id: int, mask_id: int, every_call: bool = True):
        self.request = request
        self.every_call = every_call
        self.id = request_id
        self.submitted_at = time.monotonic()
        self.cancelled = False
        self._frames: list[Frame] = []
        self._cond = threading.Condition()
        self._sinks: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = []
        self._blank = np.full(request.max_tokens, mask_id, np.int32)

    # -- consumer side
    def frames(self, timeout: float | None = None) -> Iterator[Frame]:
        """Every frame in order, blocking for the next; ends after the final one. `timeout` (s)
        bounds each wait: TimeoutError when no frame came in time."""
        i = 0
        while True:
            frame = self.get(i, timeout)
            yield frame
            if frame.done:
                return
            i += 1

    def get(self, index: int = -1, timeout: float | None = None) -> Frame:
        """Frame `index` (blocking until it exists); -1: the final frame."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not (self._frames and (self._frames[-1].done if index == -1 else len(self._frames) > index)):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"request {self.id}: no frame within {timeout} s")
                self._cond.wait(left)
            return self._frames[index]

    def result(self, timeout: float | None = None) -> Frame:
        """The final frame (blocking)."""
        return self.get(-1, timeout)

    async def aframes(self) -> AsyncIterator[Frame]:
        """`async for frame in ticket.aframes()`: the frames in order, delivered into the running loop."""
        queue: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        with self._cond:
            for frame in self._frames:
                queue.put_nowait(frame)
            self._sinks.append((loop, queue))
        try:
            while True:
                frame = await queue.get()
                yield frame
                if frame.done:
                    return
        finally:
            with self._cond:
                self._sinks.remove((loop, queue))

    def cancel(self) -> None:
        """Give up on the request (client gone, timeout): its slot is freed at the next step."""
        self.cancelled = True

    @property
    def done(self) -> bool:
        with self._cond:
            return bool(self._frames) and self._frames[-1].done

    # -- scheduler side
    def _emit(self, frame: Frame) -> None:
        with self._cond:
            if self._frames and self._frames[-1].done:
                return
            self._frames.append(frame)
            self._cond.notify_all()
            sinks = list(self._sinks)
        for loop, queue in sinks:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, frame)
            except RuntimeError:  # the consumer's loop is closed: nobody to tell
                pass

    def _fail(self, error: str, tokens: np.ndarray | None = None, step: int = 0) -> None:
        self._emit(Frame(self._blank if tokens is None else tokens, step, True, error))


class Scheduler:
    """Admits requests into the slots of one `SlotBatch` between model calls (see the module doc).

    `max_batch`: slots (a request with cfg_scale > 0 takes two: its conditional and unconditional
    rows). `max_queue`: waiting requests beyond which `submit` raises `QueueFull`. `buckets`:
    the padded row lengths (default `slots.default_length_buckets(cfg.max_seq_len)`).
    `chunk_s`: the model calls between two admissions run as one jitted chunk of about this
    many seconds, cut short where a request finishes (its slot is refilled at once); a request
    arriving meanwhile, a cancellation or a timeout waits for the chunk's end. 0: one model
    call a chunk (admission between every two calls), at one host round trip per call.
    """

    def __init__(self, params: Any, cfg: ModelConfig, *, max_batch: int = 8, max_queue: int = 64,
                 buckets: tuple[int, ...] | None = None, chunk_s: float = DEFAULT_CHUNK_S):
        if chunk_s < 0:
            raise ValueError(f"chunk_s: {chunk_s} must be >= 0")
        if max_batch < 1:
            raise ValueError(f"max_batch: {max_batch} must be >= 1")
        if max_queue < 0:
            raise ValueError(f"max_queue: {max_queue} must be >= 0")
        self.cfg = cfg
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.chunk_s = chunk_s
        self.slots = SlotBatch(params, cfg, max_batch=max_batch, length_buckets=buckets)
        self._queue: collections.deque[Ticket] = collections.deque()
        self._active: dict[int, Ticket] = {}   # slot id -> ticket
        self._cond = threading.Condition()
        self._ids = itertools.count()
        self._accepting = False
        self._running = False
        self._thread: threading.Thread | None = None
        self._durations: collections.deque[float] = collections.deque(maxlen=64)
        self._counts = dict(model_calls=0, output_tokens=0, requests_total=0, finished=0, cancelled=0, errors=0)

    # -- lifecycle
    @property
    def compiles(self) -> int:
        """Step functions compiled so far (one per shape bucket used)."""
        return self.slots.compiles

    @property
    def planned_compiles(self) -> int:
        """Upper bound of `compiles`: the number of shape buckets."""
        return self.slots.planned_compiles

    def start(self) -> "Scheduler":
        """Start the background thread; returns self."""
        with self._cond:
            if self._running:
                return self
            self._running = self._accepting = True
        self._thread = threading.Thread(target=self._loop, name="llada-scheduler", daemon=True)
        self._thread.start()
        return self

    def stop(self, grace_s: float = 30.0) -> None:
        """Stop admitting, let what is queued or running finish within `grace_s`, error out the rest."""
        deadline = time.monotonic() + grace_s
        with self._cond:
            self._accepting = False
            self._cond.notify_all()
            while (self._queue or self._active) and self._running and time.monotonic() < deadline:
                self._cond.wait(max(0.0, min(0.05, deadline - time.monotonic())))
            self._running = False
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
        with self._cond:
            for ticket in list(self._queue) + list(self._active.values()):
                ticket._fail(SHUTDOWN)
                self._counts["errors"] += 1
            self._queue.clear()
            for slot in list(self._active):
                self.slots.release(slot)
            self._active.clear()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop(0.0)

    # -- requests
    def submit(self, request: SamplingRequest, every_call: bool = True) -> Ticket:
        """Queue a request (validated: `SamplingRequest.create`); raises QueueFull or ShuttingDown.
        `every_call=False`: a frame per chunk (its last call's) instead of one per model call."""
        if self.slots.rows_needed(request) > self.max_batch:
            raise RequestError("cfg_scale", f"a guided request (cfg_scale > 0) takes two slots; this server has "
                                            f"max_batch {self.max_batch}")
        self.slots.check(request)
        with self._cond:
            if not self._accepting:
                raise ShuttingDown("the scheduler is not accepting requests")
            if len(self._queue) >= self.max_queue:
                raise QueueFull(self._retry_after())
            ticket = Ticket(request, next(self._ids), self.cfg.mask_token_id, every_call)
            self._queue.append(ticket)
            self._counts["requests_total"] += 1
            self._cond.notify_all()
        return ticket

    def stats(self) -> dict:
        """Counters and gauges for /metrics."""
        with self._cond:
            return dict(queue_depth=len(self._queue), busy_slots=self.slots.busy_rows, max_batch=self.max_batch,
                        compiles=self.compiles, planned_compiles=self.planned_compiles, **self._counts)

    def _retry_after(self) -> float:
        per_request = float(np.mean(self._durations)) if self._durations else 1.0
        waves = (len(self._queue) + len(self._active)) / self.max_batch
        return max(0.1, round(per_request * max(waves, 1.0), 1))

    # -- the loop
    def _admit(self) -> None:
        """Drop cancelled waiting requests; move queued ones into free slots, first come first served."""
        for ticket in [t for t in self._queue if t.cancelled]:
            self._queue.remove(ticket)
            ticket._fail(CANCELLED)
            self._counts["cancelled"] += 1
        while self._queue and self.slots.free_rows >= self.slots.rows_needed(self._queue[0].request):
            ticket = self._queue.popleft()
            self._active[self.slots.admit(ticket.request)] = ticket

    def _loop(self) -> None:
        while True:
            with self._cond:
                for slot, ticket in list(self._active.items()):
                    if ticket.cancelled:
                        self.slots.release(slot)
                        del self._active[slot]
                        ticket._fail(CANCELLED)
                        self._counts["cancelled"] += 1
                if not self._running:
                    return
                self._admit()
                if not self._active:
                    self._cond.notify_all()  # stop() may be waiting for the drain
                    self._cond.wait(0.1)
                    continue
            try:
                calls = self.slots.step(self.chunk_s)
            except Exception as e:  # a failed step fails its requests, never the thread
                with self._cond:
                    for ticket in self._active.values():
                        ticket._fail(f"{type(e).__name__}: {e}")
                        self._counts["errors"] += 1
                    self._active.clear()
                    self.slots.reset()  # frees every slot
                continue
            now = time.monotonic()
            with self._cond:
                self._counts["model_calls"] += len(calls)
                for j, results in enumerate(calls, start=1):
                    for r in results:
                        ticket = self._active.get(r.slot)
                        if ticket is None:
                            continue
                        self._counts["output_tokens"] += r.written
                        if r.done:
                            self.slots.release(r.slot)
                            del self._active[r.slot]
                            self._counts["finished"] += 1
                            self._durations.append(now - ticket.submitted_at)
                        if r.done or ticket.every_call or j == len(calls):
                            ticket._emit(Frame(r.tokens, r.calls, r.done))
                self._cond.notify_all()
