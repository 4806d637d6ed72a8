"""Forward-pass time and TFLOP/s of the mask predictor for a config, batch and length.

    python benchmarks/forward.py --config configs/llada-8b.yaml --batch 8 --length 320   # GPU target
    python benchmarks/forward.py --config configs/tiny.yaml --batch 8 --length 256        # CPU

Random weights, stored in --param-dtype (bf16 by default so LLaDA-8B fits one GPU), compute in
--dtype. FLOPs count every matmul with full bidirectional attention (no causal halving).
Prints one JSON line per setting, then a table.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from llada_jax.config import ModelConfig
from llada_jax.model.transformer import forward, init_params


def bench(cfg: ModelConfig, batch: int, length: int, iters: int, warmup: int = 2) -> dict:
    params = init_params(cfg, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (batch, length), 0, cfg.vocab_size, jnp.int32)
    run = lambda: forward(params, cfg, tokens)  # noqa: E731
    t0 = time.perf_counter()
    run().block_until_ready()
    compile_s = time.perf_counter() - t0
    for _ in range(warmup):
        run().block_until_ready()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        run().block_until_ready()
        times.append(time.perf_counter() - t0)
    seconds = float(np.median(times))
    flops = cfg.flops_per_token(length) * batch * length
    return {
        "device": jax.devices()[0].device_kind, "n_params": cfg.num_params(), "batch": batch, "length": length,
        "dtype": cfg.dtype, "param_dtype": cfg.param_dtype, "attention_impl": cfg.attention_impl,
        "compile_s": round(compile_s, 3), "ms": round(seconds * 1e3, 3), "ms_min": round(min(times) * 1e3, 3),
        "tflops_per_s": round(flops / seconds / 1e12, 3), "tokens_per_s": round(batch * length / seconds, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/tiny.yaml")
    ap.add_argument("--batch", type=int, nargs="+", default=[8])
    ap.add_argument("--length", type=int, nargs="+", default=[320])
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--param-dtype", default="bfloat16")
    ap.add_argument("--attention-impl", default=None, help="xla | cudnn | auto (default: the config's)")
    ap.add_argument("--iters", type=int, default=10)
    args = ap.parse_args()

    cfg = ModelConfig.from_yaml(args.config)
    changes = {"dtype": args.dtype, "param_dtype": args.param_dtype}
    if args.attention_impl:
        changes["attention_impl"] = args.attention_impl
    cfg = cfg.replace(**changes)
    rows = []
    for b in args.batch:
        for t in args.length:
            row = {"config": args.config, **bench(cfg, b, t, args.iters)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    cols = ["config", "device", "batch", "length", "dtype", "attention_impl", "ms", "tflops_per_s", "tokens_per_s"]
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")


if __name__ == "__main__":
    main()
