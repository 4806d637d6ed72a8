"""diffu-GRPO (d1, Zhao et al. 2025, arXiv 2504.12216): advantages, the one-step log-probability
estimate and the clipped-ratio objective with a KL term to the reference. Pure and jittable.

A rollout row is `[left-padded prompt (P positions) | completion (C positions)]`. d1 estimates
the per-token log-probabilities of a completion with one forward pass: every completion position
masked, each real prompt token masked with probability `p_mask`, then `log p(token)` at each
completion position (`completion_logps`). Each of the `mu` gradient steps on a rollout batch
draws a new prompt mask; the old (rollout-time policy) and reference log-probabilities of that
step are taken with the same mask, so the ratio of the first step is exactly 1.

Advantages are group-relative: the G completions of a prompt are consecutive rows, and a row's
advantage is its reward minus its group's mean (d1's code), optionally divided by the group's
sample standard deviation + eps (`scale=True`, the original GRPO).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from llada_jax.config import ModelConfig
from llada_jax.model.diffusion import head_cross_entropy, mask_tokens
from llada_jax.model.transformer import forward_hidden

ZERO_STD = 1e-6  # a group whose reward std is below this gives no learning signal (d1's threshold)


def group_rewards(rewards: jax.Array, group_size: int) -> jax.Array:
    """Rewards [N] as groups [N / G, G] (the G completions of a prompt are consecutive rows)."""
    rewards = jnp.asarray(rewards, jnp.float32)
    if rewards.shape[0] % group_size:
        raise ValueError(f"{rewards.shape[0]} rewards do not split into groups of {group_size}")
    return rewards.reshape(-1, group_size)


def group_advantages(rewards: jax.Array, group_size: int, *, scale: bool = False, eps: float = 1e-4) -> jax.Array:
    """reward - group mean, and with `scale` divided by (group std + eps); float32 [N].

    The std is the unbiased sample std (as `torch.std`, which d1 and TRL use).
    """
    r = group_rewards(rewards, group_size)
    adv = r - jnp.mean(r, axis=1, keepdims=True)
    if scale:
        adv = adv / (jnp.std(r, axis=1, ddof=1, keepdims=True) + eps)
    return adv.reshape(-1)


def zero_variance_share(rewards: jax.Array, group_size: int) -> jax.Array:
    """Share of groups whose G rewards are all equal (std < 1e-6): zero advantage, no signal."""
    r = group_rewards(rewards, group_size)
    return jnp.mean((jnp.std(r, axis=1, ddof=1) < ZERO_STD).astype(jnp.float32))


def completion_mask(completion: jax.Array, eos_id: int) -> jax.Array:
    """Boolean [B, C]: completion positions up to and including the first EOS (all when none)."""
    is_eos = jnp.asarray(completion) == eos_id
    first = jnp.where(jnp.any(is_eos, axis=1), jnp.argmax(is_eos, axis=1), is_eos.shape[1])
    return jnp.arange(is_eos.shape[1])[None, :] <= first[:, None]


def prompt_valid(prompt_lengths: jax.Array, prompt_width: int, length: int) -> jax.Array:
    """Boolean [B, L] of real positions: the last `prompt_lengths[b]` of the first `prompt_width`
    (left padding before them), and every completion position."""
    pos = jnp.arange(length)[None, :]
    start = prompt_width - jnp.asarray(prompt_lengths, jnp.int32)[:, None]
    return (pos >= start) | (pos >= prompt_width)


def one_step_noise(key: jax.Array, tokens: jax.Array, prompt_lengths: jax.Array, prompt_width: int, *,
                   p_mask: float, mask_id: int) -> jax.Array:
    """d1's input of the one-step estimate: completion fully masked, each real prompt token masked
    with probability `p_mask` (pads are left as they are: they are not attended)."""
    tokens = jnp.asarray(tokens)
    length = tokens.shape[1]
    in_completion = jnp.arange(length)[None, :] >= prompt_width
    real_prompt = prompt_valid(prompt_lengths, prompt_width, length) & ~in_completion
    noisy, _ = mask_tokens(key, tokens, jnp.full(tokens.shape, p_mask, jnp.float32), mask_id, real_prompt)
    return jnp.where(in_completion, jnp.asarray(mask_id, tokens.dtype), noisy)


def noisy_completion_logps(params, model: ModelConfig, noisy: jax.Array, tokens: jax.Array,
                           prompt_lengths: jax.Array, prompt_width: int) -> jax.Array:
    """float32 [B, C]: log p of each completion token of `tokens` given the noised rows `noisy` (one
    forward; the output head runs on the completion positions only, in `loss_chunk_size` chunks)."""
    valid = prompt_valid(prompt_lengths, prompt_width, tokens.shape[1])
    hidden, head = forward_hidden(params, model, noisy, valid)
    ce = head_cross_entropy(hidden[:, prompt_width:], head, tokens[:, prompt_width:], model.loss_chunk_size)
    return -ce


def completion_logps(params, model: ModelConfig, tokens: jax.Array, prompt_lengths: jax.Array, key: jax.Array, *,
                     prompt_width: int, p_mask: float) -> jax.Array:
    """float32 [B, C]: log p of each completion token under d1's one-step estimate with the mask of `key`."""
    tokens = jnp.asarray(tokens, jnp.int32)
    noisy = one_step_noise(key, tokens, prompt_lengths, prompt_width, p_mask=p_mask, mask_id=model.mask_token_id)
    return noisy_completion_logps(params, model, noisy, tokens, prompt_lengths, prompt_width)


