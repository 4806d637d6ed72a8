"""AdamW with LLaDA's warmup-stable-decay learning rate, gradient clipping and decay masking."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from llada_jax.config import TrainConfig

# Parameter names (last key of the path) that are gains, not weights: no weight decay.
NO_DECAY = ("attn_norm", "ff_norm", "ln_f")


def wsd_schedule(cfg: TrainConfig) -> optax.Schedule:
    """Linear warmup 0 -> peak, constant peak, then decay peak -> final over the last `decay_steps`.

    `lr(step)` is the rate used by update number `step` (0-based).
    """
    peak, final = cfg.learning_rate, cfg.final_learning_rate
    warm, decay = cfg.warmup_steps, cfg.decay_steps
    decay_start = cfg.steps - decay

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warm_lr = peak * jnp.minimum((step + 1.0) / max(warm, 1), 1.0)
        frac = jnp.clip((step - decay_start + 1.0) / max(decay, 1), 0.0, 1.0)
        if cfg.decay_shape == "linear":
            shape = frac
        elif cfg.decay_shape == "cosine":
            shape = 0.5 * (1.0 - jnp.cos(jnp.pi * frac))
        else:  # sqrt
            shape = jnp.sqrt(frac)
        decay_lr = peak + (final - peak) * shape
        lr = jnp.where(step < warm, warm_lr, peak)
        return jnp.where((decay > 0) & (step >= decay_start), decay_lr, lr)

    return schedule


def decay_mask(params):
    """True for leaves that get weight decay (everything but the RMSNorm gains)."""

    def keep(path, _):
        last = path[-1]
        name = getattr(last, "key", getattr(last, "name", str(last)))
        return name not in NO_DECAY

    return jax.tree_util.tree_map_with_path(keep, params)


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    """Clip by global norm (when `grad_clip > 0`), then AdamW on the WSD schedule."""
    parts = []
    if cfg.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(cfg.grad_clip))
    parts.append(optax.adamw(wsd_schedule(cfg), b1=cfg.adam_b1, b2=cfg.adam_b2, eps=cfg.adam_eps,
                             weight_decay=cfg.weight_decay, mask=decay_mask))
    return optax.chain(*parts)
