"""`llada-jax serve`: an OpenAI-compatible HTTP server over a checkpoint (serving.app).

Thin: check the flags, load the tokenizer and the checkpoint (a training run folder, a
llada-jax export or a HF LLaDA directory, as `generate` takes them), start the scheduler,
print one start-up line and serve until SIGTERM (drain, exit 0) or Ctrl-C. Registered in
`cli.main` through `SERVE_SUBCOMMANDS`.
"""

from __future__ import annotations

import argparse

from llada_jax.cli.options import add_model_flags, base_sample, checkpoint_tokenizer
from llada_jax.serving import DEFAULT_CHUNK_S


def _check_flags(args) -> None:
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port: {args.port} is not in 0..65535")
    if args.max_batch < 2:
        raise ValueError(f"--max-batch: {args.max_batch} must be >= 2 (a guided request takes two slots)")
    if args.max_queue < 0:
        raise ValueError(f"--max-queue: {args.max_queue} must be >= 0")
    if not args.request_timeout > 0:
        raise ValueError(f"--request-timeout: {args.request_timeout:g} must be > 0 seconds")
    if args.chunk_ms < 0:
        raise ValueError(f"--chunk-ms: {args.chunk_ms:g} must be >= 0 milliseconds")
    if args.drain_timeout < 0:
        raise ValueError(f"--drain-timeout: {args.drain_timeout:g} must be >= 0 seconds")


def _model_name(checkpoint) -> str:
    """The served model's id: the checkpoint directory's name (with @STEP for a run's step)."""
    from llada_jax.io.model_source import resolve_source

    source = resolve_source(checkpoint)
    return source.path.name + (f"@{source.step}" if source.kind == "run" else "")


def _cmd_serve(args: argparse.Namespace) -> int:
    _check_flags(args)
    from llada_jax.cli.options import eval_mesh
    from llada_jax.evaluation.evaluate import place_params
    from llada_jax.io.model_source import load_model
    from llada_jax.io.tokenizer import check_tokenizer_matches
    from llada_jax.serving.app import ServerState, bind_socket, serve
    from llada_jax.serving.openai_api import ServedModel
    from llada_jax.serving.scheduler import Scheduler

    sample = base_sample(args.checkpoint)
    tokenizer = checkpoint_tokenizer(args)
    cfg, params = load_model(args.checkpoint)
    check_tokenizer_matches(tokenizer, cfg)
    served = ServedModel(_model_name(args.checkpoint), cfg, tokenizer, sample)
    mesh = eval_mesh(args.mesh)
    sock = bind_socket(args.host, args.port)
    scheduler = Scheduler(place_params(params, cfg, mesh), cfg, max_batch=args.max_batch,
                          max_queue=args.max_queue, chunk_s=args.chunk_ms / 1000).start()
    state = ServerState(scheduler, served, args.request_timeout)
    host, port = sock.getsockname()[:2]
    url = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
    buckets = scheduler.slots.length_buckets

    def ready():
        print(f"llada-jax serve: {url}/v1 model {served.name} ({cfg.n_layers} layers, d_model {cfg.d_model}, "
              f"max_seq_len {cfg.max_seq_len}), slots {args.max_batch}, queue {args.max_queue}, "
              f"buckets {', '.join(map(str, buckets)) if buckets else '-'}, "
              f"compiles planned {scheduler.planned_compiles}", flush=True)

    def drain(in_flight: int):
        print(f"llada-jax serve: SIGTERM: draining {in_flight} request(s) in flight (grace "
              f"{args.drain_timeout:g} s), new requests get 503", flush=True)

    try:
        serve(state, sock, grace_s=args.drain_timeout, on_ready=ready, on_drain=drain)
    finally:
        sock.close()
    stats = scheduler.stats()
    print(f"llada-jax serve: stopped after {stats['finished']} finished, {stats['cancelled']} cancelled, "
          f"{stats['errors']} failed request(s); {stats['model_calls']} model calls", flush=True)
    return 0


def _add_serve(sub) -> None:
    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server with step-level continuous batching")
    add_model_flags(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (0: a free one, printed at start-up)")
    p.add_argument("--max-batch", type=int, default=8, help="slots: rows in the batch of one model call")
    p.add_argument("--max-queue", type=int, default=64, help="waiting requests beyond which new ones get 429")
    p.add_argument("--chunk-ms", type=float, default=DEFAULT_CHUNK_S * 1000,
                   help="model calls between two admissions run as one jitted chunk of about this many ms, cut "
                        "short where a request finishes (default %(default)g; 0: admit between every two calls)")
    p.add_argument("--request-timeout", type=float, default=600.0,
                   help="seconds a request may take (queue included) before it ends with an error")
    p.add_argument("--drain-timeout", type=float, default=30.0,
                   help="on SIGTERM, seconds in-flight requests get to finish before they end with an error")
    p.set_defaults(func=_cmd_serve)


SERVE_SUBCOMMANDS = [_add_serve]
