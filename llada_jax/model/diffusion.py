"""The forward (noising) process and the pretraining / SFT losses of docs/semantics.md (Training objectives).

All functions are pure and jittable. The losses take either full logits (`pretrain_loss`,
`sft_loss`: the reference formulas) or per-position cross entropies (`*_from_ce`), which the
train step gets from `head_cross_entropy`: the output head applied to the final hidden states
one sequence chunk at a time forward and one vocabulary slice at a time backward, so the
[B, L, V] float32 logits never exist. The release's "1% of batches are cut to a random length"
cannot change a static shape under jit, so `random_length_mask` returns which positions are
kept; dropped positions are neither attended to, masked, nor counted, which is what cutting
the batch does (RoPE positions of the kept prefix are unchanged).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from llada_jax.model.transformer import head_logits


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
    p_mask = jnp.broadcast_to(mask_rate(t, eps)[:, None], (b, length))
    noisy, masked = mask_tokens(m_key, tokens, p_mask, mask_id, valid)
    return noisy, masked, p_mask


def mask_rate(t: jax.Array, eps: float = 1e-3) -> jax.Array:
    """`p_mask = (1 - eps) * t + eps`: the masking probability at diffusion time t."""
    return (1.0 - eps) * t + eps


def mask_tokens(key: jax.Array, tokens: jax.Array, p_mask: jax.Array, mask_id: int, valid: jax.Array | None = None):
    """`(noisy, masked)`: each position of `tokens` ([B, L] or any shape) masked independently with
    probability `p_mask` (broadcast to it); positions where `valid` is false are never masked."""
    masked = jax.random.uniform(key, tokens.shape, dtype=jnp.float32) < p_mask
    if valid is not None:
        masked = masked & valid.astype(bool)
    return masked_copy(tokens, masked, mask_id), masked


def masked_copy(tokens: jax.Array, masked: jax.Array, mask_id: int) -> jax.Array:
    """`tokens` with `mask_id` wherever `masked` is true: the noised input of the mask predictor."""
    return jnp.where(masked, jnp.asarray(mask_id, tokens.dtype), tokens)


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


def _to_chunks(x: jax.Array, chunk: int) -> jax.Array:
    """[B, L, ...] -> [n, B, chunk, ...], L zero-padded up to n * chunk."""
    n = -(-x.shape[1] // chunk)
    pad = n * chunk - x.shape[1]
    if pad:
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
    return jnp.moveaxis(x.reshape(x.shape[0], n, chunk, *x.shape[2:]), 1, 0)


def _from_chunks(y: jax.Array, length: int) -> jax.Array:
    """[n, B, chunk, ...] -> [B, length, ...] (the padding dropped)."""
    y = jnp.moveaxis(y, 0, 1)
    return y.reshape(y.shape[0], -1, *y.shape[3:])[:, :length]


def map_sequence_chunks(fn, chunk_size: int, *arrays: jax.Array) -> jax.Array:
    """`fn(*chunks)` over consecutive chunks of axis 1 of `arrays` (each [B, L, ...]), results
    [B, L, ...]. A `lax.map` over rematerialised chunks: one chunk's intermediates (e.g. its
    logits) exist at a time. L need not be a multiple of `chunk_size`."""
    length = arrays[0].shape[1]
    chunk = min(chunk_size, length)
    out = jax.lax.map(jax.checkpoint(lambda xs: fn(*xs)), tuple(_to_chunks(x, chunk) for x in arrays))
    return _from_chunks(out, length)


def _ce_and_lse(hidden, head, targets):
    logits = head_logits(hidden, head)
    lse = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return lse - picked, lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def head_cross_entropy(hidden: jax.Array, head: jax.Array, targets: jax.Array, chunk_size: int) -> jax.Array:
    """`token_cross_entropy(head_logits(hidden, head), targets)`, [B, L] float32, with no more than
    about `chunk_size` x V float32 logits per row at a time.

    The forward pass goes `chunk_size` positions at a time. The backward pass goes over vocabulary
    slices of the same size (V * chunk_size / L entries, all positions): each slice of the head's
    gradient is complete when it is made, so under a mesh it is reduced onto the head's shards
    exactly once, in the compute dtype, as every other weight's gradient is (a sequence-chunked
    backward reduces a partial head gradient once per chunk). The head is gathered whole over its
    `embed` shards once per pass.
    """
    return _head_ce_fwd(hidden, head, targets, chunk_size)[0]


_HEAD_AXES = ("embed", "vocab")
_HEAD_GATHERED = (None, "vocab")  # whole over the model dimension: one all-gather outside the chunk loop


def _head_ce_fwd(hidden, head, targets, chunk_size):
    length = hidden.shape[1]
    chunk = min(chunk_size, length)
    whole = nn.with_logical_constraint(head, _HEAD_GATHERED)
    ce, lse = jax.lax.map(lambda xs: _ce_and_lse(xs[0], whole, xs[1]),
                          (_to_chunks(hidden, chunk), _to_chunks(targets, chunk)))
    return _from_chunks(ce, length), (hidden, head, targets, _from_chunks(lse, length))


def vocab_slices(vocab: int, length: int, chunk_size: int) -> tuple[int, int]:
    """`(n, width)`: the backward pass's vocabulary slices, as many logits as a `chunk_size`-position
    chunk holds (width a multiple of 128, n * width >= vocab)."""
    n = -(-length // min(chunk_size, length))
    width = min(-(-vocab // (n * 128)) * 128, vocab)
    return -(-vocab // width), width


def _head_ce_bwd(chunk_size, residuals, grad):
    hidden, head, targets, lse = residuals
    vocab = head.shape[1]
    n, width = vocab_slices(vocab, hidden.shape[1], chunk_size)
    whole = nn.with_logical_constraint(head, _HEAD_GATHERED)
    if n * width > vocab:
        whole = jnp.pad(whole, ((0, 0), (0, n * width - vocab)))
    slices = jnp.moveaxis(whole.reshape(whole.shape[0], n, width), 1, 0)  # [n, D, width]
    g = grad.astype(jnp.float32)[..., None]

    def body(dhidden, xs):
        w, first = xs
        logits = head_logits(hidden, w)
        columns = first + jnp.arange(width)
        probs = jnp.where(columns < vocab, jnp.exp(logits - lse[..., None]), 0.0)
        dlogits = (g * (probs - (targets[..., None] == columns))).astype(hidden.dtype)
        dhidden = dhidden + jnp.einsum("btv,dv->btd", dlogits, w, preferred_element_type=jnp.float32)
        dw = jnp.einsum("btd,btv->dv", hidden, dlogits, preferred_element_type=jnp.float32).astype(hidden.dtype)
        return dhidden, nn.with_logical_constraint(dw, _HEAD_AXES)

    dhidden0 = jnp.zeros(hidden.shape, jnp.float32)
    dhidden, dslices = jax.lax.scan(body, dhidden0, (slices, jnp.arange(n) * width))
    dhead = jnp.moveaxis(dslices, 0, 1).reshape(head.shape[0], n * width)[:, :vocab]
    return dhidden.astype(hidden.dtype), nn.with_logical_constraint(dhead, _HEAD_AXES).astype(head.dtype), None


head_cross_entropy.defvjp(_head_ce_fwd, _head_ce_bwd)


def pretrain_loss(logits: jax.Array, tokens: jax.Array, masked: jax.Array, p_mask: jax.Array,
                  valid: jax.Array | None = None) -> jax.Array:
    """sum over masked positions of CE / p_mask, divided by B * L (every position, masked or not).

    With a `valid` mask (random-length batches), L is the kept length: the division is by the
    number of valid positions.
    """
    return pretrain_loss_from_ce(token_cross_entropy(logits, tokens), masked, p_mask, valid)


def pretrain_loss_from_ce(ce: jax.Array, masked: jax.Array, p_mask: jax.Array,
                          valid: jax.Array | None = None) -> jax.Array:
    """`pretrain_loss` from per-position cross entropies `ce` [B, L]."""
    weighted = jnp.where(masked, ce / p_mask, 0.0)
    denom = weighted.size if valid is None else jnp.maximum(jnp.sum(valid), 1)
    return jnp.sum(weighted) / denom


def sft_loss(logits: jax.Array, tokens: jax.Array, masked: jax.Array, p_mask: jax.Array,
             prompt_lengths: jax.Array) -> jax.Array:
    """Per row: sum over masked answer positions of CE / p_mask / answer_length; mean over rows.

    `answer_length = L - prompt_length` counts the EOS padding, which is trained on.
    """
    return sft_loss_from_ce(token_cross_entropy(logits, tokens), masked, p_mask, prompt_lengths)


def elbo_from_ce(ce: jax.Array, masked: jax.Array, p_mask: jax.Array) -> jax.Array:
    """One sample of the ELBO of each row's masked positions, [B]: `-sum over masked of CE / p_mask`.

    With the SFT forward process (prompt never masked) it is a lower bound on log p(response | prompt),
    the `B` of VRPO; `sft_loss` is its negative over the answer length, averaged over rows.
    """
    return -jnp.sum(jnp.where(masked, ce / p_mask, 0.0), axis=-1)


def sft_loss_from_ce(ce: jax.Array, masked: jax.Array, p_mask: jax.Array, prompt_lengths: jax.Array) -> jax.Array:
    """`sft_loss` from per-position cross entropies `ce` [B, L]."""
    b, length = ce.shape
    in_prompt = prompt_positions(prompt_lengths, length)
    answer_length = jnp.maximum(length - jnp.asarray(prompt_lengths), 1).astype(jnp.float32)
    per_token = jnp.where(masked & ~in_prompt, ce / p_mask / answer_length[:, None], 0.0)
    return jnp.sum(per_token) / b
