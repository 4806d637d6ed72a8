"""The HTTP server: OpenAI-compatible routes over a `Scheduler`, on Starlette + uvicorn.

Routes: `POST /v1/completions`, `POST /v1/chat/completions` (bodies: `serving.openai_api`),
`GET /v1/models`, `GET /health`, `GET /metrics` (Prometheus text, the server's own registry).

A request's choices are submitted as tickets; the answer is sent when every ticket has its
final frame. Streaming (`stream: true`) sends OpenAI chunks as text becomes final, left to
right, then `data: [DONE]`; with `stream_options.denoising` every model call also sends a
chunk whose choice carries `"denoising": {"step", "text"}` (masked positions as ░).

Faults: a full queue answers 429 with `Retry-After`; a client that disconnects has its tickets
cancelled (the scheduler frees the slots at its next step); a request past `request_timeout`
ends with a 504 error (a stream: an error chunk) and its tickets are cancelled; on SIGTERM the
server stops admitting (503), lets the scheduler finish what is in flight within `grace_s`
(the rest gets an error), then exits normally.
"""

from __future__ import annotations

import asyncio
import json
import math
import signal
import socket
import time
from typing import Any, Callable

from llada_jax.serving.openai_api import (ApiError, ChoiceText, ParsedRequest, ServedModel, api_message,
                                          chunk_object, created_now, denoising_text, error_body, new_id,
                                          parse_request, response_object, usage)
from llada_jax.serving.requests import RequestError
from llada_jax.serving.scheduler import CANCELLED, SHUTDOWN, QueueFull, Scheduler, ShuttingDown

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


# ----------------------------------------------------------------------------------------------
# Metrics


class Metrics:
    """The server's Prometheus registry: HTTP outcomes and latencies, plus the scheduler's gauges and
    counters read at scrape time."""

    def __init__(self, scheduler: Scheduler):
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("llada_requests", "HTTP requests by route and outcome", ("route", "status"),
                                registry=self.registry)
        self.latency = Histogram("llada_request_latency_seconds", "time from request to its last byte",
                                 ("route",), buckets=LATENCY_BUCKETS, registry=self.registry)
        self.first_chunk = Histogram("llada_time_to_first_chunk_seconds", "time from request to its first "
                                     "streamed chunk", ("route",), buckets=LATENCY_BUCKETS, registry=self.registry)
        self.registry.register(_SchedulerCollector(scheduler))

    def text(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class _SchedulerCollector:
    """`Scheduler.stats()` as Prometheus gauges and counters."""

    GAUGES = {"queue_depth": "requests waiting for a slot", "busy_slots": "slot rows in use",
              "max_batch": "slot rows in all", "compiles": "step functions compiled so far",
              "planned_compiles": "step functions the length buckets allow"}
    COUNTERS = {"model_calls": "model calls (steps over the slot batch)",
                "output_tokens": "answer positions unmasked"}
    OUTCOMES = ("finished", "cancelled", "errors")

    def __init__(self, scheduler: Scheduler):
        self.scheduler = scheduler

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        stats = self.scheduler.stats()
        for name, doc in self.GAUGES.items():
            yield GaugeMetricFamily(f"llada_{name}", doc, value=stats[name])
        for name, doc in self.COUNTERS.items():
            yield CounterMetricFamily(f"llada_{name}", doc, value=stats[name])
        outcomes = CounterMetricFamily("llada_scheduler_requests", "scheduled requests by outcome",
                                       labels=("outcome",))
        for name in self.OUTCOMES:
            outcomes.add_metric((name,), stats[name])
        outcomes.add_metric(("submitted",), stats["requests_total"])
        yield outcomes


# ----------------------------------------------------------------------------------------------
# The app


class ServerState:
    """What the routes share: the model, the scheduler, the limits, the metrics and the drain flag."""

    def __init__(self, scheduler: Scheduler, served: ServedModel, request_timeout: float):
        if not request_timeout > 0:
            raise ValueError(f"request_timeout: {request_timeout} must be > 0 seconds")
        self.scheduler = scheduler
        self.served = served
        self.request_timeout = float(request_timeout)
        self.metrics = Metrics(scheduler)
        self.draining = False
        self.in_flight = 0
        self.created = created_now()


def _json(body: dict, status: int = 200, headers: dict | None = None):
    from starlette.responses import JSONResponse

    return JSONResponse(body, status_code=status, headers=headers)


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def _merged_frames(tickets):
    """(choice index, frame) of every ticket as frames arrive, until each has its final frame."""
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i, ticket):
        async for frame in ticket.aframes():
            await queue.put((i, frame))

    tasks = [asyncio.create_task(pump(i, t)) for i, t in enumerate(tickets)]
    try:
        left = len(tickets)
        while left:
            i, frame = await queue.get()
            left -= frame.done
            yield i, frame
    finally:
        for task in tasks:
            task.cancel()


