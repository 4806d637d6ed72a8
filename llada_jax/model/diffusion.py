"""The forward (noising) process and the pretraining / SFT losses of docs/semantics.md (Training objectives).

All functions are pure and jittable. The release's "1% of batches are cut to a random length"
cannot change a static shape under jit, so `random_length_mask` returns which positions are
kept; dropped positions are neither attended to, masked, nor counted, which is what cutting
the batch does (RoPE positions of the kept prefix are unchanged).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def forward_process(key: jax.Array, tokens: jax.Array, mask_id: int, eps: float = 1e-3,
                    valid: jax.Array | None = None):
    """Mask each token independently with probability `p_mask = (1 - eps) * t + eps`, t ~ U(0,1) per row.

    Returns `(noisy, masked, p_mask)`: the noised tokens, the boolean mask of replaced positions and
    the per-position masking probability, all [B, L]. Positions where `valid` is false are never masked.
    """
    tokens = jnp.asarray(tokens)
    b, length = tokens.shape
    t_key, m_key = jax.random.split(key)
    t = jax.random.uniform(t_key, (b,), dtype=jnp.float32)
    p_mask = jnp.broadcast_to(((1.0 - eps) * t + eps)[:, None], (b, length))
    masked = jax.random.uniform(m_key, (b, length), dtype=jnp.float32) < p_mask
    if valid is not None:
        masked = masked & valid.astype(bool)
    noisy = jnp.where(masked, jnp.asarray(mask_id, tokens.dtype), tokens)
    return noisy, masked, p_mask


def prompt_positions(prompt_lengths: jax.Array, length: int) -> jax.Array:
    """Boolean [B, L]: true at positions `< prompt_lengths[b]`."""
    return jnp.arange(length)[None, :] < jnp.asarray(prompt_lengths)[:, None]


def sft_forward_process(key: jax.Array, tokens: jax.Array, prompt_lengths: jax.Array, mask_id: int,
                        eps: float = 1e-3):
    """`forward_process` over the whole row, then the prompt restored: the prompt is never masked."""
    noisy, masked, p_mask = forward_process(key, tokens, mask_id, eps)
    in_prompt = prompt_positions(prompt_lengths, tokens.shape[1])
    masked = masked & ~in_prompt
    noisy = jnp.where(in_prompt, tokens, noisy)
    return noisy, masked, p_mask


def random_length_mask(key: jax.Array, batch: int, length: int, prob: float = 0.01) -> jax.Array:
    """With probability `prob`, keep only a random prefix of length U{1..L} of every row.

    Returns a boolean [B, L] of kept positions (all true most of the time); the same cut applies
    to the whole batch, as in the release.
    """
    cut_key, len_key = jax.random.split(key)
    cut = jax.random.uniform(cut_key, ()) < prob
    new_length = jax.random.randint(len_key, (), 1, length + 1)
    keep = jnp.where(cut, new_length, length)
    return jnp.broadcast_to(jnp.arange(length)[None, :] < keep, (batch, length))


def token_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-position CE in float32: logsumexp(logits) - logits[target], [B, L]."""
    logits = logits.astype(jnp.float32)  # a no-op for the model's float32 logits
    lse = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return lse - picked


def pretrain_loss(logits: jax.Array, tokens: jax.Array, masked: jax.Array, p_mask: jax.Array,
                  valid: jax.Array | None = None) -> jax.Array:
    """sum over masked positions of CE / p_mask, divided by B * L (every position, masked or not).

    With a `valid` mask (random-length batches), L is the kept length: the division is by the
    number of valid positions.
    """
    ce = token_cross_entropy(logits, tokens)
    weighted = jnp.where(masked, ce / p_mask, 0.0)
    denom = weighted.size if valid is None else jnp.maximum(jnp.sum(valid), 1)
    return jnp.sum(weighted) / denom


def sft_loss(logits: jax.Array, tokens: jax.Array, masked: jax.Array, p_mask: jax.Array,
             prompt_lengths: jax.Array) -> jax.Array:
    """Per row: sum over masked answer positions of CE / p_mask / answer_length; mean over rows.

    `answer_length = L - prompt_length` counts the EOS padding, which is trained on.
    """
    b, length = tokens.shape
    in_prompt = prompt_positions(prompt_lengths, length)
    answer_length = jnp.maximum(length - jnp.asarray(prompt_lengths), 1).astype(jnp.float32)
    ce = token_cross_entropy(logits, tokens)
    per_token = jnp.where(masked & ~in_prompt, ce / p_mask / answer_length[:, None], 0.0)
    return jnp.sum(per_token) / b
