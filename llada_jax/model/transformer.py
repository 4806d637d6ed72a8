"""The LLaDA mask predictor (docs/semantics.md, The model): a LLaMA-style transformer without a causal mask.

Used through pure functions: `init_params(cfg, key)` returns a plain pytree of arrays and
`forward(params, cfg, tokens, attention_mask)` returns float32 logits. The layers are one
`nn.scan`ned block (one compiled layer whatever `n_layers` is), rematerialised by the
config's named policy. Every parameter carries logical axis names (see `param_logical_axes`);
`sharding.py` maps them to a device mesh.

The samplers use two extra entry points built on the same module: `forward_fill_cache`
returns the keys/values of every layer alongside the logits, and `forward_window` recomputes
a contiguous window of positions against such a cache (the Fast-dLLM prefix/dual caches).
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from llada_jax.config import ModelConfig
from llada_jax.model.attention import attention

Params = Any

# Logical axis names used by the parameters and the activation constraints.
PARAM_AXES = ("vocab", "embed", "heads", "kv_heads", "head_dim", "mlp", "norm", "layers")
ACTIVATION_AXES = ("act_batch", "act_length", "act_embed", "act_heads", "act_kv_heads", "act_mlp", "act_vocab")

_REMAT_POLICIES = {
    "full": None,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class KVCache(NamedTuple):
    """Keys and values of every layer: each [n_layers, B, S, n_kv_heads, head_dim]."""

    k: jax.Array
    v: jax.Array


def _dtype(name: str):
    return jnp.dtype(name)


def _constrain(x, names):
    return nn.with_logical_constraint(x, names)


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """RMSNorm in float32, cast back to the input dtype, then times the weight (as the release)."""
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return xf.astype(x.dtype) * weight.astype(x.dtype)


def rope_tables(positions: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """float32 (sin, cos) of shape [B, T, head_dim] for NeoX-style rotary embeddings."""
    inv_freq = theta ** (-jnp.arange(0, head_dim // 2, dtype=jnp.float32) * 2.0 / head_dim)
    angles = positions.astype(jnp.float32)[..., None] * inv_freq
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.sin(angles), jnp.cos(angles)


def apply_rope(x: jax.Array, sin: jax.Array, cos: jax.Array) -> jax.Array:
    """x [B, T, heads, head_dim]; rotate_half([x1, x2]) = [-x2, x1]; computed in float32."""
    xf = x.astype(jnp.float32)
    half = xf.shape[-1] // 2
    rotated = jnp.concatenate([-xf[..., half:], xf[..., :half]], axis=-1)
    out = xf * cos[:, :, None, :] + rotated * sin[:, :, None, :]
    return out.astype(x.dtype)


def _param(module: nn.Module, name: str, shape, axes, std: float | None, cfg: ModelConfig):
    init = nn.initializers.ones if std is None else nn.initializers.normal(std)
    return module.param(name, nn.with_logical_partitioning(init, axes), shape, _dtype(cfg.param_dtype))


class Block(nn.Module):
    """One pre-norm transformer block: bidirectional attention then SwiGLU, each residual."""

    cfg: ModelConfig
    collect_kv: bool = False

    @nn.compact
    def __call__(self, x, sin, cos, key_mask, cache_k, cache_v, cache_start, cache_fresh=None):
        cfg = self.cfg
        d, n, k, h, m = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.mlp_hidden_size
        dt = _dtype(cfg.dtype)
        std = cfg.init_std
        out_std = cfg.init_std / math.sqrt(2 * cfg.n_layers)

        attn_norm = _param(self, "attn_norm", (d,), ("norm",), None, cfg)
        wq = _param(self, "q_proj", (d, n, h), ("embed", "heads", "head_dim"), std, cfg)
        wk = _param(self, "k_proj", (d, k, h), ("embed", "kv_heads", "head_dim"), std, cfg)
        wv = _param(self, "v_proj", (d, k, h), ("embed", "kv_heads", "head_dim"), std, cfg)
        wo = _param(self, "attn_out", (n, h, d), ("heads", "head_dim", "embed"), out_std, cfg)
        ff_norm = _param(self, "ff_norm", (d,), ("norm",), None, cfg)
        w_gate = _param(self, "ff_proj", (d, m), ("embed", "mlp"), std, cfg)
        w_up = _param(self, "up_proj", (d, m), ("embed", "mlp"), std, cfg)
        w_down = _param(self, "ff_out", (m, d), ("mlp", "embed"), out_std, cfg)

        x = _constrain(x, ("act_batch", "act_length", "act_embed"))
        a = rms_norm(x, attn_norm, cfg.rms_norm_eps)
        q = jnp.einsum("btd,dnh->btnh", a, wq.astype(dt))
        kk = jnp.einsum("btd,dkh->btkh", a, wk.astype(dt))
        vv = jnp.einsum("btd,dkh->btkh", a, wv.astype(dt))
        q = _constrain(apply_rope(q, sin, cos), ("act_batch", "act_length", "act_heads", None))
        kk = _constrain(apply_rope(kk, sin, cos), ("act_batch", "act_length", "act_kv_heads", None))
        vv = _constrain(vv, ("act_batch", "act_length", "act_kv_heads", None))

        if cache_k is not None and cache_fresh is not None:
            # Full-length rows: the positions marked fresh (per row) take this call's keys/values,
            # the others are read from the cache (a window of any per-row extent).
            fresh = cache_fresh[:, :, None, None]
            full_k = jnp.where(fresh, kk.astype(cache_k.dtype), cache_k)
            full_v = jnp.where(fresh, vv.astype(cache_v.dtype), cache_v)
            att_k, att_v = full_k.astype(dt), full_v.astype(dt)
        elif cache_k is not None:
            # Write this window's keys/values into the cache and attend over all of it.
            full_k = jax.lax.dynamic_update_slice_in_dim(cache_k, kk.astype(cache_k.dtype), cache_start, axis=1)
            full_v = jax.lax.dynamic_update_slice_in_dim(cache_v, vv.astype(cache_v.dtype), cache_start, axis=1)
            att_k, att_v = full_k.astype(dt), full_v.astype(dt)
        else:
            full_k, full_v = kk, vv
            att_k, att_v = kk, vv

        o = attention(q, att_k, att_v, key_mask, cfg.attention_impl)
        o = _constrain(o, ("act_batch", "act_length", "act_heads", None))
        x = x + jnp.einsum("btnh,nhd->btd", o, wo.astype(dt))

        f = rms_norm(x, ff_norm, cfg.rms_norm_eps)
        gate = jnp.einsum("btd,dm->btm", f, w_gate.astype(dt))
        up = jnp.einsum("btd,dm->btm", f, w_up.astype(dt))
        hidden = _constrain(nn.silu(gate) * up, ("act_batch", "act_length", "act_mlp"))
        x = x + jnp.einsum("btm,md->btd", hidden, w_down.astype(dt))
        x = _constrain(x, ("act_batch", "act_length", "act_embed"))
        kv_out = (full_k, full_v) if (self.collect_kv or cache_k is not None) else None
        return x, kv_out


class MaskPredictor(nn.Module):
    """Embedding, `n_layers` scanned blocks, final norm and output head.

    Returns `(logits, kv)`; with `return_hidden` the first item is `(hidden, head)` instead: the
    normed final states [B, T, D] and the head matrix [D, V], both in the compute dtype, so a
    loss can apply the head chunk by chunk (`head_logits`) and never hold [B, T, V] float32.
    """

    cfg: ModelConfig
    collect_kv: bool = False
    return_hidden: bool = False

    @nn.compact
    def __call__(self, tokens, key_mask=None, positions=None, cache=None, cache_start=0,
                 head_start=None, head_length=None, cache_fresh=None):
        cfg = self.cfg
        dt = _dtype(cfg.dtype)
        wte = _param(self, "wte", (cfg.vocab_size, cfg.d_model), ("vocab", "embed"), cfg.init_std, cfg)
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
            positions = positions + jnp.asarray(cache_start, jnp.int32)
        sin, cos = rope_tables(positions, cfg.head_dim, cfg.rope_theta)
        # Cast, then gather: the embedding's gradient (a scatter-add) is in the compute dtype.
        x = jnp.take(wte.astype(dt), tokens, axis=0)

        block = Block
        if cfg.remat_policy != "none":
            block = nn.remat(Block, policy=_REMAT_POLICIES[cfg.remat_policy], prevent_cse=False)
        layers = nn.scan(
            block,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=(nn.broadcast, nn.broadcast, nn.broadcast, 0, 0, nn.broadcast, nn.broadcast),
            length=cfg.n_layers,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )(cfg, collect_kv=self.collect_kv, name="layers")
        ck = cv = None
        if cache is not None:
            ck, cv = cache.k, cache.v
        x, kv = layers(x, sin, cos, key_mask, ck, cv, jnp.asarray(cache_start, jnp.int32), cache_fresh)

        if head_length is not None and jnp.ndim(head_start) == 1:  # per-row starts [B]
            idx = head_start[:, None] + jnp.arange(head_length, dtype=jnp.int32)[None, :]
            idx = jnp.minimum(idx, x.shape[1] - 1)  # a window running past the row: clamped, unused
            x = jnp.take_along_axis(x, idx[:, :, None], axis=1)
        elif head_length is not None:
            x = jax.lax.dynamic_slice_in_dim(x, head_start, head_length, axis=1)
        ln_f = _param(self, "ln_f", (cfg.d_model,), ("norm",), None, cfg)
        x = rms_norm(x, ln_f, cfg.rms_norm_eps)
        if cfg.weight_tying:
            head = wte.T
        else:
            head = _param(self, "ff_out", (cfg.d_model, cfg.vocab_size), ("embed", "vocab"), cfg.init_std, cfg)
        kv = None if kv is None else KVCache(*kv)
        if self.return_hidden:
            return (x, head.astype(dt)), kv
        return head_logits(x, head.astype(dt)), kv


def head_logits(hidden: jax.Array, head: jax.Array) -> jax.Array:
    """float32 logits [B, T, V] of normed hidden states [B, T, D] through the head [D, V]."""
    logits = jnp.einsum("btd,dv->btv", hidden, head, preferred_element_type=jnp.float32)
    return _constrain(logits, ("act_batch", "act_length", "act_vocab"))


def check_tokens(cfg: ModelConfig, tokens, attention_mask=None, where: str = "tokens") -> None:
    """Reject bad shapes and dtypes, and out-of-vocabulary ids in host (numpy) arrays."""
    if tokens.ndim != 2:
        raise ValueError(f"{where}: expected shape [batch, length], got {tuple(tokens.shape)}")
    if attention_mask is not None and tuple(attention_mask.shape) != tuple(tokens.shape):
        raise ValueError(
            f"attention_mask: shape {tuple(attention_mask.shape)} does not match {where} shape {tuple(tokens.shape)}"
        )
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(f"{where}: expected integer token ids, got dtype {tokens.dtype}")
    # Values are checked for host arrays only: reading a device array back would stall the
    # device on every call (and tracers have no values).
    if isinstance(tokens, jax.Array) or tokens.size == 0:
        return
    values = np.asarray(tokens)
    lo, hi = int(values.min()), int(values.max())
    if lo < 0 or hi >= cfg.vocab_size:
        bad = np.argwhere((values < 0) | (values >= cfg.vocab_size))[0]
        raise ValueError(
            f"{where}: id {int(values[tuple(bad)])} at position {tuple(int(i) for i in bad)} is outside "
            f"the vocabulary [0, {cfg.vocab_size})"
        )


def init_params(cfg: ModelConfig, key: jax.Array) -> Params:
    """Random parameters as a plain pytree (dict of arrays), per-layer weights stacked on axis 0."""
    return _init_jit(cfg, key)


@functools.partial(jax.jit, static_argnums=0)
def _init_jit(cfg: ModelConfig, key):
    variables = MaskPredictor(cfg).init(key, jnp.zeros((1, 2), jnp.int32))
    return nn.unbox(variables["params"])


def param_logical_axes(cfg: ModelConfig) -> Params:
    """Pytree like the params whose leaves are `PartitionSpec`s of logical axis names."""
    abstract = jax.eval_shape(
        lambda k: MaskPredictor(cfg).init(k, jnp.zeros((1, 2), jnp.int32)), jax.random.key(0)
    )
    return nn.get_partition_spec(abstract)["params"]


def param_shapes(cfg: ModelConfig) -> Params:
    """Pytree of `jax.ShapeDtypeStruct` of the params, without allocating them."""
    return jax.eval_shape(lambda k: init_params(cfg, k), jax.random.key(0))


def _key_mask(attention_mask):
    return None if attention_mask is None else attention_mask.astype(bool)


@functools.partial(jax.jit, static_argnums=1)
def _forward_jit(params, cfg, tokens, attention_mask):
    logits, _ = MaskPredictor(cfg).apply({"params": params}, tokens, _key_mask(attention_mask))
    return logits


def forward(params: Params, cfg: ModelConfig, tokens, attention_mask=None) -> jax.Array:
    """float32 logits [B, T, V] for token ids [B, T]; `attention_mask` marks real (non-pad) keys.

    Ids of host arrays (numpy, lists) are checked against the vocabulary; device arrays are not
    read back for that.
    """
    tokens = np.asarray(tokens) if not isinstance(tokens, (jax.Array, np.ndarray)) else tokens
    check_tokens(cfg, tokens, attention_mask)
    tokens = tokens.astype(jnp.int32)
    if attention_mask is not None:
        attention_mask = jnp.asarray(attention_mask).astype(bool)
    return _forward_jit(params, cfg, tokens, attention_mask)


def forward_hidden(params: Params, cfg: ModelConfig, tokens, attention_mask=None) -> tuple[jax.Array, jax.Array]:
    """`(hidden [B, T, D], head [D, V])` in the compute dtype: `forward` without the output head.

    For losses and likelihoods that apply the head in chunks (`head_logits`); meant to be
    called inside jitted code; `tokens` must be int32.
    """
    (hidden, head), _ = MaskPredictor(cfg, return_hidden=True).apply(
        {"params": params}, tokens, _key_mask(attention_mask))
    return hidden, head


def forward_fill_cache(params: Params, cfg: ModelConfig, tokens, attention_mask=None, *,
                       head_start=None, head_length: int | None = None) -> tuple[jax.Array, KVCache]:
    """Full forward that also returns every layer's keys/values (in the compute dtype).

    With `head_length`, logits are computed only for positions `[head_start, head_start+head_length)`.
    Meant to be called inside a jitted sampler; `tokens` must be int32.
    """
    logits, kv = MaskPredictor(cfg, collect_kv=True).apply(
        {"params": params}, tokens, _key_mask(attention_mask),
        head_start=head_start, head_length=head_length,
    )
    return logits, kv


def forward_window(params: Params, cfg: ModelConfig, window_tokens, cache: KVCache, start,
                   attention_mask=None, *, head_start=None, head_length: int | None = None
                   ) -> tuple[jax.Array, KVCache]:
    """Recompute positions `[start, start + w)` against a full-length cache.

    `window_tokens` is [B, w]; the window's fresh keys/values replace the cache's at those
    positions and attention runs over the whole cache, masked by `attention_mask` [B, S].
    `head_start` is relative to the window. Returns the window's logits and the updated cache.
    """
    logits, kv = MaskPredictor(cfg).apply(
        {"params": params}, window_tokens, _key_mask(attention_mask), cache=cache, cache_start=start,
        head_start=head_start, head_length=head_length,
    )
    return logits, kv


def forward_rows(params: Params, cfg: ModelConfig, tokens, attention_mask, *, head_start, head_length: int,
                 cache: KVCache | None = None, fresh=None) -> tuple[jax.Array, KVCache | None]:
    """Full-length rows with per-row windows: logits [B, head_length, V] from each row's `head_start` [B].

    With `cache` [.., B, S, ..] and `fresh` bool [B, S], a position's keys/values are this
    call's where `fresh` is true and the cache's elsewhere (a prefix or dual cache of any
    per-row extent); the updated cache is returned. Meant to be called inside jitted code.
    """
    return MaskPredictor(cfg).apply({"params": params}, tokens, _key_mask(attention_mask), cache=cache,
                                    head_start=head_start, head_length=head_length, cache_fresh=fresh)
