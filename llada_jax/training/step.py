"""The train state and one jitted training step (any objective of training/objectives.py), sharded by logical rules.

`TrainState` is a plain pytree: step, float32 master params, AdamW state, the run's raw PRNG
key and the count of consecutive non-finite steps. The step draws all its randomness from
`fold_in(key, step)`, so a resumed run repeats the same numbers. It noises the whole global
batch once (the objective's `prepare`: forward process, the 1% random-length cut for
pretraining) and then, with gradient accumulation, runs the microbatches of the objective's
loss in a `lax.scan`, so results do not depend on `grad_accum` beyond float rounding. An
objective with a reference (vrpo, grpo) takes the frozen reference params as a third,
non-differentiated argument, sharded like the params and never part of the state. A non-finite loss or gradient norm leaves params and
optimizer state untouched and increments `bad_steps`; the loop decides when to stop.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from llada_jax.config import Config, ModelConfig, TrainConfig
from llada_jax.model.transformer import init_params, param_shapes
from llada_jax.training.objectives import objective_of, train_loss
from llada_jax.training.optim import make_optimizer, wsd_schedule
from llada_jax.model.sharding import (BATCH_AXES, LOGICAL_RULES, batch_divisor, batch_sharding, param_shardings,
                                tree_shardings_like, with_shardings)


class TrainState(NamedTuple):
    step: jax.Array        # int32 scalar: optimizer steps taken (skipped ones included)
    params: Any            # master params (param_dtype, float32 by default)
    opt_state: Any         # optax state
    rng: jax.Array         # uint32 raw key data of the run's base key
    bad_steps: jax.Array   # int32 scalar: consecutive non-finite steps so far


def batch_shapes(train: TrainConfig, rows: int) -> dict[str, tuple[int, ...]]:
    """Shape of each batch field for `rows` rows, e.g. tokens [rows, seq_len], prompt_lengths [rows]."""
    return objective_of(train.objective).shapes(train, rows)


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


__all__ = ["TrainState", "train_loss", "train_step", "make_train_step", "abstract_state", "abstract_batch",
           "abstract_reference", "batch_shapes", "init_state"]


def train_step(state: TrainState, batch: dict, reference: Any = None, *, model: ModelConfig, train: TrainConfig,
               mesh: Mesh | None = None, settings: Any = None) -> tuple[TrainState, dict]:
    """One optimizer step over the global batch; returns the new state and scalar metrics.

    `reference`: the frozen reference params of an objective that needs them (else None);
    `settings`: the objective's config section. Pure (no Python side effects); `make_train_step`
    jits it with shardings and donation.
    """
    optimizer = make_optimizer(train)
    objective = objective_of(train.objective)
    b = next(iter(batch.values())).shape[0]
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    with nn.logical_axis_rules(LOGICAL_RULES):
        parts = objective.prepare(key, batch, model=model, train=train, settings=settings)
        loss_fn = functools.partial(objective.loss, model=model, train=train, settings=settings)
        grad_fn = jax.value_and_grad(lambda p, *xs: loss_fn(p, reference, *xs), has_aux=True)
        accum = train.grad_accum
        if accum == 1:
            (loss, extra), grads = grad_fn(state.params, *parts)
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
                (l, m), g = grad_fn(state.params, *xs)
                return (loss_sum + l, jax.tree.map(jnp.add, grad_sum, g)), m

            zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)
            (loss_sum, grad_sum), per_micro = jax.lax.scan(body, (jnp.zeros((), jnp.float32), zeros), micro)
            loss = loss_sum / accum
            extra = jax.tree.map(lambda m: jnp.mean(m, axis=0), per_micro)  # equal microbatches: the batch mean
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
               "bad_steps": bad_steps, **extra}
    return new_state, metrics


def abstract_reference(config: Config, mesh: Mesh):
    """The reference params' `ShapeDtypeStruct`s, sharded like the policy params (AOT target)."""
    return with_shardings(param_shapes(config.model), param_shardings(config.model, mesh))


def batch_shardings(train: TrainConfig, mesh: Mesh) -> dict:
    return {k: batch_sharding(mesh, len(shape)) for k, shape in batch_shapes(train, train.batch_size).items()}


# TrainConfig fields that do not change the compiled step (bookkeeping of the loop around it).
_LOOP_ONLY_FIELDS = ("seed", "init_from", "tokenizer", "checkpoint_dir", "checkpoint_every_steps",
                     "checkpoint_every_minutes", "max_to_keep", "async_checkpointing", "log_every", "tensorboard",
                     "max_bad_steps", "peak_tflops", "eval_every", "eval_batches", "profile_steps",
                     "profile_on_demand_steps", "input_wait_warning")


def make_train_step(config: Config, mesh: Mesh):
    """`train_step` jitted with the state/batch shardings of `mesh`, donating the old state.

    Called as `step(state, batch)`, or `step(state, batch, reference)` for an objective with a
    reference (`objective_of(train.objective).needs_reference`).

    Runs that differ only in loop bookkeeping (run directory, logging, ...) share one compiled step.
    """
    check_batch_size(config.train, mesh)
    defaults = TrainConfig()
    # dataclasses.replace: not re-validated (a vrpo config without its init_from is only a cache key here)
    train = dataclasses.replace(config.train, **{f: getattr(defaults, f) for f in _LOOP_ONLY_FIELDS})
    return _make_train_step(config.replace(train=train), mesh)


@functools.lru_cache(maxsize=16)
def _make_train_step(config: Config, mesh: Mesh):
    shards = state_shardings(config, mesh)
    replicated = NamedSharding(mesh, P())
    objective = objective_of(config.train.objective)
    step = functools.partial(train_step, model=config.model, train=config.train, mesh=mesh,
                             settings=objective.settings_of(config))
    in_shardings = (shards, batch_shardings(config.train, mesh))
    if objective.needs_reference:
        in_shardings += (shards.params,)
    jitted = jax.jit(step, in_shardings=in_shardings, out_shardings=(shards, replicated), donate_argnums=(0,))
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
    fields = objective_of(train.objective).fields
    return {k: jax.ShapeDtypeStruct(shape, fields[k][1], sharding=batch_sharding(mesh, len(shape)))
            for k, shape in batch_shapes(train, train.batch_size).items()}
