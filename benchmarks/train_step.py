"""Time the jitted train step: step time, tokens/s, TFLOP/s per device and MFU.

    python benchmarks/train_step.py --config configs/tiny.yaml train.batch_size=8 train.seq_len=128
    python benchmarks/train_step.py --config configs/llada-1b.yaml train.batch_size=8 train.seq_len=2048

Runs on whatever devices JAX sees (the mesh from the config's `mesh:` section), on random
tokens, after `--warmup` untimed steps (compilation included). FLOPs use full bidirectional
attention (`ModelConfig.flops_per_token`); the peak per device comes from `metrics.PEAK_TFLOPS`
or `train.peak_tflops`. Prints one JSON object, then a table.
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

from harness import add_output_args, emit, machine, markdown_table, time_call


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps (the first one compiles)")
    p.add_argument("overrides", nargs="*")
    args = add_output_args(p).parse_args(argv)

    from llada_jax.config import load_config
    from llada_jax.training.metrics import throughput
    from llada_jax.model.sharding import make_mesh
    from llada_jax.training.step import init_state, make_train_step

    config = load_config(args.config, [f"train.steps={args.steps + args.warmup + 10}", "train.warmup_steps=1",
                                       "train.decay_steps=1", *args.overrides])
    train = config.train
    mesh = make_mesh(config.mesh)
    state = init_state(config, mesh)
    step = make_train_step(config, mesh)
    rng = np.random.default_rng(0)
    hi = min(config.model.vocab_size, 30000)
    batch = {"tokens": rng.integers(5, hi, (train.batch_size, train.seq_len)).astype(np.int32)}
    if train.objective == "sft":
        batch["prompt_lengths"] = np.full((train.batch_size,), train.seq_len // 4, np.int32)
    box = [state]

    def one_step():
        box[0], metrics = step(box[0], batch)
        return metrics

    # The first call compiles; `--warmup - 1` more run untimed; each timed step is waited for.
    timing = time_call(one_step, args.steps, warmup=max(args.warmup - 1, 0))
    warm, dt, m = timing.first_s, timing.median_s, timing.value
    kind = jax.devices()[0].device_kind
    result = {
        "config": args.config, "overrides": args.overrides, "device_kind": kind, "num_devices": jax.device_count(),
        "mesh": dict(mesh.shape), "params": config.model.num_params(), "batch_size": train.batch_size,
        "seq_len": train.seq_len, "dtype": config.model.dtype, "remat": config.model.remat_policy,
        "warmup_s": warm, "step_time_s": dt, "loss": float(m["loss"]),
        **throughput(config.model, train, dt, jax.device_count(), kind),
    }
    result = {"benchmark": "train_step", **machine(), **result}
    mfu = None if result["mfu"] is None else 100 * result["mfu"]
    rows = [{"what": "params", "value": f"{result['params'] / 1e6:.2f}M"},
            {"what": "batch x seq", "value": f"{train.batch_size} x {train.seq_len}"},
            {"what": "step time", "value": f"{dt * 1e3:.1f} ms (median of {args.steps})"},
            {"what": "tokens/s", "value": f"{result['tokens_per_s']:.0f}"},
            {"what": "TFLOP/s per device", "value": f"{result['tflops_per_device']:.3f}"},
            {"what": "MFU", "value": "n/a (unknown peak)" if mfu is None else f"{mfu:.1f}%"}]
    title = f"{args.config} on {result['num_devices']} x {kind}"
    return emit(result, markdown_table(rows, [("what", "", "s"), ("value", "", "s")], title), args.json_out)


if __name__ == "__main__":
    main()
