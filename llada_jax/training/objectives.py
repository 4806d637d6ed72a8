"""The training objectives: each a loss plugged into the one train step (training/step.py).

An `Objective` says what its batches hold (`fields`), how the step turns the global batch into
the parts of its loss once, before gradient accumulation splits them by rows (`prepare`: the
noise is drawn for the whole batch, so results do not depend on `grad_accum`), and the loss of
one microbatch (`loss`, returning `(loss, metrics)`; the step averages both over microbatches).
`needs_reference`: the step takes the frozen reference params (post-training, the model of
`train.init_from`) as an extra, non-differentiated argument. `settings` names the config
section of the objective's own settings (passed to `prepare` and `loss` as `settings`).

    pretrain  tokens [B, L]                                  (docs/semantics.md, Training objectives)
    sft       tokens [B, L], prompt_lengths [B]
    vrpo      chosen [B, L], rejected [B, L], prompt_lengths [B]   (training/vrpo.py)
    grpo      tokens [B, L], prompt_lengths [B], advantages [B], old_logps [B, L]   (training/grpo.py;
              batches from the rollouts of training/rollout.py)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from llada_jax.config import Config, ModelConfig, TrainConfig
from llada_jax.model.diffusion import (forward_process, head_cross_entropy, pretrain_loss_from_ce, random_length_mask,
                                       sft_forward_process, sft_loss_from_ce)
from llada_jax.model.transformer import forward_hidden
from llada_jax.training import grpo, vrpo

# A batch field's shape after the row dimension: ints or TrainConfig attribute names ("seq_len").
Dims = tuple[int | str, ...]


@dataclasses.dataclass(frozen=True)
class Objective:
    name: str
    fields: dict[str, tuple[Dims, Any]]  # batch field -> (dims after rows, dtype)
    prepare: Callable                    # (key, batch, *, model, train, settings) -> tuple of loss inputs [B, ...] or None
    loss: Callable                       # (params, reference, *parts, *, model, train, settings) -> (loss, metrics)
    dataset: str | None                  # the `llada_jax.data` function that builds its batches; None: rollouts
                                         # of the policy make them (training/rollout.py)
    needs_reference: bool = False
    settings: str | tuple[str, ...] | None = None  # config section(s) of its settings (a tuple: a tuple of sections)
    shown: tuple[str, ...] = ()          # metrics shown on the progress bar
    passes: Callable = lambda settings: (1, 0)  # settings -> sequences per batch row (forward + backward, forward only)
    elbo_eval: bool = False              # validated by the ELBO grid (else by its own loss)

    def shapes(self, train: TrainConfig, rows: int) -> dict[str, tuple[int, ...]]:
        return {k: (rows, *(getattr(train, d) if isinstance(d, str) else d for d in dims))
                for k, (dims, _) in self.fields.items()}

    def settings_of(self, config: Config):
        if isinstance(self.settings, tuple):
            return tuple(getattr(config, name) for name in self.settings)
        return None if self.settings is None else getattr(config, self.settings)

    def passes_of(self, config: Config) -> tuple[int, int]:
        """Sequences per batch row through forward + backward and through a forward only (FLOP accounting)."""
        return self.passes(self.settings_of(config))


def train_loss(params, noisy, tokens, masked, p_mask, valid, prompt_lengths, *, model: ModelConfig, objective: str):
    """The pretraining or SFT loss; the output head runs in sequence chunks (no [B, L, V] float32 logits)."""
    hidden, head = forward_hidden(params, model, noisy, valid)
    ce = head_cross_entropy(hidden, head, tokens, model.loss_chunk_size)
    if objective == "pretrain":
        return pretrain_loss_from_ce(ce, masked, p_mask, valid)
    return sft_loss_from_ce(ce, masked, p_mask, prompt_lengths)


def _diffusion_parts(key, batch, *, model: ModelConfig, train: TrainConfig, settings=None):
    """The forward process over the global batch (pretraining: with the random-length cut)."""
    tokens = batch["tokens"].astype(jnp.int32)
    b, length = tokens.shape
    len_key, noise_key = jax.random.split(key)
    valid = prompt_lengths = None
    if train.objective == "pretrain":
        if train.random_length_prob > 0:
            valid = random_length_mask(len_key, b, length, train.random_length_prob)
        noisy, masked, p_mask = forward_process(noise_key, tokens, model.mask_token_id, train.noise_eps, valid)
    else:
        prompt_lengths = batch["prompt_lengths"].astype(jnp.int32)
        noisy, masked, p_mask = sft_forward_process(noise_key, tokens, prompt_lengths, model.mask_token_id,
                                                    train.noise_eps)
    return noisy, tokens, masked, p_mask, valid, prompt_lengths


def _diffusion_loss(params, reference, *parts, model: ModelConfig, train: TrainConfig, settings=None):
    return train_loss(params, *parts, model=model, objective=train.objective), {}


_ROWS = (("seq_len",), jnp.int32)
_PER_ROW = ((), jnp.int32)

OBJECTIVE_TABLE: dict[str, Objective] = {
    "pretrain": Objective("pretrain", {"tokens": _ROWS}, _diffusion_parts, _diffusion_loss, "make_pretrain_dataset",
                          elbo_eval=True),
    "sft": Objective("sft", {"tokens": _ROWS, "prompt_lengths": _PER_ROW}, _diffusion_parts, _diffusion_loss,
                     "make_sft_dataset", elbo_eval=True),
    "vrpo": Objective("vrpo", {"chosen": _ROWS, "rejected": _ROWS, "prompt_lengths": _PER_ROW}, vrpo.vrpo_parts,
                      vrpo.vrpo_loss, "make_preference_dataset", needs_reference=True, settings="vrpo",
                      shown=("reward_accuracy", "reward_margin"), passes=vrpo.vrpo_passes),
    "grpo": Objective("grpo", {"tokens": _ROWS, "prompt_lengths": _PER_ROW, "advantages": ((), jnp.float32),
                               "old_logps": (("seq_len",), jnp.float32)}, grpo.grpo_parts, grpo.grpo_loss,
                      None, needs_reference=True, settings=("grpo", "sample"),
                      shown=("reward_mean", "kl", "clip_fraction")),
}


def objective_of(name: str) -> Objective:
    """The table entry of `train.objective`."""
    try:
        return OBJECTIVE_TABLE[name]
    except KeyError:
        raise ValueError(f"train.objective: '{name}' has no loss in the train step "
                         f"(known: {', '.join(OBJECTIVE_TABLE)})") from None
