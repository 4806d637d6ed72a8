"""Forward-pass time and TFLOP/s of the mask predictor for a config, batch and length.

    python benchmarks/forward.py --config configs/llada-8b.yaml --batch 8 --length 320   # GPU target
    python benchmarks/forward.py --config configs/tiny.yaml --batch 8 --length 256        # CPU

Random weights, stored in --param-dtype (bf16 by default so LLaDA-8B fits one GPU), compute in
--dtype. FLOPs count every matmul with full bidirectional attention (no causal halving).
Prints one JSON object (one row per setting), then a table.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from harness import add_output_args, emit, machine, markdown_table, time_call
from llada_jax.config import ModelConfig
from llada_jax.model.transformer import forward, init_params


def bench(cfg: ModelConfig, params, batch: int, length: int, iters: int, warmup: int = 2) -> dict:
    tokens = jax.random.randint(jax.random.key(1), (batch, length), 0, cfg.vocab_size, jnp.int32)
    timing = time_call(lambda: forward(params, cfg, tokens), iters, warmup=warmup)
    seconds = timing.median_s
    flops = cfg.flops_per_token(length) * batch * length
    return {
        "n_params": cfg.num_params(), "batch": batch, "length": length,
        "dtype": cfg.dtype, "param_dtype": cfg.param_dtype, "attention_impl": cfg.attention_impl,
        "compile_s": round(timing.first_s, 3), "ms": round(seconds * 1e3, 3), "ms_min": round(timing.min_s * 1e3, 3),
        "tflops_per_s": round(flops / seconds / 1e12, 3), "tokens_per_s": round(batch * length / seconds, 1),
    }


COLUMNS = [("batch", "batch", "d"), ("length", "length", "d"), ("dtype", "dtype", "s"),
           ("attention_impl", "attention", "s"), ("ms", "ms", ".3f"), ("tflops_per_s", "TFLOP/s", ".3f"),
           ("tokens_per_s", "tokens/s", ".1f"), ("compile_s", "compile (s)", ".1f")]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/tiny.yaml")
    ap.add_argument("--batch", type=int, nargs="+", default=[8])
    ap.add_argument("--length", type=int, nargs="+", default=[320])
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--param-dtype", default="bfloat16")
    ap.add_argument("--attention-impl", default=None, help="xla | cudnn | auto (default: the config's)")
    ap.add_argument("--iters", type=int, default=10)
    args = add_output_args(ap).parse_args(argv)

    cfg = ModelConfig.from_yaml(args.config)
    changes = {"dtype": args.dtype, "param_dtype": args.param_dtype}
    if args.attention_impl:
        changes["attention_impl"] = args.attention_impl
    cfg = cfg.replace(**changes)
    if cfg.max_seq_len < max(args.length):  # random weights: RoPE has no trained length limit
        cfg = cfg.replace(max_seq_len=max(args.length))
    params = jax.block_until_ready(init_params(cfg, jax.random.key(0)))
    rows = [bench(cfg, params, b, t, args.iters) for b in args.batch for t in args.length]
    result = {"benchmark": "forward", **machine(), "config": args.config, "results": rows}
    title = f"{args.config} ({cfg.num_params() / 1e9:.3f}B params) on {result['devices']} x {result['device']}"
    return emit(result, markdown_table(rows, COLUMNS, title), args.json_out)


if __name__ == "__main__":
    main()
