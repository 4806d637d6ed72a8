"""Serving throughput and latency: `llada-jax serve` under load, against `lj.generate` on the same prompts.

Starts the server as a subprocess on a free 127.0.0.1 port (a quickstart-size model with random
weights and a small tokenizer, or `--checkpoint DIR`), then, on one fixed set of token-id prompts:

- closed loop at each `--concurrency` (each client sends its next request when the last is answered),
- an open loop: Poisson arrivals at `--rate` requests/s (default: half the top closed-loop rate),
- sequential `lj.generate`, one prompt at a time, in this process (compiled first),
- ideal static batches: the same prompts in left-padded batches of each concurrency (compiled first).

Requests stream (`stream: true`) so that the time to the first chunk is measured. Output tokens
count the answer positions (`max_tokens` each), the same for every row. Prints one JSON object
and a table (`--json-out` writes the JSON too).

    python benchmarks/serving.py                         # CPU, quickstart-size model, ~2 min
    python benchmarks/serving.py --config llada-8b --dtype bfloat16 --concurrency 1 8 32   # GPU
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from harness import add_output_args, emit, machine, markdown_table  # noqa: E402

from llada_jax.serving import DEFAULT_CHUNK_S  # noqa: E402


def make_checkpoint(directory: Path, config: str, dtype: str, max_seq_len: int, weight_scale: float) -> Path:
    """A params export of `config` with random weights and a small sentencepiece tokenizer named in its config."""
    from llada_jax.config import load_config
    from llada_jax.io.checkpoint import save_params
    from llada_jax.io.tokenizer import train_tokenizer

    rng = np.random.default_rng(0)
    words = "the a cat dog sat ran on far away and then slept 1 2 3 4 5 6 7 8 9 0 def return import".split()
    (directory / "corpus.txt").write_text("\n".join(" ".join(rng.choice(words, 16)) for _ in range(500)))
    tok = train_tokenizer([directory / "corpus.txt"], directory / "tok", 400)
    cfg, params = random_model(config, dtype, max_seq_len, weight_scale)
    path = Path(config) if Path(config).is_file() else REPO / "configs" / f"{config}.yaml"
    config = load_config(path, [f"train.tokenizer={tok}"]).replace(model=cfg)
    save_params(directory / "ckpt", config, params)
    return directory / "ckpt"


class ServerProcess:
    """`llada-jax serve` in a subprocess; `url` once its start-up line is printed."""

    def __init__(self, checkpoint: Path, max_batch: int, max_queue: int, chunk_ms: float, timeout_s: float = 600):
        env = dict(os.environ)
        self.proc = subprocess.Popen([sys.executable, "-m", "llada_jax.cli", "serve", "--checkpoint", str(checkpoint),
                                      "--port", "0", "--mesh", "none", "--max-batch", str(max_batch),
                                      "--max-queue", str(max_queue), "--chunk-ms", str(chunk_ms)],
                                     stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(x) for x in self.proc.stdout] + [lines.put(None)],
                         daemon=True).start()
        deadline, self.startup = time.monotonic() + timeout_s, ""
        while True:
            line = lines.get(timeout=max(1.0, deadline - time.monotonic()))
            if line is None:
                raise SystemExit(f"server exited: {self.proc.wait()}")
            m = re.search(r"llada-jax serve: (http://\S+)/v1 ", line)
            if m:
                self.url, self.startup = m.group(1), line.strip()
                break

    def metrics(self) -> dict:
        import httpx

        text = httpx.get(self.url + "/metrics", timeout=30).text
        return {m.group(1): float(m.group(2)) for m in re.finditer(r"^(\w+(?:\{[^}]*\})?) (\S+)$", text, re.M)}

    def stop(self) -> int:
        import signal

        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(120)


def one_request(client, body: dict) -> tuple[float, float]:
    """(latency, time to first chunk) of one streamed completion."""
    t0 = time.perf_counter()
    first = None
    with client.stream("POST", "/v1/completions", content=json.dumps(body)) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {r.read()[:200]!r}")
        for line in r.iter_lines():
            if line.startswith("data: ") and first is None:
                first = time.perf_counter() - t0
            if '"error"' in line:
                raise RuntimeError(line)
    return time.perf_counter() - t0, first if first is not None else float("nan")


def _summary(name: str, latencies, firsts, wall: float, tokens_each: int, **extra) -> dict:
    lat = np.asarray(latencies)
    row = dict(mode=name, requests=len(lat), seconds=wall, requests_per_s=len(lat) / wall,
               tokens_per_s=len(lat) * tokens_each / wall, **extra)
    if len(lat):
        row.update(p50_s=float(np.percentile(lat, 50)), p95_s=float(np.percentile(lat, 95)),
                   p99_s=float(np.percentile(lat, 99)))
    if firsts is not None and len(firsts):
        row.update(ttfc_p50_s=float(np.nanpercentile(firsts, 50)), ttfc_p95_s=float(np.nanpercentile(firsts, 95)))
    return row


class HttpSender:
    """Sends a body to the server over HTTP (one connection pool for all client threads)."""

    def __init__(self, url: str):
        import httpx

        self.client = httpx.Client(base_url=url, timeout=600, limits=httpx.Limits(max_connections=256))

    def __call__(self, body: dict) -> tuple[float, float]:
        return one_request(self.client, body)


class EngineSender:
    """Submits a body straight to an in-process `Scheduler` (no HTTP); first chunk = first frame."""

    def __init__(self, scheduler, cfg):
        self.scheduler, self.cfg = scheduler, cfg

    def __call__(self, body: dict) -> tuple[float, float]:
        from llada_jax.serving.requests import SamplingRequest

        options = {k: v for k, v in body.items() if k not in ("prompt", "stream")}
        t0 = time.perf_counter()
        ticket = self.scheduler.submit(SamplingRequest.create(self.cfg, body["prompt"], **options))
        first = None
        for frame in ticket.frames(timeout=600):
            first = time.perf_counter() - t0 if first is None else first
            if frame.error:
                raise RuntimeError(frame.error)
        return time.perf_counter() - t0, first


def closed_loop(send, bodies: list[dict], concurrency: int, tokens_each: int, label: str = "server") -> dict:
    todo: queue.Queue = queue.Queue()
    for b in bodies:
        todo.put(b)
    results: list[tuple[float, float]] = []

    def client_loop(_):
        while True:
            try:
                body = todo.get_nowait()
            except queue.Empty:
                return
            results.append(send(body))

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(client_loop, range(concurrency)))
    wall = time.perf_counter() - t0
    return _summary(f"{label} c={concurrency}", [r[0] for r in results], [r[1] for r in results], wall,
                    tokens_each, concurrency=concurrency)


def open_loop(send, bodies: list[dict], rate: float, tokens_each: int, seed: int = 0, label: str = "server") -> dict:
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, len(bodies))
    results: list[tuple[float, float]] = []

    t0 = time.perf_counter()
    with ThreadPoolExecutor(min(len(bodies), 128)) as pool:
        futures = []
        for body, gap in zip(bodies, gaps):
            time.sleep(gap)
            futures.append(pool.submit(lambda b: results.append(send(b)), body))
        for f in futures:
            f.result()
    wall = time.perf_counter() - t0
    return _summary(f"{label} open {rate:.1f}/s", [r[0] for r in results], [r[1] for r in results], wall,
                    tokens_each, rate=rate)


def direct_baselines(cfg, params, prompts: list[list[int]], sampler: dict, batch_sizes, tokens_each: int,
                     baseline_requests: int = 0):
    """Sequential `lj.generate` (one prompt at a time) and ideal static batches, compiled before timing."""
    import jax

    import llada_jax as lj
    from llada_jax.evaluation.evaluate import left_pad

    def run(ids, mask=None):
        return jax.block_until_ready(lj.generate(params, cfg, ids, mask, **sampler))

    singles = [np.asarray(p, np.int32)[None] for p in prompts[:baseline_requests or len(prompts)]]
    for shape in sorted({s.shape for s in singles}):
        run(np.ones(shape, np.int32))
    latencies = []
    t0 = time.perf_counter()
    for ids in singles:
        t1 = time.perf_counter()
        run(ids)
        latencies.append(time.perf_counter() - t1)
    rows = [_summary("lj.generate sequential", latencies, None, time.perf_counter() - t0, tokens_each,
                     latencies_s=latencies)]
    for b in sorted(set(batch_sizes) - {1}):  # a static batch of 1 is the sequential run
        n = max(b, -(-(baseline_requests or len(prompts)) // b) * b)
        batches = [left_pad(prompts[i:i + b], cfg.pad_token_id) for i in range(0, min(n, len(prompts)), b)]
        for enc in batches:  # compile every shape first
            run(enc.ids, enc.mask)
        times = []
        for enc in batches:
            t1 = time.perf_counter()
            run(enc.ids, enc.mask)
            times.append(time.perf_counter() - t1)
        per_request = [t for t, enc in zip(times, batches) for _ in range(enc.ids.shape[0])]
        rows.append(_summary(f"static batch {b}", per_request, None, sum(times), tokens_each, concurrency=b))
    return rows


def batching_ceiling(cfg, params, batch: int, length: int, repeats: int = 5) -> dict:
    """How much one model call gains from batching on this machine: the time of `lj.forward` over
    [1, length] and over [batch, length] rows, per row. No server can beat sequential calls by
    more than this ratio at that batch size (every answer still needs its model calls)."""
    import jax

    import llada_jax as lj
    from harness import time_call

    f = jax.jit(lambda p, x: lj.forward(p, cfg, x))
    one = time_call(lambda: f(params, np.ones((1, length), np.int32)), repeats).median_s
    many = time_call(lambda: f(params, np.ones((batch, length), np.int32)), repeats).median_s
    return dict(length=length, batch=batch, ms_per_row_alone=1e3 * one, ms_per_row_batched=1e3 * many / batch,
                gain=one * batch / many)


def random_model(config: str, dtype: str, max_seq_len: int, weight_scale: float):
    """(ModelConfig, random params) of a config name or YAML path."""
    import jax

    from llada_jax.config import load_config
    from llada_jax.model.transformer import init_params

    path = Path(config) if Path(config).is_file() else REPO / "configs" / f"{config}.yaml"
    overrides = [f"model.dtype={dtype}", f"model.param_dtype={dtype}"]
    if max_seq_len:
        overrides.append(f"model.max_seq_len={max_seq_len}")
    cfg = load_config(path, overrides).model
    params = init_params(cfg, jax.random.key(0))
    if weight_scale != 1.0:
        params = jax.tree.map(lambda a: (a * weight_scale).astype(a.dtype), params)
    return cfg, jax.block_until_ready(params)


def load(args, send, bodies, rows, label):
    """The closed loops at every concurrency (each after an untimed run of the same load, which
    compiles the shapes it meets) and the open loop."""
    for c in args.concurrency:
        n = min(len(bodies), max(args.min_requests, args.requests_per_client * c))
        closed_loop(send, bodies[:n], c, args.max_tokens, label)
        rows.append(closed_loop(send, bodies[:n], c, args.max_tokens, label))
    if args.rate == 0:
        return
    top = max((r for r in rows if r["mode"].startswith(f"{label} c=")), key=lambda r: r["requests_per_s"])
    rate = args.rate or 0.5 * top["requests_per_s"]
    rows.append(open_loop(send, bodies, rate, args.max_tokens, args.seed, label))


def run(args) -> dict:
    rng = np.random.default_rng(args.seed)
    lengths = rng.choice(args.prompt_lengths, args.requests)
    prompts = [[1] + rng.integers(7, 300, n - 1).tolist() for n in lengths]
    sampler = dict(steps=args.steps, gen_length=args.max_tokens, block_length=args.block_length)
    extra = dict(cache=args.cache) if args.cache else {}
    if args.threshold:
        extra["threshold"] = args.threshold
    sampler.update(extra)
    bodies = [dict(prompt=p, max_tokens=args.max_tokens, steps=args.steps, block_length=args.block_length,
                   stream=True, **extra) for p in prompts]
    label = "engine" if args.engine else "server"
    server_line, code, stats = None, None, {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.checkpoint or not args.engine:
            from llada_jax.io.model_source import load_model

            checkpoint = Path(args.checkpoint) if args.checkpoint else make_checkpoint(
                Path(tmp), args.config, args.dtype, args.max_seq_len, args.weight_scale)
            cfg, params = load_model(checkpoint)
        else:
            cfg, params = random_model(args.config, args.dtype, args.max_seq_len, args.weight_scale)
        rows = direct_baselines(cfg, params, prompts, sampler, args.concurrency, args.max_tokens,
                                args.baseline_requests)
        ceiling = batching_ceiling(cfg, params, max(args.concurrency),
                                   int(np.mean(lengths)) + args.max_tokens)
        if args.engine:
            from llada_jax.serving.scheduler import Scheduler

            scheduler = Scheduler(params, cfg, max_batch=max(max(args.concurrency), 2),
                                  max_queue=max(256, args.requests), chunk_s=args.chunk_ms / 1000).start()
            try:
                load(args, EngineSender(scheduler, cfg), bodies, rows, label)
                stats = scheduler.stats()
            finally:
                scheduler.stop(0.0)
        else:
            del params
            server = ServerProcess(checkpoint, max(max(args.concurrency), 2), max(256, args.requests), args.chunk_ms)
            try:
                load(args, HttpSender(server.url), bodies, rows, label)
                m = server.metrics()
                stats = dict(compiles=m.get("llada_compiles"), planned_compiles=m.get("llada_planned_compiles"),
                             model_calls=m.get("llada_model_calls_total"))
            finally:
                code = server.stop()
            server_line = server.startup
    seq = next(r for r in rows if r["mode"] == "lj.generate sequential")
    for r in rows:
        r["vs_sequential"] = r["tokens_per_s"] / seq["tokens_per_s"]
        static = seq if r.get("concurrency") == 1 else \
            next((s for s in rows if s["mode"] == f"static batch {r.get('concurrency')}"), None)
        if r["mode"].startswith(f"{label} c=") and static is not None:
            r["vs_static"] = r["tokens_per_s"] / static["tokens_per_s"]
    by_mode = {r["mode"]: r for r in rows}
    top_c = max(args.concurrency)
    checks = {}
    if f"{label} c={top_c}" in by_mode:
        checks[f"c={top_c} throughput vs sequential (target >= 4x)"] = by_mode[f"{label} c={top_c}"]["vs_sequential"]
        checks[f"c={top_c} throughput vs static batch (target >= 0.8x)"] = by_mode[f"{label} c={top_c}"]["vs_static"]
    checks[f"one model call at batch {ceiling['batch']} vs batch 1, per row (the ceiling of x sequential)"] = \
        ceiling["gain"]
    if f"{label} c=1" in by_mode:  # against generate on the same prompts (the closed loop sends the first n)
        alone = float(np.median(seq["latencies_s"][: by_mode[f"{label} c=1"]["requests"]]))
        checks["c=1 median latency over lj.generate on the same prompts (target <= 10%)"] = \
            by_mode[f"{label} c=1"]["p50_s"] / alone - 1.0
    return dict(benchmark="serving", machine=machine(), mode=label, server=server_line, server_exit_code=code,
                config=args.config, dtype=args.dtype, max_tokens=args.max_tokens, steps=args.steps,
                block_length=args.block_length, cache=args.cache, threshold=args.threshold, chunk_ms=args.chunk_ms,
                prompt_lengths=list(args.prompt_lengths), compiles=stats.get("compiles"),
                planned_compiles=stats.get("planned_compiles"), model_calls=stats.get("model_calls"), rows=rows,
                batching_ceiling=ceiling, checks=checks)


COLUMNS = [("mode", "mode", ""), ("requests", "requests", "d"), ("requests_per_s", "req/s", ".2f"),
           ("tokens_per_s", "tokens/s", ".0f"), ("p50_s", "p50 s", ".3f"), ("p95_s", "p95 s", ".3f"),
           ("p99_s", "p99 s", ".3f"), ("ttfc_p50_s", "TTFC p50 s", ".3f"), ("vs_sequential", "x sequential", ".2f"),
           ("vs_static", "x static", ".2f")]


def table(result: dict) -> str:
    m = result["machine"]
    title = (f"serving {result['config']} ({result['dtype']}) on {m.get('device', '?')} x{m.get('devices', '?')}, "
             f"{m.get('cpus')} CPUs: max_tokens {result['max_tokens']}, steps {result['steps']}, block "
             f"{result['block_length']}, cache {result['cache'] or 'none'}, chunks of {result['chunk_ms']:g} ms, "
             f"{result['mode']}; compiles "
             f"{result['compiles']} of {result['planned_compiles']} planned")
    checks = "\n".join(f"- {k}: {v:.2f}" for k, v in result["checks"].items())
    return markdown_table(result["rows"], COLUMNS, title) + "\n\n" + checks


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=None, help="serve this checkpoint instead of a random-weight export")
    p.add_argument("--engine", action="store_true",
                   help="drive the scheduler in this process (no HTTP, no tokenizer: random weights of --config)")
    p.add_argument("--config", default="quickstart", help="config name under configs/ or a YAML path")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--max-seq-len", type=int, default=0, help="override the model's max_seq_len (random weights)")
    p.add_argument("--weight-scale", type=float, default=1.0)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--requests", type=int, default=64, help="prompts in the set (the open loop sends all)")
    p.add_argument("--requests-per-client", type=int, default=4)
    p.add_argument("--min-requests", type=int, default=8)
    p.add_argument("--rate", type=float, default=None,
                   help="open-loop requests/s (default: half the top closed-loop rate; 0: no open loop)")
    p.add_argument("--baseline-requests", type=int, default=0,
                   help="prompts for the direct lj.generate runs (default: all; static batches round up)")
    p.add_argument("--prompt-lengths", type=int, nargs="+", default=[8, 16, 24, 40])
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--block-length", type=int, default=32)
    p.add_argument("--cache", default=None, choices=(None, "prefix", "dual"))
    p.add_argument("--threshold", type=float, default=None)
    p.add_argument("--chunk-ms", type=float, default=DEFAULT_CHUNK_S * 1000,
                   help="the server's --chunk-ms (0: one model call between admissions)")
    p.add_argument("--seed", type=int, default=0)
    args = add_output_args(p).parse_args(argv)
    result = run(args)
    emit(result, table(result), args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
