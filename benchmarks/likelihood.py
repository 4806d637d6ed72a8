"""Likelihood speed: `lj.log_likelihood` against the release's `get_log_likelihood` estimator.

The baseline is the release's algorithm (SPEC section 4) written out plainly in NumPy/JAX, as the
release runs it: a Python loop over the `mc_num / batch_size` minibatches; per minibatch the
masks drawn on the host (k ~ U{1..La}, row j masks m_j answer tokens by a random permutation),
a full-sequence forward returning the full float32 logits [b, T, V] (`lj.forward`), and the
cross entropy of the masked tokens divided by p_mask. Ours runs every minibatch in one jitted
scan and applies the output head only to the answer positions, in chunks.

Same model (random weights, LLaDA's 126,464-token vocabulary), same CPU, same mc_num and
batch size; both are compiled first (untimed), then timed over `--repeats` runs (median).
Prints one JSON object and a table.

    python benchmarks/likelihood.py                                     # 4 layers, prompt 96, answer 32
    python benchmarks/likelihood.py --prompt-len 32 --answer-len 96
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import llada_jax as lj  # noqa: E402
from harness import add_output_args, emit, machine, time_call  # noqa: E402
from llada_jax.config import ModelConfig  # noqa: E402


@jax.jit
def _masked_ce_sum(logits, targets, mask, p_mask):
    """sum over masked positions of CE / p_mask (the release's F.cross_entropy on logits[mask])."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    ce = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    return jnp.sum(jnp.where(mask, ce / p_mask, 0.0))


def release_style_log_likelihood(params, cfg, prompt, answer, *, mc_num: int, batch_size: int, seed: int) -> float:
    """The release's estimator, loop for loop: full-sequence forward, full logits, host-side masks."""
    rng = np.random.default_rng(seed)
    seq = np.concatenate([prompt, answer])[None].repeat(batch_size, 0).astype(np.int32)
    p, la = len(prompt), len(answer)
    losses = []
    for _ in range(mc_num // batch_size):
        k = int(rng.integers(1, la + 1))
        x = np.round(np.linspace(k, k + (batch_size - 1) * la / batch_size, batch_size)).astype(np.int64)
        m = ((x - 1) % la) + 1                                          # masked tokens per row
        is_mask = np.zeros_like(seq, bool)
        for j in range(batch_size):
            is_mask[j, p + rng.permutation(la)[: m[j]]] = True
        noisy = np.where(is_mask, cfg.mask_token_id, seq)
        logits = lj.forward(params, cfg, noisy)                         # [b, T, V] float32
        p_mask = np.broadcast_to((m / la)[:, None], seq.shape).astype(np.float32)
        losses.append(float(_masked_ce_sum(logits, seq, is_mask, p_mask)) / batch_size)
    return -sum(losses) / len(losses)


def run(args) -> dict:
    cfg = ModelConfig(vocab_size=126464, d_model=args.d_model, n_layers=args.layers, n_heads=args.heads,
                      n_kv_heads=args.heads, mlp_hidden_size=args.mlp, max_seq_len=max(4096, args.prompt_len +
                                                                                       args.answer_len),
                      dtype=args.dtype, param_dtype="float32", loss_chunk_size=args.chunk)
    params = jax.block_until_ready(lj.init_params(cfg, jax.random.key(0)))
    rng = np.random.default_rng(0)
    prompt = rng.integers(100, 30000, args.prompt_len).astype(np.int32)
    answer = rng.integers(100, 30000, args.answer_len).astype(np.int32)
    opts = dict(mc_num=args.mc_num, batch_size=args.batch_size)
    ours = time_call(lambda: lj.log_likelihood(params, cfg, prompt, answer, key=jax.random.key(1), **opts),
                     args.repeats)
    base = time_call(lambda: release_style_log_likelihood(params, cfg, prompt, answer, seed=1, **opts), args.repeats)
    rows = [dict(method="release-style loop (full logits)", seconds=base.median_s, first_s=base.first_s,
                 estimate=float(base.value)),
            dict(method="llada_jax.log_likelihood", seconds=ours.median_s, first_s=ours.first_s,
                 estimate=float(ours.value))]
    return dict(benchmark="likelihood", **machine(), vocab_size=cfg.vocab_size, d_model=cfg.d_model, n_layers=cfg.n_layers,
                params_m=cfg.num_params() / 1e6, dtype=cfg.dtype, prompt_len=args.prompt_len,
                answer_len=args.answer_len, mc_num=args.mc_num, batch_size=args.batch_size,
                loss_chunk_size=cfg.loss_chunk_size, repeats=args.repeats, speedup=base.median_s / ours.median_s, results=rows)


def table(result: dict) -> str:
    head = f"{'method':<34}{'seconds':>9}{'1st (s)':>9}{'estimate':>12}"
    lines = [f"{result['n_layers']} layers, d_model {result['d_model']}, vocab {result['vocab_size']} "
             f"({result['params_m']:.0f}M params, {result['dtype']}) on {result['device']}: prompt "
             f"{result['prompt_len']}, answer {result['answer_len']}, mc_num {result['mc_num']}, "
             f"batch {result['batch_size']}", head, "-" * len(head)]
    for r in result["results"]:
        lines.append(f"{r['method']:<34}{r['seconds']:>9.2f}{r['first_s']:>9.1f}{r['estimate']:>12.2f}")
    lines.append(f"speed-up of llada_jax.log_likelihood over the release-style loop: {result['speedup']:.2f}x")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--mlp", type=int, default=768)
    p.add_argument("--prompt-len", type=int, default=96)
    p.add_argument("--answer-len", type=int, default=32)
    p.add_argument("--mc-num", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--chunk", type=int, default=256, help="model.loss_chunk_size")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--repeats", type=int, default=3)
    args = add_output_args(p).parse_args(argv)
    result = run(args)
    emit(result, table(result), args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
