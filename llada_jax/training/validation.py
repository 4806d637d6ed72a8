"""Validation during training: a fixed held-out set, fixed noise, so only the parameters change.

`Validator` reads `train.eval_batches` global batches (of `train.batch_size` rows, sharded like
training batches) from the validation pipeline once, at the start of a run, and evaluates
params on them with one jitted step of its own (the train step is not recompiled). All its
noise derives from `train.seed`, never from the training iterator or step, so the numbers at a
step are the same with or without a resume in between. It reports:

- `eval/loss`: the training objective (pretraining or SFT loss, t ~ U(0, 1) per row) on
  noise drawn once from the seed, averaged over the batches.
- `eval/elbo_nats`: the ELBO bound on the negative log-likelihood per token (SFT: per answer
  token), estimated with a fixed low-discrepancy grid: over the N rows of the set, row g masks
  exactly `l_g = floor(u_g La) + 1` of its La answer positions (uniformly chosen), with
  `u_g = (pi(g) + 1/2) / N` for a permutation pi drawn from the seed: a stratified sample of
  the mask ratio, weighted `La / l_g` as in SPEC section 4. `grid=False` draws `u_g ~ U(0, 1)`
  instead (for measuring how much the grid helps; see benchmarks/eval_variance.py).
- `eval/ppl_bound`: `exp(eval/elbo_nats)`, an upper bound on the perplexity.

Other objectives (vrpo) report their own loss and metrics (`eval/loss`, `eval/reward_margin`,
`eval/reward_accuracy`, ...) on the held-out set, with noise drawn once from the seed and,
for an objective with a reference, the run's frozen reference params.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from llada_jax.config import Config, ModelConfig, TrainConfig
from llada_jax.model.diffusion import (forward_process, masked_copy, pretrain_loss, prompt_positions,
                                       sft_forward_process, sft_loss, token_cross_entropy)
from llada_jax.model.sharding import LOGICAL_RULES, host_batch_to_global, param_shardings
from llada_jax.model.transformer import MaskPredictor
from llada_jax.training.objectives import objective_of
from llada_jax.training.step import batch_shapes, batch_shardings, check_batch_size

# Folded into the run's seed so validation noise never coincides with the training noise.
EVAL_SALT = 0x0E7A1


def eval_key(seed: int) -> jax.Array:
    return jax.random.fold_in(jax.random.key(seed), EVAL_SALT)


def loss_noise(key: jax.Array, tokens: jax.Array, prompt_lengths: jax.Array | None, batch_index, mask_id: int,
               eps: float):
    """The training forward process for batch `batch_index` of the set: `(noisy, masked, p_mask)`."""
    k = jax.random.fold_in(jax.random.fold_in(key, 0), batch_index)
    if prompt_lengths is None:
        return forward_process(k, tokens, mask_id, eps)
    return sft_forward_process(k, tokens, prompt_lengths, mask_id, eps)


def elbo_noise(key: jax.Array, tokens: jax.Array, prompt_lengths: jax.Array | None, batch_index, total_rows: int,
               mask_id: int, grid: bool = True):
    """Mask counts from the t grid for batch `batch_index` (rows `[i B, (i + 1) B)` of the set).

    Returns `(noisy, masked, counts, answer_lengths)`: row r has exactly `counts[r]` of its
    `answer_lengths[r]` non-prompt positions masked.
    """
    b, length = tokens.shape
    perm_key, t_key, pos_key = jax.random.split(jax.random.fold_in(key, 1), 3)
    if grid:
        rows = jax.lax.dynamic_slice(jax.random.permutation(perm_key, total_rows), (batch_index * b,), (b,))
        u = (rows.astype(jnp.float32) + 0.5) / total_rows
    else:
        u = jax.random.uniform(jax.random.fold_in(t_key, batch_index), (b,))
    prompt = jnp.zeros((b,), jnp.int32) if prompt_lengths is None else prompt_lengths.astype(jnp.int32)
    answer = jnp.maximum(length - prompt, 1)
    counts = jnp.clip(jnp.floor(u * answer).astype(jnp.int32) + 1, 1, answer)
    scores = jax.random.uniform(jax.random.fold_in(pos_key, batch_index), (b, length))
    scores = jnp.where(prompt_positions(prompt, length), 2.0, scores)  # prompt positions rank last
    rank = jnp.argsort(jnp.argsort(scores, axis=1), axis=1)
    masked = rank < counts[:, None]
    return masked_copy(tokens, masked, mask_id), masked, counts, answer


def eval_step(params: Any, batch: dict, batch_index: jax.Array, key_data: jax.Array, *, model: ModelConfig,
              eps: float, total_rows: int, grid: bool) -> dict:
    """Sums over one batch: the training loss, `sum_g La/l_g * CE over masked` and `sum_g La`.

    `key_data`: the raw data of `eval_key(seed)` (an argument, so other seeds reuse the compiled step).
    """
    key = jax.random.wrap_key_data(key_data)
    tokens = batch["tokens"].astype(jnp.int32)
    prompts = batch.get("prompt_lengths")
    with nn.logical_axis_rules(LOGICAL_RULES):
        def logits_of(noisy):
            return MaskPredictor(model).apply({"params": params}, noisy, None)[0]

        noisy, masked, p_mask = loss_noise(key, tokens, prompts, batch_index, model.mask_token_id, eps)
        logits = logits_of(noisy)
        if prompts is None:
            loss = pretrain_loss(logits, tokens, masked, p_mask)
        else:
            loss = sft_loss(logits, tokens, masked, p_mask, prompts)
        noisy, masked, counts, answer = elbo_noise(key, tokens, prompts, batch_index, total_rows,
                                                   model.mask_token_id, grid)
        ce = jnp.where(masked, token_cross_entropy(logits_of(noisy), tokens), 0.0)
    weight = answer.astype(jnp.float32) / counts.astype(jnp.float32)
    return {"loss": loss, "elbo_sum": jnp.sum(jnp.sum(ce, axis=1) * weight),
            "tokens": jnp.sum(answer).astype(jnp.float32)}


def make_eval_step(config: Config, mesh: Mesh, grid: bool = True):
    """`eval_step` jitted with the params/batch shardings of training (one compile per shape and mesh)."""
    t = config.train
    check_batch_size(t, mesh)
    key = TrainConfig(objective=t.objective, batch_size=t.batch_size, seq_len=t.seq_len, noise_eps=t.noise_eps,
                      eval_batches=t.eval_batches)  # only what the eval step depends on: runs share it
    return _make_eval_step(config.model, key, mesh, grid)


@functools.lru_cache(maxsize=16)
def _make_eval_step(model: ModelConfig, train: TrainConfig, mesh: Mesh, grid: bool):
    step = functools.partial(eval_step, model=model, eps=train.noise_eps,
                             total_rows=train.eval_batches * train.batch_size, grid=grid)
    replicated = NamedSharding(mesh, P())
    return jax.jit(step, in_shardings=(param_shardings(model, mesh), batch_shardings(train, mesh), replicated,
                                       replicated), out_shardings=replicated)


def objective_eval_step(params: Any, reference: Any, batch: dict, batch_index: jax.Array, key_data: jax.Array, *,
                        model: ModelConfig, train: TrainConfig, settings: Any) -> dict:
    """The objective's loss and metrics on batch `batch_index` of the set, its noise from the eval key."""
    objective = objective_of(train.objective)
    key = jax.random.fold_in(jax.random.fold_in(jax.random.wrap_key_data(key_data), 0), batch_index)
    with nn.logical_axis_rules(LOGICAL_RULES):
        parts = objective.prepare(key, batch, model=model, train=train, settings=settings)
        loss, metrics = objective.loss(params, reference, *parts, model=model, train=train, settings=settings)
    return {"loss": loss, **metrics}


