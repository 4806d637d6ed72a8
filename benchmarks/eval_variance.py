"""How much the fixed t grid lowers the spread of the validation ELBO, against random t.

    python benchmarks/eval_variance.py --steps 300 --seeds 32

Trains the tiny model (configs/tiny.yaml) for `--steps` on synthetic rows that repeat a short
random pattern, so the loss of a masked token depends strongly on how much of the row is
masked (as in text); then evaluates the same params on the same validation rows with `--seeds`
different noise seeds, three ways: `eval/loss` (the training objective: t ~ U(0, 1) per row,
Bernoulli masks), the ELBO with random t (`u ~ U(0, 1)`, exact mask counts) and the ELBO with
the fixed stratified grid that training runs report. Prints one JSON line per estimator (mean,
standard deviation over seeds), then a table with the spread ratio against the grid.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

from llada_jax.config import MeshConfig, load_config
from llada_jax.model.sharding import make_mesh
from llada_jax.training.step import init_state, make_train_step
from llada_jax.training.validation import Validator

REPO_CONFIG = __import__("pathlib").Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


def periodic_rows(rng, rows: int, length: int, period: int = 4) -> dict:
    """Rows repeating a random pattern of `period` tokens: a masked token is easy to predict while
    a copy of it is visible, so the loss depends on how much of the row is masked (as in text)."""
    pattern = rng.integers(5, 64, (rows, period))
    return {"tokens": np.tile(pattern, (1, length // period)).astype(np.int32)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seeds", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=32)
    ap.add_argument("--eval-batches", type=int, default=4)
    args = ap.parse_args()
    config = load_config(REPO_CONFIG, [f"train.steps={args.steps}", "train.warmup_steps=10", "train.decay_steps=10",
                                       f"train.batch_size={args.batch}", f"train.seq_len={args.seq_len}",
                                       "train.learning_rate=3e-3", "train.random_length_prob=0",
                                       f"train.eval_batches={args.eval_batches}"])
    mesh = make_mesh(MeshConfig(), jax.devices()[:1])
    rng = np.random.default_rng(0)
    state, step = init_state(config, mesh), make_train_step(config, mesh)
    t0 = time.perf_counter()
    with jax.set_mesh(mesh):
        for _ in range(args.steps):
            state, metrics = step(state, periodic_rows(rng, args.batch, args.seq_len))
    train_loss = float(metrics["loss"])
    train_s = time.perf_counter() - t0
    validator = Validator(config, mesh, [periodic_rows(np.random.default_rng(1), args.batch, args.seq_len)
                                         for _ in range(args.eval_batches)])
    runs = {"grid": [], "random_t": [], "loss": []}
    for seed in range(args.seeds):
        grid = validator(state.params, seed=seed)
        runs["grid"].append(grid["eval/elbo_nats"])
        runs["loss"].append(grid["eval/loss"])
        runs["random_t"].append(validator(state.params, seed=seed, grid=False)["eval/elbo_nats"])
    rows = args.eval_batches * args.batch
    base = float(np.std(runs["grid"]))
    results = []
    for name, label in (("grid", "ELBO, fixed t grid"), ("random_t", "ELBO, random t"),
                        ("loss", "eval/loss (training objective)")):
        v = np.asarray(runs[name])
        results.append({"estimator": label, "mean_nats": float(v.mean()), "std_over_seeds": float(v.std()),
                        "std_ratio_vs_grid": float(v.std()) / base, "variance_ratio_vs_grid": float(v.var()) / base**2,
                        "seeds": args.seeds, "rows": rows, "seq_len": args.seq_len, "train_steps": args.steps,
                        "train_loss": train_loss, "train_seconds": train_s, "device": jax.devices()[0].device_kind})
        print(json.dumps(results[-1]))
    print(f"\n{'estimator':34s} {'mean (nats/tok)':>16s} {'std over seeds':>15s} {'std / grid std':>15s}")
    for r in results:
        print(f"{r['estimator']:34s} {r['mean_nats']:16.4f} {r['std_over_seeds']:15.5f} {r['std_ratio_vs_grid']:15.2f}")


if __name__ == "__main__":
    main()
