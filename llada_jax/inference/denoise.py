"""The denoising step shared by `sampling.generate` and the server's slot batch: one transfer.

Given the logits of each row's current window (its block, [B, W, V]) `transfer` proposes a
token per position, scores its confidence and writes the chosen ones (docs/semantics.md,
Sampling, steps 2-7). Every setting is per row (`RowOptions`): a field is either a Python
value, the same for the whole batch and resolved when tracing (what `generate` passes: its
compiled code is exactly the single-option code), or an array [B] (the slot batch, where each
row is its own request with its own schedule).

Randomness is drawn by the caller and passed in, so that each row sees the bits it would see
alone: `generate` draws [B, K, V] from one key per step, the slot batch draws [1, W, V] per row
from that row's key (threefry is partitionable: a row's first K positions of a [1, W, V] draw
are the [1, K, V] draw).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from llada_jax.config import REMASKING, ModelConfig


class RowOptions(NamedTuple):
    """Per-row step settings: each a Python value (batch-wide) or an array [B]."""

    remasking: Any = "low_confidence"   # str, or int32 [B] indices into REMASKING
    sample: Any = False                 # temperature > 0: Gumbel-max in float64
    temperature: Any = 0.0
    logits_eos_inf: Any = False
    confidence_eos_eot_inf: Any = False
    use_threshold: Any = False
    threshold: Any = 1.0
    count: Any = None                   # int32 [B]: tokens to write (schedule rows)


def _rows(flag, a, b):
    """`a` where the row's `flag` holds else `b`; a Python flag picks one side when tracing."""
    if flag is True:
        return a
    if flag is False:
        return b
    flag = jnp.asarray(flag)
    ndim = max(jnp.ndim(a), jnp.ndim(b))
    return jnp.where(flag.reshape(flag.shape + (1,) * (ndim - flag.ndim)), a, b)


def _set_column(logits, column: int, flag, value):
    """logits[..., column] = value in the rows where `flag` holds."""
    if flag is False:
        return logits
    if flag is True:
        return logits.at[..., column].set(value)
    return logits.at[..., column].set(_rows(flag, value, logits[..., column]))


def _per_row(value, dtype):
    """A [B, 1, 1]-broadcastable view of a per-row value (or the scalar)."""
    value = jnp.asarray(value, dtype)
    return value.reshape(value.shape + (1, 1)) if value.ndim == 1 else value


def _confidence(kind: str, logits, x0, lse):
    if kind == "low_confidence":
        return jnp.exp(jnp.take_along_axis(logits, x0[..., None], axis=-1)[..., 0] - lse)
    if kind == "margin":
        top2 = jnp.exp(jax.lax.top_k(logits, 2)[0] - lse[..., None])
        return top2[..., 0] - top2[..., 1]
    # entropy: negative entropy, as Dream
    probs = jnp.exp(logits - lse[..., None])
    return jnp.sum(probs * jnp.log(probs + 1e-10), axis=-1)


def propose(logits, masked, opts: RowOptions, cfg: ModelConfig, gumbel_u=None, rand_u=None):
    """Candidate tokens x0 [B, W] and their confidence (-inf where not masked).

    `gumbel_u`: float64 uniforms [B, W, V] (rows that sample); `rand_u`: float32 [B, W]
    (random remasking).
    """
    neg_inf = jnp.asarray(-jnp.inf, logits.dtype)
    logits = _set_column(logits, cfg.eos_token_id, opts.logits_eos_inf, neg_inf)
    # The mask id is never a candidate: the release could "write" it and leave the position masked
    # (a trained LLaDA never predicts it; an untrained model can, and a block would never finish).
    greedy = None if opts.sample is True else \
        jnp.argmax(logits.at[..., cfg.mask_token_id].set(-jnp.inf), axis=-1).astype(jnp.int32)
    noisy = None
    if opts.sample is not False:
        t = _per_row(opts.temperature, jnp.float64)
        scores = jnp.exp(logits.astype(jnp.float64)) / (-jnp.log(gumbel_u)) ** t
        noisy = jnp.argmax(scores.at[..., cfg.mask_token_id].set(-jnp.inf), axis=-1).astype(jnp.int32)
    x0 = _rows(opts.sample, noisy, greedy)
    if opts.confidence_eos_eot_inf is not False:
        # Release: `logits_with_noise[..., EOS] = logits[..., EOT] = -inf`. At temperature 0 the
        # noisy logits ARE the logits (same tensor), so EOS is removed from the softmax as well.
        logits = _set_column(logits, cfg.eot_token_id, opts.confidence_eos_eot_inf, neg_inf)
        not_sample = (not opts.sample) if isinstance(opts.sample, bool) else ~jnp.asarray(opts.sample)
        eos_flag = not_sample if opts.confidence_eos_eot_inf is True else \
            (jnp.asarray(opts.confidence_eos_eot_inf) & not_sample)
        logits = _set_column(logits, cfg.eos_token_id, eos_flag, neg_inf)
    if isinstance(opts.remasking, str):
        kinds = (opts.remasking,)
    else:
        kinds = REMASKING
    confs = {}
    if any(k != "random" for k in kinds):
        # Probabilities of the few tokens needed, from one logsumexp: no [B, W, V] softmax per step.
        lse = jax.nn.logsumexp(logits, axis=-1)
        confs = {k: _confidence(k, logits, x0, lse).astype(jnp.float32) for k in kinds if k != "random"}
    if "random" in kinds:
        confs["random"] = rand_u.astype(jnp.float32)
    if isinstance(opts.remasking, str):
        conf = confs[opts.remasking]
    else:
        conf = confs[REMASKING[0]]
        for i, kind in enumerate(REMASKING[1:], start=1):
            conf = jnp.where((jnp.asarray(opts.remasking) == i)[:, None], confs[kind], conf)
    conf = jnp.where(masked, conf, -jnp.inf)
    return x0, conf


def select_topk(conf, masked, k):
    """Per row, the k[b] most confident positions (ties: lower index first)."""
    order = jnp.argsort(-conf, axis=-1, stable=True)
    rank = jnp.argsort(order, axis=-1)
    return masked & (rank < k[:, None])


def select_threshold(conf, masked, threshold):
    """Every masked position with confidence >= threshold, and always the most confident one."""
    best = jax.nn.one_hot(jnp.argmax(conf, axis=-1), conf.shape[-1], dtype=jnp.bool_)
    thr = jnp.asarray(threshold)
    thr = thr[:, None] if thr.ndim == 1 else thr
    return masked & ((conf >= thr) | best)


def transfer(logits, window, in_block, opts: RowOptions, cfg: ModelConfig, gumbel_u=None, rand_u=None):
    """One denoising step's write: `window` int32 [B, W] (the rows' current blocks; `in_block`
    marks positions that belong to them) updated from `logits` [B, W, V]. Returns
    (new window, chosen [B, W] bool)."""
    masked = (window == cfg.mask_token_id) & in_block
    x0, conf = propose(logits, masked, opts, cfg, gumbel_u, rand_u)
    if opts.use_threshold is True:
        chosen = select_threshold(conf, masked, opts.threshold)
    elif opts.use_threshold is False:
        chosen = select_topk(conf, masked, opts.count)
    else:
        chosen = _rows(opts.use_threshold, select_threshold(conf, masked, opts.threshold),
                       select_topk(conf, masked, opts.count))
    return jnp.where(chosen, x0, window), chosen


def combine_guidance(cond, uncond, cfg_scale):
    """Classifier-free guidance: `un + (cfg_scale + 1) * (cond - un)`."""
    return uncond + (cfg_scale + 1.0) * (cond - uncond)
