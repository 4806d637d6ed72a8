"""The scheduler's slot batch in process (no HTTP): throughput at concurrency N against sequential
`generate` calls and one static `generate` batch of the same N prompts, and the latency of a
lone request against a direct `generate` call. Random weights of the chosen config (the speed
of a step does not depend on them). Everything is compiled first (a warm-up round), then timed.
Prints one JSON object and a table.

    python benchmarks/slot_batch.py --config quickstart --concurrency 16
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness import add_output_args, emit, machine, markdown_table, time_call  # noqa: E402
from llada_jax.config import ModelConfig  # noqa: E402
from llada_jax.inference.sampling import generate  # noqa: E402
from llada_jax.model.transformer import init_params  # noqa: E402
from llada_jax.serving.requests import SamplingRequest  # noqa: E402
from llada_jax.serving.scheduler import Scheduler  # noqa: E402


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="quickstart", help="configs/NAME.yaml (model section)")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--prompt-length", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--block-length", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    add_output_args(ap)
    args = ap.parse_args(argv)

    cfg = ModelConfig.from_yaml(REPO / "configs" / f"{args.config}.yaml")
    params = init_params(cfg, jax.random.key(0))
    rng = np.random.default_rng(0)
    n = args.concurrency
    prompts = rng.integers(5, cfg.vocab_size, (n, args.prompt_length)).astype(np.int32)
    kw = dict(max_tokens=args.max_tokens, steps=args.steps, block_length=args.block_length)
    requests = [SamplingRequest.create(cfg, p, **kw) for p in prompts]
    gen_kw = requests[0].generate_kwargs()

    def sequential():
        for p in prompts:
            np.asarray(generate(params, cfg, p[None], **gen_kw))

    def static_batch():
        np.asarray(generate(params, cfg, prompts, **gen_kw))

    def alone():
        np.asarray(generate(params, cfg, prompts[:1], **gen_kw))

    def timed(fn):
        return time_call(fn, args.repeats).median_s  # the first call compiles and warms

    t_seq, t_static, t_alone = timed(sequential), timed(static_batch), timed(alone)
    with Scheduler(params, cfg, max_batch=n, max_queue=4 * n) as sched:
        def batched():
            tickets = [sched.submit(r) for r in requests]
            for t in tickets:
                assert t.result(timeout=600).error is None

        def lone():
            assert sched.submit(requests[0]).result(timeout=600).error is None

        t_sched, t_lone = timed(batched), timed(lone)
        compiles, planned = sched.compiles, sched.planned_compiles
    tokens = n * args.max_tokens
    result = dict(
        benchmark="slot_batch", config=args.config, concurrency=n, prompt_length=args.prompt_length, **kw,
        machine=machine(), compiles=compiles, planned_compiles=planned,
        sequential_tok_s=tokens / t_seq, static_batch_tok_s=tokens / t_static, scheduler_tok_s=tokens / t_sched,
        speedup_vs_sequential=t_seq / t_sched, fraction_of_static=t_static / t_sched,
        alone_latency_s=t_alone, scheduler_lone_latency_s=t_lone, lone_overhead=t_lone / t_alone - 1,
    )
    rows = [dict(what=f"sequential generate x{n}", s=t_seq, tok_s=tokens / t_seq),
            dict(what=f"static batch generate [{n}]", s=t_static, tok_s=tokens / t_static),
            dict(what=f"scheduler, {n} at once", s=t_sched, tok_s=tokens / t_sched),
            dict(what="generate, 1 request", s=t_alone, tok_s=args.max_tokens / t_alone),
            dict(what="scheduler, 1 request", s=t_lone, tok_s=args.max_tokens / t_lone)]
    table = markdown_table(rows, [("what", "", "s"), ("s", "seconds", ".3f"), ("tok_s", "tokens/s", ".1f")],
                           title=f"slot batch, {args.config}, P={args.prompt_length} G={args.max_tokens} "
                                 f"steps={args.steps} block={args.block_length}")
    return emit(result, table, args.json_out)


if __name__ == "__main__":
    main()
