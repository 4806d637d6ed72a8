"""The train state and one jitted training step (pretraining or SFT), sharded by logical rules.

`TrainState` is a plain pytree: step, float32 master params, AdamW state, the run's raw PRNG
key and the count of consecutive non-finite steps. The step draws all its randomness from
`fold_in(key, step)`, so a resumed run repeats the same numbers. It noises the whole global
batch once (forward process, the 1% random-length cut for pretraining) and then, with
gradient accumulation, runs the microbatches in a `lax.scan`, so results do not depend on
`grad_accum` beyond float rounding. A non-finite loss or gradient norm leaves params and
optimizer state untouched and increments `bad_steps`; the loop decides when to stop.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from llada_jax.config import Config, ModelConfig, TrainConfig
from llada_jax.model.diffusion import (forward_process, head_cross_entropy, pretrain_loss_from_ce, random_length_mask,
                                       sft_forward_process, sft_loss_from_ce)
from llada_jax.model.transformer import forward_hidden, init_params, param_shapes
from llada_jax.training.optim import make_optimizer, wsd_schedule
from llada_jax.model.sharding import (BATCH_AXES, LOGICAL_RULES, batch_divisor, batch_sharding, param_shardings,
                                tree_shardings_like, with_shardings)


class TrainState(NamedTuple):
    step: jax.Array        # int32 scalar: optimizer steps taken (skipped ones included)
    params: Any            # master params (param_dtype, float32 by default)
    opt_state: Any         # optax state
    rng: jax.Array         # uint32 raw key data of the run's base key
    bad_steps: jax.Array   # int32 scalar: consecutive non-finite steps so far


def batch_keys(objective: str) -> tuple[str, ...]:
    return ("tokens",) if objective == "pretrain" else ("tokens", "prompt_lengths")


def batch_shapes(train: TrainConfig, rows: int) -> dict[str, tuple[int, ...]]:
    """Shape of each batch field for `rows` rows: tokens [rows, seq_len], prompt_lengths [rows]."""
    return {k: (rows, train.seq_len) if k == "tokens" else (rows,) for k in batch_keys(train.objective)}


def check_batch_size(train: TrainConfig, mesh: Mesh) -> None:
    """Each microbatch must split evenly over the mesh's row shards."""
    shards = batch_divisor(mesh)
    micro = train.batch_size // train.grad_accum
    if micro % shards:
        raise ValueError(
            f"train.batch_size={train.batch_size} with grad_accum={train.grad_accum} gives microbatches of "
            f"{micro} rows, not divisible by the {shards} row shards of the mesh (data x fsdp)"
        )


def state_shapes(config: Config) -> TrainState:
    """`TrainState` of `ShapeDtypeStruct`s (no shardings), without allocating anything."""
    params = param_shapes(config.model)
    opt_state = jax.eval_shape(make_optimizer(config.train).init, params)
    return TrainState(jax.ShapeDtypeStruct((), jnp.int32), params, opt_state,
                      jax.ShapeDtypeStruct((2,), jnp.uint32), jax.ShapeDtypeStruct((), jnp.int32))


def state_shardings(config: Config, mesh: Mesh, shapes: TrainState | None = None) -> TrainState:
    """`TrainState` of `NamedSharding`s: params by the logical rules, moments like their params."""
    shapes = state_shapes(config) if shapes is None else shapes
    p_shard = param_shardings(config.model, mesh)
    replicated = NamedSharding(mesh, P())
    return TrainState(replicated, p_shard, tree_shardings_like(shapes.opt_state, shapes.params, p_shard, mesh),
                      replicated, replicated)


def abstract_state(config: Config, mesh: Mesh) -> TrainState:
    """`TrainState` of `ShapeDtypeStruct`s carrying the mesh's shardings (restore / AOT target)."""
    shapes = state_shapes(config)
    return with_shardings(shapes, state_shardings(config, mesh, shapes))


def init_state(config: Config, mesh: Mesh, params: Any = None) -> TrainState:
    """A fresh state on `mesh`: random params from `train.seed` (or the given `params`)."""
    optimizer = make_optimizer(config.train)
    shards = state_shardings(config, mesh)
    key = jax.random.key(config.train.seed)
    init_key, run_key = jax.random.split(key)

    def make(p):
        if p is None:
            p = init_params(config.model, init_key)
        return TrainState(jnp.zeros((), jnp.int32), p, optimizer.init(p), jax.random.key_data(run_key),
                          jnp.zeros((), jnp.int32))

    if params is None:
        return jax.jit(lambda: make(None), out_shardings=shards)()
    params = jax.device_put(params, shards.params)
    return jax.jit(make, in_shardings=(shards.params,), out_shardings=shards)(params)


def _schedule_count(opt_state) -> jax.Array:
    """The optimizer's update count (applied updates only) from its schedule state."""
    counts = optax.tree_utils.tree_get_all_with_path(opt_state, "count")
    return counts[-1][1]


def train_loss(params, noisy, tokens, masked, p_mask, valid, prompt_lengths, *, model: ModelConfig, objective: str):
    """The objective's loss; the output head runs in sequence chunks (no [B, L, V] float32 logits)."""
    hidden, head = forward_hidden(params, model, noisy, valid)
    ce = head_cross_entropy(hidden, head, tokens, model.loss_chunk_size)
    if objective == "pretrain":
        return pretrain_loss_from_ce(ce, masked, p_mask, valid)
    return sft_loss_from_ce(ce, masked, p_mask, prompt_lengths)


