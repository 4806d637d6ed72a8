"""VRPO (LLaDA 1.5, Zhu et al. 2025): DPO on ELBO estimates of the responses' log-likelihoods.

Per preference pair (prompt x, chosen y_w, rejected y_l):

    loss = -log sigmoid(beta * ((B_pi(y_w) - B_ref(y_w)) - (B_pi(y_l) - B_ref(y_l))))

`B(y)` is the SFT-style ELBO of the response given the prompt (docs/semantics.md, Training
objectives): t ~ U(0, 1), each response position (EOS padding included, as SFT trains on it)
masked with p_mask = (1 - eps) t + eps, the prompt never, `-sum over masked of CE / p_mask`;
with `vrpo.n_samples` n it is the mean of n such samples. The paper's variance reduction:
`allocation="optimal"` spends the budget on n timesteps with one mask each ("one_timestep": one
timestep, n masks), and `antithetic` scores policy and reference on the same timesteps and masks
for the same response, so their difference loses the noise they share. All randomness comes from
the key the train step derives from the train state (exact resume).

`vrpo.coupled` (false by default: the paper's draws) goes one step further in the paper's
direction: the chosen and rejected responses of a pair (rows of one length with one prompt)
share their timesteps and masks, so the positions where the two answers agree, most of them when
a rejected answer is a near miss, cancel in the preference score instead of adding noise to it.

`vrpo.sft_weight` (0 by default: the loss above alone, as LLaDA 1.5) adds the chosen responses'
SFT loss with that weight (as RPO, Pang et al. 2024), against DPO's likelihood displacement:
when chosen and rejected responses share most tokens, DPO can lower both ELBOs, the chosen
one too.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from llada_jax.model.diffusion import (elbo_from_ce, head_cross_entropy, mask_rate, mask_tokens, masked_copy,
                                       prompt_positions)
from llada_jax.model.transformer import forward_hidden


def pair_tokens(batch: dict) -> jax.Array:
    """int32 [B, 2, L]: each pair's chosen row, then its rejected row (the same prompt leads both)."""
    return jnp.stack([batch["chosen"], batch["rejected"]], axis=1).astype(jnp.int32)


def elbo_noise(key: jax.Array, tokens: jax.Array, prompt_lengths: jax.Array, *, n_samples: int, allocation: str,
               mask_id: int, eps: float, coupled: bool = False):
    """n noised copies of every response: `(noisy [B, R, n, L], masked [B, R, n, L], p_mask [B, R, n])`.

    `tokens` [B, R, L] (R responses per prompt, sharing `prompt_lengths` [B]). "optimal": each of the
    n copies has its own t; "one_timestep": the n copies share one t per response. `coupled`: the
    R responses of a prompt share their timesteps and masks (each response's ELBO estimate is
    unchanged; their difference loses the noise of the positions where they agree).
    """
    b, r, length = tokens.shape
    drawn = 1 if coupled else r
    t_key, m_key = jax.random.split(key)
    if allocation == "optimal":
        t = jax.random.uniform(t_key, (b, drawn, n_samples), dtype=jnp.float32)
    else:
        t = jnp.broadcast_to(jax.random.uniform(t_key, (b, drawn, 1), dtype=jnp.float32), (b, drawn, n_samples))
    p_mask = jnp.broadcast_to(mask_rate(t, eps), (b, r, n_samples))
    shape = (b, r, n_samples, length)
    rows = jnp.broadcast_to(tokens[:, :, None, :], shape)
    answer = ~prompt_positions(prompt_lengths, length)[:, None, None, :]
    _, masked = mask_tokens(m_key, rows[:, :drawn], p_mask[:, :drawn, :, None], mask_id, answer)
    masked = jnp.broadcast_to(masked, shape)
    return masked_copy(rows, masked, mask_id), masked, p_mask


