"""Monte Carlo log-likelihood of an answer given a prompt (docs/semantics.md, Likelihood; the release's
`get_log_likelihood`).

For an answer of length `La`, `mc_num` samples are drawn in minibatches of `b` rows. Per
minibatch `k ~ U{1..La}`; row `j` masks exactly `m_j = ((round(k + j*La/b) - 1) mod La) + 1`
answer tokens chosen uniformly at random (the prompt is never masked), and contributes
`sum over masked tokens of CE / (m_j / La) / b`. The estimate is minus the mean over
minibatches: a lower bound on log p(answer | prompt) (its negative bounds the NLL from above).

The prompt is never masked, so its logits are never used: the model runs without its output
head, and the head is applied only at the answer positions, a sequence chunk at a time
(`ModelConfig.loss_chunk_size`), so no [rows, T, V] float32 logits exist.

`round` is round-half-to-even, as the release's `torch.round`; it is evaluated exactly on the
rational `k + j*La/b` (the release evaluates it in float32 `linspace`, which is exact for the
power-of-two `b` it uses).

Randomness is a pure function of the key and is independent of padding: `minibatch_keys`
splits the key per minibatch and `minibatch_mask` draws one minibatch's answer mask, so a
reference loop can rebuild the exact masks. Everything runs in one jitted function per
padded shape (`lax.scan` over minibatches); `log_likelihood_batch` scores many (prompt,
answer) pairs of different lengths in one call, right-padded and masked by the attention mask.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from llada_jax.config import ModelConfig
from llada_jax.model.diffusion import map_sequence_chunks, token_cross_entropy
from llada_jax.model.transformer import forward_hidden, head_logits


def mask_counts(k: jax.Array, answer_length: jax.Array, batch_size: int) -> jax.Array:
    """`m_j = ((round(k + j*La/b) - 1) mod La) + 1` for j in [0, b), round half to even, int32 [b]."""
    j = jnp.arange(batch_size, dtype=jnp.int32)
    num = k * batch_size + j * answer_length          # k + j*La/b == num / b exactly
    q, r = num // batch_size, num % batch_size
    twice = 2 * r
    up = (twice > batch_size) | ((twice == batch_size) & (q % 2 == 1))
    rounded = q + up.astype(jnp.int32)
    return (rounded - 1) % answer_length + 1


def minibatch_keys(key: jax.Array, num_batches: int) -> jax.Array:
    """One key per minibatch: `jax.random.split(key, num_batches)`."""
    return jax.random.split(key, num_batches)


def minibatch_mask(key: jax.Array, answer_length, batch_size: int, max_answer_length: int):
    """One minibatch's answer mask: `(mask bool [b, max_answer_length], m int32 [b])`.

    `k ~ U{1..La}` from the first half of `key`; row j masks the `m_j` positions (of the first
    `La`) with the smallest uniform scores, a uniformly random subset. Each position's score is
    drawn from `fold_in(key, position)`, so the mask does not depend on `max_answer_length`.
    """
    answer_length = jnp.asarray(answer_length, jnp.int32)
    k_key, p_key = jax.random.split(key)
    k = jax.random.randint(k_key, (), 1, answer_length + 1, dtype=jnp.int32)
    m = mask_counts(k, answer_length, batch_size)
    pos = jnp.arange(max_answer_length, dtype=jnp.int32)
    scores = jax.vmap(lambda p: jax.random.uniform(jax.random.fold_in(p_key, p), (batch_size,)))(pos).T
    scores = jnp.where(pos[None, :] < answer_length, scores, 2.0)  # padding is never chosen
    rank = jnp.argsort(jnp.argsort(scores, axis=-1), axis=-1)
    return rank < m[:, None], m


def answer_cross_entropy(params, cfg: ModelConfig, tokens, attention_mask, prompt_positions, answer_index,
                         targets, cfg_scale, use_cfg: bool):
    """CE [R, A] of `targets` at the positions `answer_index` [R, A] of rows `tokens` [R, T].

    The head runs only at those positions. With `use_cfg`, classifier-free guidance: an
    unconditional copy with every prompt position set to the mask id runs in the same batch, and
    the logits are `un + (s + 1) * (cond - un)`.
    """
    pick = lambda h: jnp.take_along_axis(h, answer_index[..., None], axis=1)  # noqa: E731
    if not use_cfg:
        hidden, head = forward_hidden(params, cfg, tokens, attention_mask)
        return map_sequence_chunks(lambda h, t: token_cross_entropy(head_logits(h, head), t), cfg.loss_chunk_size,
                                   pick(hidden), targets)
    uncond = jnp.where(prompt_positions, jnp.asarray(cfg.mask_token_id, tokens.dtype), tokens)
    hidden, head = forward_hidden(params, cfg, jnp.concatenate([tokens, uncond]),
                                  jnp.concatenate([attention_mask] * 2))
    cond, un = jnp.split(hidden, 2)

    def guided_ce(c, u, t):
        lc, lu = head_logits(c, head), head_logits(u, head)
        return token_cross_entropy(lu + (cfg_scale + 1.0) * (lc - lu), t)

    return map_sequence_chunks(guided_ce, cfg.loss_chunk_size, pick(cond), pick(un), targets)


@functools.partial(jax.jit, static_argnames=("cfg", "num_batches", "batch_size", "use_cfg", "window"))
def _log_likelihood_jit(params, cfg: ModelConfig, tokens, prompt_lengths, answer_lengths, keys, cfg_scale,
                        *, num_batches: int, batch_size: int, use_cfg: bool, window: int):
    """tokens int32 [N, T] = [prompt | answer | pad]; answers fit in `window` positions; float32 [N]."""
    n, t = tokens.shape
    b = batch_size
    pos = jnp.arange(t, dtype=jnp.int32)
    rel = pos[None, :] - prompt_lengths[:, None]                                  # [N, T]
    in_answer = (rel >= 0) & (rel < answer_lengths[:, None])
    in_prompt = pos[None, :] < prompt_lengths[:, None]
    real = in_prompt | in_answer
    # Per pair and minibatch: answer-relative masks [N, nb, b, window] and counts [N, nb, b].
    per_batch_keys = jax.vmap(lambda k: minibatch_keys(k, num_batches))(keys)
    draw = jax.vmap(jax.vmap(lambda k, la: minibatch_mask(k, la, b, window), in_axes=(0, None)), in_axes=(0, 0))
    rel_masks, counts = draw(per_batch_keys, answer_lengths)
    idx = jnp.clip(rel, 0, window - 1)[:, None, None, :]
    masks = jnp.take_along_axis(rel_masks, jnp.broadcast_to(idx, rel_masks.shape[:3] + (t,)), axis=-1)
    masks = masks & in_answer[:, None, None, :]
    # The answer's positions in the row, [N, window] (clipped past the row's end; never masked there).
    answer_index = jnp.minimum(prompt_lengths[:, None] + jnp.arange(window, dtype=jnp.int32), t - 1)

    rows = lambda x: jnp.broadcast_to(x[:, None], (n, b) + x.shape[1:]).reshape(n * b, *x.shape[1:])  # noqa: E731
    row_tokens, row_real, row_prompt = rows(tokens), rows(real), rows(in_prompt)
    row_index = rows(answer_index)
    row_targets = jnp.take_along_axis(row_tokens, row_index, axis=1)

    def one_minibatch(_, inputs):
        mask, rel_mask, m = inputs                                   # [N, b, T], [N, b, window], [N, b]
        noisy = jnp.where(mask.reshape(n * b, t), jnp.asarray(cfg.mask_token_id, tokens.dtype), row_tokens)
        ce = answer_cross_entropy(params, cfg, noisy, row_real, row_prompt, row_index, row_targets, cfg_scale,
                                  use_cfg).reshape(n, b, window)
        p_mask = m.astype(jnp.float32) / answer_lengths[:, None].astype(jnp.float32)
        loss = jnp.sum(jnp.where(rel_mask, ce / p_mask[..., None], 0.0), axis=(1, 2)) / b
        return None, loss

    scanned = tuple(jnp.moveaxis(x, 1, 0) for x in (masks, rel_masks, counts))
    _, losses = jax.lax.scan(one_minibatch, None, scanned)
    return -jnp.mean(losses, axis=0)


def _as_ids(x, cfg: ModelConfig, what: str, allow_empty: bool) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{what}: expected a 1-D sequence of token ids, got shape {arr.shape}")
    if arr.size == 0:
        if allow_empty:
            return arr.astype(np.int32)
        raise ValueError(f"{what}: is empty")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{what}: expected integer token ids, got dtype {arr.dtype}")
    bad = (arr < 0) | (arr >= cfg.vocab_size)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{what}: id {int(arr[i])} at position {i} is outside the vocabulary [0, {cfg.vocab_size})")
    return arr.astype(np.int32)


def _check_options(mc_num: int, batch_size: int, cfg_scale: float) -> int:
    if not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
        raise ValueError(f"batch_size: must be a positive integer, got {batch_size!r}")
    if not isinstance(mc_num, (int, np.integer)) or mc_num <= 0 or mc_num % batch_size:
        raise ValueError(f"mc_num: must be a positive multiple of batch_size={batch_size}, got {mc_num!r}")
    if cfg_scale < 0:
        raise ValueError(f"cfg_scale: must be >= 0, got {cfg_scale}")
    return int(mc_num // batch_size)


def _check_pair(cfg: ModelConfig, prompt, answer, where: str) -> tuple[np.ndarray, np.ndarray]:
    p = _as_ids(prompt, cfg, f"{where}prompt", allow_empty=True)
    a = _as_ids(answer, cfg, f"{where}answer", allow_empty=False)
    if (a == cfg.mask_token_id).any():
        raise ValueError(f"{where}answer: contains the mask id {cfg.mask_token_id}")
    if p.size + a.size > cfg.max_seq_len:
        raise ValueError(
            f"{where}answer: prompt ({p.size}) + answer ({a.size}) tokens exceed the model's context "
            f"max_seq_len={cfg.max_seq_len}"
        )
    return p, a


def _pack(pairs, length: int, pad_id: int):
    tokens = np.full((len(pairs), length), pad_id, np.int32)
    for i, (p, a) in enumerate(pairs):
        tokens[i, : p.size] = p
        tokens[i, p.size : p.size + a.size] = a
    plen = np.array([p.size for p, _ in pairs], np.int32)
    alen = np.array([a.size for _, a in pairs], np.int32)
    return tokens, plen, alen


def log_likelihood(params, cfg: ModelConfig, prompt, answer, *, mc_num: int = 128, batch_size: int = 16,
                   cfg_scale: float = 0.0, key: jax.Array) -> float:
    """Monte Carlo estimate of log p(answer | prompt) (docs/semantics.md, Likelihood); one compile per length.

    `prompt` and `answer` are 1-D integer token ids (numpy or jax); `mc_num` must be a multiple
    of `batch_size`. Same key, same masks: see `minibatch_keys` / `minibatch_mask`.
    """
    num_batches = _check_options(mc_num, batch_size, cfg_scale)
    p, a = _check_pair(cfg, prompt, answer, "")
    return float(_estimate(params, cfg, [(p, a)], key[None], p.size + a.size, a.size, num_batches, batch_size,
                           cfg_scale)[0])


def _estimate(params, cfg: ModelConfig, pairs, keys, length: int, window: int, num_batches: int, batch_size: int,
              cfg_scale: float) -> np.ndarray:
    tokens, plen, alen = _pack(pairs, length, cfg.pad_token_id)
    out = _log_likelihood_jit(params, cfg, jnp.asarray(tokens), jnp.asarray(plen), jnp.asarray(alen), keys,
                              jnp.float32(cfg_scale), num_batches=num_batches, batch_size=batch_size,
                              use_cfg=cfg_scale > 0, window=window)
    return np.asarray(out, dtype=np.float64)


def log_likelihood_batch(params, cfg: ModelConfig, prompts: Sequence, answers: Sequence, *, mc_num: int = 128,
                         batch_size: int = 16, cfg_scale: float = 0.0, key: jax.Array | None = None,
                         keys: jax.Array | None = None, pad_multiple: int = 32,
                         pairs_per_call: int | None = None) -> np.ndarray:
    """Estimates for many (prompt, answer) pairs, float [N], in calls of `pairs_per_call` pairs
    (default: all in one call).

    Pair i uses `keys[i]` (default `jax.random.split(key, N)`), and equals
    `log_likelihood(prompt_i, answer_i, key=keys[i])`. Rows are right-padded to a multiple of
    `pad_multiple` (capped at the model's context) so nearby lengths share a compile; a short
    last call is filled with copies of its last pair, so every call has the same shape.
    """
    num_batches = _check_options(mc_num, batch_size, cfg_scale)
    if len(prompts) != len(answers):
        raise ValueError(f"prompts ({len(prompts)}) and answers ({len(answers)}) differ in number")
    if not len(prompts):
        raise ValueError("prompts: no (prompt, answer) pairs given")
    pairs = [_check_pair(cfg, p, a, f"pair {i}: ") for i, (p, a) in enumerate(zip(prompts, answers))]
    if keys is None:
        if key is None:
            raise ValueError("log_likelihood_batch: pass `key` or `keys`")
        keys = jax.random.split(key, len(pairs))
    if keys.shape[0] != len(pairs):
        raise ValueError(f"keys: {keys.shape[0]} keys for {len(pairs)} pairs")
    if pairs_per_call is not None and pairs_per_call <= 0:
        raise ValueError(f"pairs_per_call: must be positive, got {pairs_per_call}")
    longest = max(p.size + a.size for p, a in pairs)
    length = min(-(-longest // pad_multiple) * pad_multiple, cfg.max_seq_len)
    window = min(-(-max(a.size for _, a in pairs) // pad_multiple) * pad_multiple, length)
    per_call = pairs_per_call or len(pairs)
    out = []
    for start in range(0, len(pairs), per_call):
        chunk, chunk_keys = pairs[start:start + per_call], keys[start:start + per_call]
        fill = per_call - len(chunk) if len(pairs) > per_call else 0
        if fill:
            chunk = chunk + [chunk[-1]] * fill
            chunk_keys = jnp.concatenate([chunk_keys, jnp.repeat(chunk_keys[-1:], fill, axis=0)])
        est = _estimate(params, cfg, chunk, chunk_keys, length, window, num_batches, batch_size, cfg_scale)
        out.append(est[:per_call - fill])
    return np.concatenate(out)