@functools.lru_cache(maxsize=16)
def _make_objective_eval_step(model: ModelConfig, train: TrainConfig, settings: Any, mesh: Mesh):
    step = functools.partial(objective_eval_step, model=model, train=train, settings=settings)
    replicated = NamedSharding(mesh, P())
    shards = param_shardings(model, mesh)
    return jax.jit(step, in_shardings=(shards, shards, batch_shardings(train, mesh), replicated, replicated),
                   out_shardings=replicated)


def summarize(sums: list[dict]) -> dict[str, float]:
    """`eval/loss`, `eval/elbo_nats`, `eval/ppl_bound` from the per-batch sums of `eval_step`."""
    loss = float(np.mean([float(s["loss"]) for s in sums]))
    elbo = sum(float(s["elbo_sum"]) for s in sums) / sum(float(s["tokens"]) for s in sums)
    return {"eval/loss": loss, "eval/elbo_nats": elbo, "eval/ppl_bound": math.exp(min(elbo, 700.0))}


class Validator:
    """The fixed validation set of a run on `mesh`; call it with params for the `eval/` metrics."""

    def __init__(self, config: Config, mesh: Mesh, dataset, reference: Any = None):
        train = config.train
        self.config, self.mesh, self.seed, self.reference = config, mesh, train.seed, reference
        self.objective = objective_of(train.objective)
        if self.objective.needs_reference and reference is None:
            raise ValueError(f"validation of objective {train.objective} needs the reference params")
        rows = train.batch_size // jax.process_count()
        want = batch_shapes(train, rows)
        it = iter(dataset)
        self.batches = []
        for i in range(train.eval_batches):
            try:
                batch = next(it)
            except StopIteration:
                raise ValueError(f"validation data ended after {i} batches; train.eval_batches="
                                 f"{train.eval_batches} needs {train.eval_batches * rows} rows per process") from None
            host = {}
            for k, shape in want.items():
                v = np.asarray(batch[k]) if k in batch else None
                if v is None or v.shape != shape:
                    raise ValueError(f"validation batch '{k}' has shape {None if v is None else v.shape}, "
                                     f"expected {shape} (train.batch_size {train.batch_size})")
                host[k] = v
            self.batches.append(host_batch_to_global(host, mesh))

    def sums(self, params, *, seed: int | None = None, grid: bool = True) -> list[dict]:
        """Per-batch sums (host floats) of `eval_step` over the whole set; `seed` defaults to `train.seed`."""
        step = make_eval_step(self.config, self.mesh, grid)
        key = jax.random.key_data(eval_key(self.seed if seed is None else seed))
        with jax.set_mesh(self.mesh):
            key = jax.device_put(key, NamedSharding(self.mesh, P()))
            out = [step(params, b, jnp.int32(i), key) for i, b in enumerate(self.batches)]
        return jax.device_get(out)

    def objective_sums(self, params, *, seed: int | None = None) -> list[dict]:
        """Per-batch loss and metrics (host floats) of the objective's own loss over the whole set."""
        t = self.config.train
        key_train = TrainConfig(objective=t.objective, batch_size=t.batch_size, seq_len=t.seq_len,
                                noise_eps=t.noise_eps, eval_batches=t.eval_batches)
        step = _make_objective_eval_step(self.config.model, key_train, self.objective.settings_of(self.config),
                                         self.mesh)
        key = jax.random.key_data(eval_key(self.seed if seed is None else seed))
        with jax.set_mesh(self.mesh):
            key = jax.device_put(key, NamedSharding(self.mesh, P()))
            out = [step(params, self.reference, b, jnp.int32(i), key) for i, b in enumerate(self.batches)]
        return jax.device_get(out)

    def __call__(self, params, *, seed: int | None = None, grid: bool = True) -> dict[str, float]:
        if not self.objective.elbo_eval:  # validated by its own loss (`objective_eval_step`)
            sums = self.objective_sums(params, seed=seed)
            return {f"eval/{k}": float(np.mean([float(s[k]) for s in sums])) for k in sums[0]}
        return summarize(self.sums(params, seed=seed, grid=grid))


def make_validator(config: Config, mesh: Mesh, dataset, reference: Any = None) -> Validator | None:
    """The run's `Validator` when `train.eval_every` asks for one, checking that validation data exists."""
    if config.train.eval_every <= 0:
        return None
    if dataset is None:
        raise ValueError(f"train.eval_every={config.train.eval_every} but no validation data: set data.eval_files "
                         f"or data.eval_fraction (or pass eval_dataset)")
    return Validator(config, mesh, dataset, reference)


def eval_due(step: int, train) -> bool:
    """Whether the run evaluates after optimizer step `step` (every `eval_every`, and the last)."""
    return train.eval_every > 0 and (step % train.eval_every == 0 or step == train.steps)