def response_elbos(params, model, tokens: jax.Array, noisy: jax.Array, masked: jax.Array,
                   p_mask: jax.Array) -> jax.Array:
    """float32 [B, R]: each response's ELBO, the mean of its n samples (one forward over B R n rows)."""
    b, r, n, length = noisy.shape
    hidden, head = forward_hidden(params, model, noisy.reshape(b * r * n, length), None)
    targets = jnp.broadcast_to(tokens[:, :, None, :], noisy.shape).reshape(b * r * n, length)
    ce = head_cross_entropy(hidden, head, targets, model.loss_chunk_size)
    elbo = elbo_from_ce(ce, masked.reshape(b * r * n, length), p_mask.reshape(b * r * n, 1))
    return elbo.reshape(b, r, n).mean(axis=-1)


def dpo_objective(policy: jax.Array, reference: jax.Array, beta: float) -> tuple[jax.Array, dict]:
    """`(loss, metrics)` from the ELBOs [B, 2] (chosen, rejected) of the policy and the reference.

    metrics: `reward_margin` (mean of beta * the difference of differences), `reward_accuracy`
    (share of pairs with a positive margin), `elbo_chosen` / `elbo_rejected` (policy, mean).
    """
    delta = policy - reference
    margin = beta * (delta[:, 0] - delta[:, 1])
    loss = jnp.mean(-jax.nn.log_sigmoid(margin))
    metrics = {"reward_margin": jnp.mean(margin), "reward_accuracy": jnp.mean((margin > 0).astype(jnp.float32)),
               "elbo_chosen": jnp.mean(policy[:, 0]), "elbo_rejected": jnp.mean(policy[:, 1])}
    return loss, metrics


def vrpo_passes(settings) -> tuple[int, int]:
    """Per pair: 2 n sequences through the policy (forward + backward), 2 n through the reference."""
    return 2 * settings.n_samples, 2 * settings.n_samples


def vrpo_parts(key: jax.Array, batch: dict, *, model, train, settings):
    """The loss inputs of the global batch: pair tokens and the policy's noise, plus the reference's
    own noise unless `settings.antithetic` (then None: the reference reuses the policy's)."""
    tokens = pair_tokens(batch)
    prompt_lengths = batch["prompt_lengths"].astype(jnp.int32)
    policy_key, reference_key = jax.random.split(key)
    draw = dict(n_samples=settings.n_samples, allocation=settings.allocation, mask_id=model.mask_token_id,
                eps=train.noise_eps, coupled=settings.coupled)
    noise = elbo_noise(policy_key, tokens, prompt_lengths, **draw)
    reference_noise = (None,) * 3 if settings.antithetic else elbo_noise(reference_key, tokens, prompt_lengths, **draw)
    answer_lengths = (tokens.shape[-1] - prompt_lengths).astype(jnp.float32)
    return (tokens, *noise, *reference_noise, answer_lengths)


def chosen_nll(policy: jax.Array, answer_lengths: jax.Array) -> jax.Array:
    """The SFT loss of the chosen responses from their ELBOs [B, 2]: mean of -ELBO / answer length."""
    return jnp.mean(-policy[:, 0] / answer_lengths)


def vrpo_loss(params, reference, tokens, noisy, masked, p_mask, ref_noisy=None, ref_masked=None, ref_p_mask=None,
              answer_lengths=None, *, model, train, settings):
    """`(loss, metrics)` of a microbatch of pairs; the reference is frozen (no gradient flows to it).
    With `settings.sft_weight` > 0 the chosen responses' SFT loss (`chosen_nll`, which needs
    `answer_lengths` [B]) is added with that weight."""
    policy = response_elbos(params, model, tokens, noisy, masked, p_mask)
    if ref_noisy is None:
        ref_noisy, ref_masked, ref_p_mask = noisy, masked, p_mask
    ref = jax.lax.stop_gradient(response_elbos(reference, model, tokens, ref_noisy, ref_masked, ref_p_mask))
    loss, metrics = dpo_objective(policy, ref, settings.beta)
    if settings.sft_weight > 0:
        if answer_lengths is None:
            raise ValueError("vrpo_loss: vrpo.sft_weight > 0 needs the answer lengths")
        nll = chosen_nll(policy, answer_lengths)
        loss = loss + settings.sft_weight * nll
        metrics = {**metrics, "chosen_nll": nll}
    return loss, metrics