async def _until_disconnect(request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _frame_error(error: str) -> ApiError:
    if error == SHUTDOWN:
        return ApiError("server shutting down before the request finished; retry later", status=503,
                        code="shutting_down", type="server_error")
    if error == CANCELLED:
        return ApiError("the request was cancelled", status=503, code="cancelled", type="server_error")
    return ApiError(f"sampling failed: {error}", status=500, code="internal_error", type="server_error")


def _draining_error() -> ApiError:
    return ApiError("server is shutting down; not accepting requests", status=503, code="shutting_down",
                    type="server_error")


def _timeout_error(seconds: float) -> ApiError:
    return ApiError(f"request timed out after {seconds:g} s (--request-timeout)", status=504, code="timeout",
                    type="timeout_error")


def build_app(state: ServerState):
    """The Starlette app over `state` (the scheduler must be started by the caller)."""
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    metrics = state.metrics

    def submit_all(parsed: ParsedRequest):
        tickets = []
        try:
            for r in parsed.requests:
                # frames of one chunk arrive together: only a denoising stream shows each call's
                tickets.append(state.scheduler.submit(r, every_call=parsed.denoising))
        except BaseException:
            for t in tickets:
                t.cancel()
            raise
        return tickets

    async def admit(request, kind: str) -> tuple[ParsedRequest, list]:
        """Parse the body and submit its choices; ApiError for a bad body, a full queue or a drain."""
        try:
            body = json.loads(await request.body() or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ApiError(f"the request body is not valid JSON: {e}", code="invalid_json") from None
        parsed = parse_request(kind, body, state.served)
        try:
            return parsed, submit_all(parsed)
        except QueueFull as e:
            retry = max(1, math.ceil(e.retry_after))
            raise ApiError(f"the queue is full ({state.scheduler.max_queue} requests waiting); retry after {retry} s",
                           status=429, code="queue_full", type="rate_limit_error",
                           headers={"Retry-After": str(retry)}) from None
        except ShuttingDown:
            raise _draining_error() from None
        except RequestError as e:  # the scheduler refuses it (e.g. a guided request on a 1-row batch)
            message, field = api_message(e)
            raise ApiError(message, param=field, code="invalid_value") from None

    async def sampling_route(request, kind: str, route: str):
        t0 = time.monotonic()
        try:
            if state.draining:
                raise _draining_error()
            parsed, tickets = await admit(request, kind)
        except ApiError as e:
            metrics.requests.labels(route, str(e.status)).inc()
            return _json(e.body(), e.status, e.headers)
        state.in_flight += 1
        if parsed.stream:
            job = _StreamJob(state, tickets, route, t0)
            return _sse_response(_stream(state, parsed, job), job)
        try:
            return await _answer(state, request, parsed, tickets, route, t0)
        finally:
            state.in_flight -= 1

    async def completions(request):
        return await sampling_route(request, "completion", "/v1/completions")

    async def chat(request):
        return await sampling_route(request, "chat", "/v1/chat/completions")

    async def models(request):
        return _json({"object": "list", "data": [
            {"id": state.served.name, "object": "model", "created": state.created, "owned_by": "llada-jax",
             "max_model_len": state.served.cfg.max_seq_len}]})

    async def health(request):
        if state.draining:
            return _json({"status": "draining"}, 503)
        return _json({"status": "ok", **state.scheduler.stats()})

    async def metrics_route(request):
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(metrics.text(), media_type=CONTENT_TYPE_LATEST)

    return Starlette(routes=[
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics_route, methods=["GET"]),
    ])


async def _answer(state: ServerState, request, parsed: ParsedRequest, tickets, route: str, t0: float):
    """The non-streamed answer once every ticket is final (or a timeout / frame error)."""
    metrics = state.metrics
    choices = [ChoiceText(state.served, parsed.stop) for _ in tickets]

    async def collect():
        async for i, frame in _merged_frames(tickets):
            if frame.done:
                if frame.error:
                    raise _frame_error(frame.error)
                choices[i].update(frame.tokens, True)

    collector = asyncio.create_task(collect())
    watcher = asyncio.create_task(_until_disconnect(request))
    try:
        done, _ = await asyncio.wait({collector, watcher}, timeout=state.request_timeout - (time.monotonic() - t0),
                                     return_when=asyncio.FIRST_COMPLETED)
        if collector in done:
            collector.result()  # raises a frame's error
            metrics.requests.labels(route, "200").inc()
            metrics.latency.labels(route).observe(time.monotonic() - t0)
            return _json(response_object(parsed, new_id(parsed.kind), created_now(), choices))
        if watcher in done:
            metrics.requests.labels(route, "disconnected").inc()
            return _json(error_body("client disconnected", code="cancelled"), 499)
        raise _timeout_error(state.request_timeout)
    except ApiError as e:
        metrics.requests.labels(route, "timeout" if e.status == 504 else str(e.status)).inc()
        return _json(e.body(), e.status)
    finally:
        for task in (collector, watcher):
            task.cancel()
        for t in tickets:
            if not t.done:
                t.cancel()


class _StreamJob:
    """One streamed request's end: whatever way the response ends (finished, timed out, client gone,
    even before the body started), `close` cancels its unfinished tickets and records the outcome."""

    def __init__(self, state: ServerState, tickets, route: str, t0: float):
        self.state, self.tickets, self.route, self.t0 = state, tickets, route, t0
        self.status: str | None = None  # set when the body ended by itself
        self.closed = False

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for t in self.tickets:
            if not t.done:
                t.cancel()
        metrics = self.state.metrics
        metrics.requests.labels(self.route, self.status or "disconnected").inc()
        metrics.latency.labels(self.route).observe(time.monotonic() - self.t0)
        self.state.in_flight -= 1


def _sse_response(body, job: _StreamJob):
    from starlette.responses import StreamingResponse

    class SSEResponse(StreamingResponse):
        async def __call__(self, scope, receive, send):
            try:
                await super().__call__(scope, receive, send)
            finally:
                job.close()

    return SSEResponse(body, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def _stream(state: ServerState, parsed: ParsedRequest, job: _StreamJob):
    """The SSE body: role chunks (chat), text deltas as they become final, denoising frames when
    asked, finish reasons, usage, `[DONE]`; an error chunk on a timeout or a failed frame."""
    metrics, tickets, route, t0 = state.metrics, job.tickets, job.route, job.t0
    rid, created = new_id(parsed.kind), created_now()
    choices = [ChoiceText(state.served, parsed.stop) for _ in tickets]
    first = True

    def chunk(i, **kw):
        nonlocal first
        if first:
            metrics.first_chunk.labels(route).observe(time.monotonic() - t0)
            first = False
        return _sse(chunk_object(parsed, rid, created, i, **kw))

    try:
        if parsed.kind == "chat":
            for i in range(len(tickets)):
                yield chunk(i, text="", role=True)
        try:
            async with asyncio.timeout(state.request_timeout - (time.monotonic() - t0)):
                async for i, frame in _merged_frames(tickets):
                    if frame.error:
                        raise _frame_error(frame.error)
                    if choices[i].finish_reason is not None:  # already finished: its last chunk is sent
                        continue
                    delta = choices[i].update(frame.tokens, frame.done)
                    if parsed.denoising:
                        yield chunk(i, text=delta, denoising={"step": frame.step,
                                                              "text": denoising_text(frame.tokens, state.served)})
                    elif delta:
                        yield chunk(i, text=delta)
                    if choices[i].finish_reason is not None:
                        yield chunk(i, text="" if parsed.kind == "completion" else None,
                                    finish_reason=choices[i].finish_reason)
        except TimeoutError:
            raise _timeout_error(state.request_timeout) from None
        if parsed.include_usage:
            yield _sse(chunk_object(parsed, rid, created, usage_of=usage(
                parsed.prompt_tokens, sum(c.completion_tokens for c in choices))))
        yield "data: [DONE]\n\n"
        job.status = "200"
    except ApiError as e:
        job.status = "timeout" if e.status == 504 else str(e.status)
        yield _sse(e.body())
        yield "data: [DONE]\n\n"
    finally:
        job.close()


# ----------------------------------------------------------------------------------------------
# Running it


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on (host, port); port 0 takes a free one (read it from `getsockname`)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ValueError(f"--host/--port: cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(state: ServerState, sock: socket.socket, *, grace_s: float = 30.0,
          on_ready: Callable[[], None] | None = None, on_drain: Callable[[int], None] | None = None) -> None:
    """Run the app on `sock` until SIGTERM / SIGINT; the scheduler is stopped before returning.

    SIGTERM drains: new requests get 503, the scheduler finishes in-flight work within `grace_s`
    (`on_drain(requests in flight)` is called first), then the server exits normally.
    """
    import uvicorn

    class Server(uvicorn.Server):
        draining_task = None

        async def startup(self, sockets=None):
            self.loop = asyncio.get_running_loop()
            await super().startup(sockets=sockets)
            if self.started and on_ready is not None:
                on_ready()

        def handle_exit(self, sig, frame):
            if sig != signal.SIGTERM or state.draining:
                return super().handle_exit(sig, frame)
            state.draining = True  # signal handlers run on the loop's (main) thread
            if on_drain is not None:
                on_drain(state.in_flight)
            self.loop.call_soon_threadsafe(self._start_drain)

        def _start_drain(self):
            self.draining_task = asyncio.ensure_future(self._drain())

        async def _drain(self):
            await asyncio.to_thread(state.scheduler.stop, grace_s)
            deadline = time.monotonic() + 10.0  # the answers are final: let the handlers write them
            while state.in_flight > 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            self.should_exit = True

    config = uvicorn.Config(build_app(state), log_level="warning", timeout_graceful_shutdown=10,
                            lifespan="off", access_log=False)
    server = Server(config)
    try:
        server.run(sockets=[sock])
    finally:
        state.scheduler.stop(0.0)