def grpo_objective(logps: jax.Array, old_logps: jax.Array, ref_logps: jax.Array | None, advantages: jax.Array,
                   mask: jax.Array, *, clip_eps: float, beta: float,
                   weights: jax.Array | None = None) -> tuple[jax.Array, dict]:
    """d1's loss: per token `-min(r A, clip(r, 1 - eps, 1 + eps) A) + beta * kl`, averaged over the
    completion tokens in `mask` (or summed with the given per-token `weights`, e.g. 1 / the token
    count of the whole batch when this is one microbatch of it).

    r = exp(logp - old logp); kl = exp(ref - logp) - (ref - logp) - 1 (the k3 estimator, >= 0).
    Metrics (means over the masked tokens): `kl`, `clip_fraction` (tokens whose clipped term is
    the smaller one, so their ratio gets no gradient), `ratio`.
    """
    mask = mask.astype(jnp.float32)
    count = jnp.maximum(jnp.sum(mask), 1.0)
    weights = mask / count if weights is None else weights * mask
    ratio = jnp.exp(logps - old_logps)
    adv = advantages[:, None]
    unclipped = ratio * adv
    clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * adv
    per_token = -jnp.minimum(unclipped, clipped)
    metrics = {"clip_fraction": jnp.sum((clipped < unclipped) * mask) / count,
               "ratio": jnp.sum(ratio * mask) / count}
    if ref_logps is not None:
        delta = ref_logps - logps
        kl = jnp.exp(delta) - delta - 1.0
        per_token = per_token + beta * kl
        metrics["kl"] = jnp.sum(kl * mask) / count
    return jnp.sum(per_token * weights), metrics


# ---------------------------------------------------------------------------------------------
# The objective in the one train step (training/objectives.py). A batch is one inner step of a
# rollout batch: tokens [B, L] (prompt | completion), prompt_lengths [B], advantages [B] and the
# rollout-time policy's log-probabilities old_logps [B, L] (completion positions; prompt ones 0)
# under this step's mask. `settings` is (grpo section, sample section).

def prompt_width(train, sample) -> int:
    """Positions of the left-padded prompt: `train.seq_len - sample.gen_length`."""
    return train.seq_len - sample.gen_length


def grpo_parts(key, batch, *, model: ModelConfig, train, settings):
    """This step's one-step-estimate input over the global batch, and per-token weights that make
    the loss the mean over every completion token of the batch whatever `grad_accum` is."""
    grpo, sample = settings
    width = prompt_width(train, sample)
    tokens = batch["tokens"].astype(jnp.int32)
    prompt_lengths = batch["prompt_lengths"].astype(jnp.int32)
    noisy = one_step_noise(key, tokens, prompt_lengths, width, p_mask=grpo.p_mask, mask_id=model.mask_token_id)
    mask = completion_mask(tokens[:, width:], model.eos_token_id).astype(jnp.float32)
    weights = mask * (train.grad_accum / jnp.maximum(jnp.sum(mask), 1.0))
    return (noisy, tokens, prompt_lengths, batch["advantages"].astype(jnp.float32),
            batch["old_logps"].astype(jnp.float32), weights)


def grpo_loss(params, reference, noisy, tokens, prompt_lengths, advantages, old_logps, weights, *,
              model: ModelConfig, train, settings):
    """(loss, metrics) of one microbatch; the reference's log-probabilities use the same mask."""
    grpo, sample = settings
    width = prompt_width(train, sample)
    logps = noisy_completion_logps(params, model, noisy, tokens, prompt_lengths, width)
    ref = None
    if grpo.beta > 0:
        ref = jax.lax.stop_gradient(noisy_completion_logps(reference, model, noisy, tokens, prompt_lengths, width))
    loss, metrics = grpo_objective(logps, old_logps[:, width:], ref, advantages, weights > 0,
                                   clip_eps=grpo.clip_eps, beta=grpo.beta, weights=weights)
    return loss, metrics
