"""Sampler speed: tokens/s, ms per step and model calls of the exact sampler and each fast mode.

Random weights (the speed of a step does not depend on them; the number of steps of the
threshold mode does: random weights are never confident, so expect one token a step there).
Every mode is compiled first, then timed over `--repeats` runs (median). Prints one JSON
object and a table.

    python benchmarks/sampler.py --config tiny                  # CPU
    python benchmarks/sampler.py --config llada-8b --batch 1    # GPU (bf16)
    python benchmarks/sampler.py --config llada-1b --batch 1 --modes exact,dual,threshold+dual
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness import add_output_args, emit, machine, time_call  # noqa: E402
from llada_jax.config import ModelConfig  # noqa: E402
from llada_jax.model.transformer import init_params  # noqa: E402
from llada_jax.inference.sampling import generate_with_stats  # noqa: E402

MODES = {
    "exact": dict(),
    "prefix": dict(cache="prefix"),
    "dual": dict(cache="dual"),
    "threshold": dict(threshold=0.9),
    "threshold+prefix": dict(threshold=0.9, cache="prefix"),
    "threshold+dual": dict(threshold=0.9, cache="dual"),
}


def _config(name: str, dtype: str, attention_impl: str | None, length: int) -> ModelConfig:
    path = Path(name)
    if not path.is_file():
        path = REPO / "configs" / f"{name}.yaml"
    cfg = ModelConfig.from_yaml(path)
    changes = dict(dtype=dtype, param_dtype=dtype)
    if attention_impl:
        changes["attention_impl"] = attention_impl
    if cfg.max_seq_len < length:  # random weights: RoPE has no trained length limit
        changes["max_seq_len"] = length
    return cfg.replace(**changes)


def run(args) -> dict:
    length = args.prompt_len + args.gen_length
    cfg = _config(args.config, args.dtype, args.attention_impl, length)
    params = init_params(cfg, jax.random.key(0))
    if args.weight_scale != 1.0:
        params = jax.tree.map(lambda a: (a * args.weight_scale).astype(a.dtype), params)
    params = jax.block_until_ready(params)
    rng = np.random.default_rng(0)
    prompt = rng.integers(7, min(cfg.vocab_size, 30000), (args.batch, args.prompt_len)).astype(np.int32)
    base = dict(steps=args.steps, gen_length=args.gen_length, block_length=args.block_length,
                cfg_scale=args.cfg_scale, temperature=args.temperature, key=jax.random.key(1))
    rows = []
    for mode in args.modes.split(","):
        if mode not in MODES:
            raise SystemExit(f"unknown mode '{mode}'; choose from {', '.join(MODES)}")
        opts = {**base, **MODES[mode]}
        if "threshold" in opts:
            opts["threshold"] = args.threshold
        timing = time_call(lambda: generate_with_stats(params, cfg, prompt, **opts), args.repeats)
        sec, first, calls = timing.median_s, timing.first_s, int(timing.value.model_calls)
        rows.append(dict(mode=mode, seconds=sec, compile_and_first_s=first, model_calls=calls,
                         ms_per_step=1000 * sec / calls, tokens_per_s=args.batch * args.gen_length / sec))
    exact = next((r for r in rows if r["mode"] == "exact"), None)
    for r in rows:
        r["speedup_vs_exact"] = exact["seconds"] / r["seconds"] if exact else None
    return dict(benchmark="sampler", **machine(), config=args.config, d_model=cfg.d_model, n_layers=cfg.n_layers,
                params_b=cfg.num_params() / 1e9, dtype=args.dtype, batch=args.batch, prompt_len=args.prompt_len,
                gen_length=args.gen_length, steps=args.steps, block_length=args.block_length,
                cfg_scale=args.cfg_scale, temperature=args.temperature, threshold=args.threshold,
                weight_scale=args.weight_scale,
                repeats=args.repeats, results=rows)


def table(result: dict) -> str:
    head = f"{'mode':<18}{'calls':>7}{'ms/step':>10}{'tokens/s':>11}{'seconds':>10}{'speed-up':>10}{'1st (s)':>9}"
    lines = [f"{result['config']} ({result['params_b']:.3f}B, {result['dtype']}) on {result['device']}, "
             f"batch {result['batch']}, prompt {result['prompt_len']}, gen {result['gen_length']}, "
             f"steps {result['steps']}, block {result['block_length']}", head, "-" * len(head)]
    for r in result["results"]:
        sp = f"{r['speedup_vs_exact']:.2f}x" if r["speedup_vs_exact"] else "-"
        lines.append(f"{r['mode']:<18}{r['model_calls']:>7}{r['ms_per_step']:>10.2f}{r['tokens_per_s']:>11.1f}"
                     f"{r['seconds']:>10.3f}{sp:>10}{r['compile_and_first_s']:>9.1f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="tiny", help="tiny | llada-1b | llada-8b | path to a YAML config")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--gen-length", type=int, default=256)
    p.add_argument("--steps", type=int, default=256)
    p.add_argument("--block-length", type=int, default=32)
    p.add_argument("--cfg-scale", type=float, default=0.0)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--threshold", type=float, default=0.9)
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32", "float16"))
    p.add_argument("--attention-impl", default=None, choices=("xla", "cudnn", "auto"))
    p.add_argument("--modes", default=",".join(MODES), help="comma list of " + ", ".join(MODES))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--weight-scale", type=float, default=1.0,
                   help="multiply the random weights: sharper, more confident predictions (tiny: 4 spreads the "
                        "max probability over ~0.1-0.95), so that threshold mode can skip steps")
    args = add_output_args(p).parse_args(argv)
    result = run(args)
    emit(result, table(result), args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