def train_step(state: TrainState, batch: dict, *, model: ModelConfig, train: TrainConfig,
               mesh: Mesh | None = None) -> tuple[TrainState, dict]:
    """One optimizer step over the global batch; returns the new state and scalar metrics.

    Pure (no Python side effects); `make_train_step` jits it with shardings and donation.
    """
    optimizer = make_optimizer(train)
    tokens = batch["tokens"].astype(jnp.int32)
    b, length = tokens.shape
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    len_key, noise_key = jax.random.split(key)
    with nn.logical_axis_rules(LOGICAL_RULES):
        if train.objective == "pretrain":
            valid = None
            if train.random_length_prob > 0:
                valid = random_length_mask(len_key, b, length, train.random_length_prob)
            noisy, masked, p_mask = forward_process(noise_key, tokens, model.mask_token_id, train.noise_eps, valid)
            prompt_lengths = None
        else:
            valid = None
            prompt_lengths = batch["prompt_lengths"].astype(jnp.int32)
            noisy, masked, p_mask = sft_forward_process(noise_key, tokens, prompt_lengths, model.mask_token_id,
                                                        train.noise_eps)
        grad_fn = jax.value_and_grad(functools.partial(train_loss, model=model, objective=train.objective))
        parts = (noisy, tokens, masked, p_mask, valid, prompt_lengths)
        accum = train.grad_accum
        if accum == 1:
            loss, grads = grad_fn(state.params, *parts)
        else:
            def split(x):
                if x is None:
                    return None
                # Microbatch i takes rows i, i + A, ...: every device keeps its own rows.
                y = x.reshape(b // accum, accum, *x.shape[1:]).swapaxes(0, 1)
                if mesh is not None:
                    spec = P(None, BATCH_AXES, *([None] * (x.ndim - 1)))
                    y = jax.lax.with_sharding_constraint(y, NamedSharding(mesh, spec))
                return y

            micro = tuple(split(x) for x in parts)

            def body(carry, xs):
                loss_sum, grad_sum = carry
                l, g = grad_fn(state.params, *xs)
                return (loss_sum + l, jax.tree.map(jnp.add, grad_sum, g)), None

            zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)
            (loss_sum, grad_sum), _ = jax.lax.scan(body, (jnp.zeros((), jnp.float32), zeros), micro)
            loss = loss_sum / accum
            grads = jax.tree.map(lambda g, p: (g / accum).astype(p.dtype), grad_sum, state.params)

    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    lr = wsd_schedule(train)(_schedule_count(state.opt_state))

    def apply(_):
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        return optax.apply_updates(state.params, updates), opt_state

    params, opt_state = jax.lax.cond(finite, apply, lambda _: (state.params, state.opt_state), None)
    bad_steps = jnp.where(finite, 0, state.bad_steps + 1).astype(jnp.int32)
    new_state = TrainState(state.step + 1, params, opt_state, state.rng, bad_steps)
    metrics = {"loss": loss, "grad_norm": grad_norm, "lr": lr, "finite": finite, "step": state.step,
               "bad_steps": bad_steps}
    return new_state, metrics


def batch_shardings(train: TrainConfig, mesh: Mesh) -> dict:
    return {k: batch_sharding(mesh, len(shape)) for k, shape in batch_shapes(train, train.batch_size).items()}


# TrainConfig fields that do not change the compiled step (bookkeeping of the loop around it).
_LOOP_ONLY_FIELDS = ("seed", "init_from", "tokenizer", "checkpoint_dir", "checkpoint_every_steps",
                     "checkpoint_every_minutes", "max_to_keep", "async_checkpointing", "log_every", "tensorboard",
                     "max_bad_steps", "peak_tflops", "eval_every", "eval_batches", "profile_steps",
                     "profile_on_demand_steps", "input_wait_warning")


def make_train_step(config: Config, mesh: Mesh):
    """`train_step` jitted with the state/batch shardings of `mesh`, donating the old state.

    Runs that differ only in loop bookkeeping (run directory, logging, ...) share one compiled step.
    """
    check_batch_size(config.train, mesh)
    defaults = TrainConfig()
    train = config.train.replace(**{f: getattr(defaults, f) for f in _LOOP_ONLY_FIELDS})
    return _make_train_step(config.replace(train=train), mesh)


@functools.lru_cache(maxsize=16)
def _make_train_step(config: Config, mesh: Mesh):
    shards = state_shardings(config, mesh)
    replicated = NamedSharding(mesh, P())
    step = functools.partial(train_step, model=config.model, train=config.train, mesh=mesh)
    jitted = jax.jit(step, in_shardings=(shards, batch_shardings(config.train, mesh)),
                     out_shardings=(shards, replicated), donate_argnums=(0,))
    return _OnMesh(jitted, mesh)


class _OnMesh:
    """A jitted function traced, lowered and run with `mesh` set, so the model's logical
    activation constraints apply (they are no-ops without a mesh in context)."""

    def __init__(self, jitted, mesh: Mesh):
        self.jitted, self.mesh = jitted, mesh

    def __call__(self, *args):
        with jax.set_mesh(self.mesh):
            return self.jitted(*args)

    def lower(self, *args):
        with jax.set_mesh(self.mesh):
            return self.jitted.lower(*args)


def abstract_batch(train: TrainConfig, mesh: Mesh) -> dict:
    """`ShapeDtypeStruct`s of one global batch with its shardings (for AOT compilation)."""
    return {k: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=batch_sharding(mesh, len(shape)))
            for k, shape in batch_shapes(train, train.batch_size).items()}
