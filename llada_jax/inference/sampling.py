"""Iterative unmasking samplers (docs/semantics.md, Sampling): the release's `generate`, and faster variants.

`generate` runs the whole reverse process inside one jitted function: blocks are a `lax.scan`
(a Python loop for the prefix cache, whose window length changes per block), the steps of a
block a `lax.scan`, or a `lax.while_loop` in threshold mode where the number of steps varies.
The function is compiled once per (shapes, static options) and cached by `jax.jit`;
`temperature`, `cfg_scale` and `threshold` are traced values, so sweeping them reuses the
compiled sampler. Every argument is validated before anything is traced.

Each step's write (proposal, confidence, selection) is `denoise.transfer`, the same function
the server's slot batch (`serving.slots`) runs with per-row settings.

Only the current block can change in a step, so the output head runs on the block's
positions alone (`head_start`/`head_length` of the model) in every mode; that is exact,
because the release gives every other position confidence -inf.

Randomness: step `t` (the t-th model call, counted from 0) draws from `step_keys(key, t)`:
Gumbel uniforms of shape [B, K, V] in float64 and `random`-remasking uniforms [B, K] in float32.

Sharding: the function follows its inputs. Put the prompt rows on the mesh's batch axes and
the params by the model's logical rules (`sharding.param_shardings`), call under
`jax.set_mesh(mesh)`; the output keeps the batch sharding and equals the 1-device output.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from llada_jax.config import ModelConfig, SampleConfig
from llada_jax.inference.denoise import RowOptions, combine_guidance, transfer
from llada_jax.model.transformer import MaskPredictor, check_tokens, forward_fill_cache, forward_window

NEVER_WRITTEN = np.iinfo(np.int32).max  # write_step of a position no step wrote


class Plan(NamedTuple):
    """The static (compile-time) options of one sampler; hashable."""

    prompt_len: int
    gen_length: int
    block_length: int
    steps_per_block: int
    remasking: str
    logits_eos_inf: bool
    confidence_eos_eot_inf: bool
    sample: bool          # temperature > 0: Gumbel-max in float64
    guided: bool          # cfg_scale > 0: conditional + unconditional rows in one batch
    use_threshold: bool   # threshold parallel decoding (variable number of steps)
    cache: str | None     # None, "prefix" or "dual"

    @property
    def num_blocks(self) -> int:
        return self.gen_length // self.block_length

    @property
    def max_calls(self) -> int:
        """Upper bound of model calls: the scheduled steps, or one token a step in threshold mode."""
        return self.gen_length if self.use_threshold else self.num_blocks * self.steps_per_block


class GenerateResult(NamedTuple):
    """Output of `generate_with_stats`.

    tokens: int32 [B, P + G]. model_calls: int32 scalar, forward passes of the model (a
    classifier-free-guided pass over 2B rows counts once). write_step: int32 [B, P + G], the
    model call (from 0) after which each position was written; -1 for prompt positions.
    trajectory: with `return_trajectory`, int32 numpy [model_calls, B, P + G], the sequence after
    every step (mask id where still masked); else None.
    """

    tokens: jax.Array
    model_calls: jax.Array
    write_step: jax.Array
    trajectory: np.ndarray | None = None


def step_keys(key: jax.Array, step) -> tuple[jax.Array, jax.Array]:
    """(Gumbel key, random-remasking key) of model call `step`."""
    gumbel, rand = jax.random.split(jax.random.fold_in(key, step))
    return gumbel, rand


def scheduled_count(n, steps, i):
    """Tokens the release schedule writes at step i of `steps` for n masks: n // s, +1 for i < n % s."""
    return n // steps + (i < n % steps).astype(jnp.int32)


def transfer_counts(masked_in_block, steps: int):
    """Release schedule [B, steps]: step i transfers `n // s + (1 if i < n % s else 0)` tokens, n = masks."""
    n = jnp.sum(masked_in_block, axis=-1).astype(jnp.int32)[:, None]
    return scheduled_count(n, steps, jnp.arange(steps, dtype=jnp.int32)[None, :])


def trajectory_from(tokens, write_step, model_calls: int, mask_id: int) -> np.ndarray:
    """int32 [model_calls, B, L]: the state after each step, rebuilt from `write_step`."""
    tokens, write_step = np.asarray(tokens), np.asarray(write_step)
    t = np.arange(int(model_calls), dtype=np.int64)[:, None, None]
    return np.where(write_step[None] <= t, tokens[None], mask_id).astype(np.int32)


MASK_MARK = "\u2591"  # ░: a position still masked


def trajectory_specials(tokens, vocab_size: int, cfg: ModelConfig) -> dict[int, str]:
    """Labels `format_trajectory` shows for ids a tokenizer of `vocab_size` pieces does not decode:
    EOS and end-of-turn by name, any other id past its vocabulary as `<id>`."""
    specials = {int(i): f"<{int(i)}>" for i in np.unique(np.asarray(tokens)) if i >= vocab_size}
    specials.update({cfg.eos_token_id: "<eos>", cfg.eot_token_id: "<eot>"})
    return specials


def format_trajectory(trajectory, decode, mask_id: int, *, mark: str = MASK_MARK,
                      specials: dict[int, str] | None = None) -> list[str]:
    """One string per step of a single row's trajectory [T, G]: runs of written tokens decoded
    with `decode(ids) -> str`, each still-masked position shown as `mark`, ids in `specials`
    (e.g. EOS) shown by their label."""
    specials = specials or {}
    lines = []
    for state in np.asarray(trajectory):
        parts, run = [], []
        for tok in state.tolist():
            if tok == mask_id or tok in specials:
                if run:
                    parts.append(decode(run))
                    run = []
                parts.append(mark if tok == mask_id else specials[tok])
            else:
                run.append(tok)
        if run:
            parts.append(decode(run))
        lines.append("".join(parts))
    return lines


# ----------------------------------------------------------------------------------------------
# The jitted sampler


def _sampler_body(params, prompt, prompt_mask, key, temperature, cfg_scale, threshold, cfg, plan):
    b, p = prompt.shape
    g, k_len, s = plan.gen_length, plan.block_length, plan.steps_per_block
    length = p + g
    mask_id = jnp.int32(cfg.mask_token_id)
    x = jnp.concatenate([prompt, jnp.full((b, g), mask_id, jnp.int32)], axis=1)
    write_step = jnp.concatenate(
        [jnp.full((b, p), -1, jnp.int32), jnp.full((b, g), NEVER_WRITTEN, jnp.int32)], axis=1)
    attn = None
    if prompt_mask is not None:
        attn = jnp.concatenate([prompt_mask, jnp.ones((b, g), jnp.bool_)], axis=1)
    in_prompt = jnp.arange(length, dtype=jnp.int32)[None, :] < p
    model_attn = attn if not plan.guided or attn is None else jnp.concatenate([attn, attn], axis=0)

    def block_logits(x, start, cache, first):
        """Logits [B, K, V] of the block at `start` (guided if cfg_scale > 0) and the updated cache."""
        tokens = x
        if plan.guided:
            tokens = jnp.concatenate([x, jnp.where(in_prompt, mask_id, x)], axis=0)
        if plan.cache is None:
            logits, kv = MaskPredictor(cfg).apply({"params": params}, tokens, model_attn,
                                                  head_start=start, head_length=k_len)
        elif first:
            logits, kv = forward_fill_cache(params, cfg, tokens, model_attn, head_start=start, head_length=k_len)
        else:
            if plan.cache == "prefix":   # the block and everything after it (start is static here)
                window = tokens[:, start:]
            else:                        # dual: the block only
                window = jax.lax.dynamic_slice_in_dim(tokens, start, k_len, axis=1)
            logits, kv = forward_window(params, cfg, window, cache, start, model_attn,
                                        head_start=0, head_length=k_len)
        if plan.guided:
            cond, uncond = jnp.split(logits, 2, axis=0)
            logits = combine_guidance(cond, uncond, cfg_scale)
        return logits, kv

    def step(x, ws, start, cache, first, call, count):
        """One model call and one transfer (the shared `denoise.transfer`); `count` [B] (schedule)
        or None (threshold)."""
        logits, cache = block_logits(x, start, cache, first)
        xb = jax.lax.dynamic_slice_in_dim(x, start, k_len, axis=1)
        wb = jax.lax.dynamic_slice_in_dim(ws, start, k_len, axis=1)
        gumbel_u = rand_u = None
        if plan.sample or plan.remasking == "random":
            gumbel_key, rand_key = step_keys(key, call)
            if plan.sample:
                gumbel_u = jax.random.uniform(gumbel_key, logits.shape, jnp.float64)
            if plan.remasking == "random":
                rand_u = jax.random.uniform(rand_key, xb.shape, jnp.float32)
        opts = RowOptions(remasking=plan.remasking, sample=plan.sample, temperature=temperature,
                          logits_eos_inf=plan.logits_eos_inf, confidence_eos_eot_inf=plan.confidence_eos_eot_inf,
                          use_threshold=count is None, threshold=threshold, count=count)
        new_xb, chosen = transfer(logits, xb, True, opts, cfg, gumbel_u, rand_u)
        x = jax.lax.dynamic_update_slice_in_dim(x, new_xb, start, axis=1)
        ws = jax.lax.dynamic_update_slice_in_dim(ws, jnp.where(chosen, call, wb), start, axis=1)
        return x, ws, cache

    def block_has_masks(x, start):
        return jnp.any(jax.lax.dynamic_slice_in_dim(x, start, k_len, axis=1) == mask_id)

    def run_block(x, ws, calls, blk):
        start = p + blk * k_len
        cached = plan.cache is not None
        # With a cache the block's first call fills it (full forward) and later calls recompute a
        # window; without one every call is the same full forward, so all of them sit in the loop.
        first = 1 if cached else 0
        if plan.use_threshold:
            cache = None
            if cached:
                x, ws, cache = step(x, ws, start, None, True, calls, None)

            def cond(c):  # every step writes >= 1 token a row: at most K steps (the cap only guards)
                return block_has_masks(c[0], start) & (c[2] < calls + k_len)

            def body(c):
                x, ws, n, cache = c
                x, ws, cache = step(x, ws, start, cache, not cached, n, None)
                return x, ws, n + 1, cache

            x, ws, calls, _ = jax.lax.while_loop(cond, body, (x, ws, calls + first, cache))
            return x, ws, calls
        counts = transfer_counts(jax.lax.dynamic_slice_in_dim(x, start, k_len, axis=1) == mask_id, s)
        cache = None
        if cached:
            x, ws, cache = step(x, ws, start, None, True, calls, counts[:, 0])

        def body(c, i):
            x, ws, cache = c
            x, ws, cache = step(x, ws, start, cache, not cached, calls + i, counts[:, i])
            return (x, ws, cache), None

        if s > first:
            (x, ws, cache), _ = jax.lax.scan(body, (x, ws, cache), jnp.arange(first, s, dtype=jnp.int32))
        return x, ws, calls + s

    calls = jnp.int32(0)
    ws = write_step
    if plan.cache == "prefix":
        for blk in range(plan.num_blocks):  # static starts: the window length shrinks per block
            x, ws, calls = run_block(x, ws, calls, blk)
    else:
        def scan_block(c, blk):
            return run_block(*c, blk), None

        (x, ws, calls), _ = jax.lax.scan(scan_block, (x, ws, calls),
                                         jnp.arange(plan.num_blocks, dtype=jnp.int32))
    return x, calls, ws


_sampler = jax.jit(_sampler_body, static_argnames=("cfg", "plan"))


def float64_noise(enabled: bool):
    """Float64 inside the sampler only (Gumbel noise); never switched on globally."""
    if not enabled:
        return contextlib.nullcontext()
    ctx = getattr(jax, "enable_x64", None)
    if ctx is not None:
        return ctx(True)
    from jax.experimental import enable_x64  # older JAX

    return enable_x64()


# ----------------------------------------------------------------------------------------------
# Public entry points


def make_plan(cfg: ModelConfig, prompt_shape, attention_mask_shape=None, *, steps, gen_length, block_length,
              temperature=0.0, cfg_scale=0.0, remasking="low_confidence", logits_eos_inf=False,
              confidence_eos_eot_inf=False, threshold=None, cache=None, key=None) -> Plan:
    """Validate the sampler arguments (clear errors, nothing compiled) and return the static plan."""
    for name, v in (("steps", steps), ("gen_length", gen_length), ("block_length", block_length)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ValueError(f"generate: {name} must be an integer, got {v!r}")
    for name, v in (("temperature", temperature), ("cfg_scale", cfg_scale)):
        if not isinstance(v, (int, float, np.floating, np.integer)) or not math.isfinite(v):
            raise ValueError(f"generate: {name} must be a finite number, got {v!r}")
    if threshold is not None and not isinstance(threshold, (int, float, np.floating)):
        raise ValueError(f"generate: threshold must be a number or None, got {threshold!r}")
    sc = SampleConfig(gen_length=int(gen_length), steps=int(steps), block_length=int(block_length),
                      temperature=float(temperature), cfg_scale=float(cfg_scale), remasking=remasking,
                      logits_eos_inf=bool(logits_eos_inf), confidence_eos_eot_inf=bool(confidence_eos_eot_inf),
                      threshold=None if threshold is None else float(threshold), cache=cache)
    sc.validate("generate")
    if len(prompt_shape) != 2 or prompt_shape[0] < 1:
        raise ValueError(f"generate: prompt must be [batch >= 1, length], got shape {tuple(prompt_shape)}")
    if attention_mask_shape is not None and tuple(attention_mask_shape) != tuple(prompt_shape):
        raise ValueError(f"generate: attention_mask shape {tuple(attention_mask_shape)} does not match the "
                         f"prompt shape {tuple(prompt_shape)}")
    total = prompt_shape[1] + sc.gen_length
    if total > cfg.max_seq_len:
        raise ValueError(f"generate: prompt length {prompt_shape[1]} + gen_length {sc.gen_length} = {total} "
                         f"exceeds the model's max_seq_len {cfg.max_seq_len}")
    if (sc.temperature > 0 or sc.remasking == "random") and key is None:
        raise ValueError("generate: temperature > 0 and remasking='random' need a PRNG key (key=jax.random.key(seed))")
    return Plan(prompt_len=int(prompt_shape[1]), gen_length=sc.gen_length, block_length=sc.block_length,
                steps_per_block=sc.steps // (sc.gen_length // sc.block_length), remasking=sc.remasking,
                logits_eos_inf=sc.logits_eos_inf, confidence_eos_eot_inf=sc.confidence_eos_eot_inf,
                sample=sc.temperature > 0, guided=sc.cfg_scale > 0, use_threshold=sc.threshold is not None,
                cache=sc.cache)


def generate_with_stats(params: Any, cfg: ModelConfig, prompt, attention_mask=None, *, steps: int,
                        gen_length: int, block_length: int, temperature: float = 0.0, cfg_scale: float = 0.0,
                        remasking: str = "low_confidence", logits_eos_inf: bool = False,
                        confidence_eos_eot_inf: bool = False, threshold: float | None = None,
                        cache: str | None = None, key: jax.Array | None = None,
                        return_trajectory: bool = False) -> GenerateResult:
    """`generate`, returning tokens, the number of model calls and when each position was written."""
    if not hasattr(prompt, "shape"):
        prompt = np.asarray(prompt)
    if attention_mask is not None and not hasattr(attention_mask, "shape"):
        attention_mask = np.asarray(attention_mask)
    plan = make_plan(cfg, tuple(prompt.shape), None if attention_mask is None else tuple(attention_mask.shape),
                     steps=steps, gen_length=gen_length, block_length=block_length, temperature=temperature,
                     cfg_scale=cfg_scale, remasking=remasking, logits_eos_inf=logits_eos_inf,
                     confidence_eos_eot_inf=confidence_eos_eot_inf, threshold=threshold, cache=cache, key=key)
    check_tokens(cfg, prompt, attention_mask, where="prompt")
    if attention_mask is not None:
        attention_mask = attention_mask.astype(bool) if isinstance(attention_mask, jax.Array) else \
            np.asarray(attention_mask).astype(bool)
    prompt = prompt.astype(jnp.int32) if isinstance(prompt, jax.Array) else np.asarray(prompt, np.int32)
    if key is None:
        key = jax.random.key(0)  # unused: the plan draws no randomness
    with float64_noise(plan.sample):
        t = jnp.asarray(temperature, jnp.float64 if plan.sample else jnp.float32)
        tokens, calls, ws = _sampler(params, prompt, attention_mask, key, t,
                                     jnp.float32(cfg_scale), jnp.float32(1.0 if threshold is None else threshold),
                                     cfg=cfg, plan=plan)
    traj = None
    if return_trajectory:
        traj = trajectory_from(tokens, ws, int(calls), cfg.mask_token_id)
    return GenerateResult(tokens, calls, ws, traj)


def generate(params: Any, cfg: ModelConfig, prompt, attention_mask=None, *, steps: int, gen_length: int,
             block_length: int, temperature: float = 0.0, cfg_scale: float = 0.0,
             remasking: str = "low_confidence", logits_eos_inf: bool = False,
             confidence_eos_eot_inf: bool = False, threshold: float | None = None, cache: str | None = None,
             key: jax.Array | None = None, return_trajectory: bool = False):
    """Sample `gen_length` tokens after each prompt row by iterative unmasking (docs/semantics.md, Sampling).

    prompt: int [B, P] (left-padded when lengths differ; `attention_mask` [B, P] marks real
    tokens). Returns int32 [B, P + G]; with `return_trajectory`, `(tokens, trajectory)` where
    trajectory is [model_calls, B, P + G]. `remasking`: low_confidence | random | margin | entropy.
    `threshold`: Fast-dLLM parallel decoding (each block runs until it has no masks; `steps`
    is then unused). `cache`: None | "prefix" | "dual" (Fast-dLLM, refreshed once per block).
    """
    result = generate_with_stats(
        params, cfg, prompt, attention_mask, steps=steps, gen_length=gen_length, block_length=block_length,
        temperature=temperature, cfg_scale=cfg_scale, remasking=remasking, logits_eos_inf=logits_eos_inf,
        confidence_eos_eot_inf=confidence_eos_eot_inf, threshold=threshold, cache=cache, key=key,
        return_trajectory=return_trajectory)
    if return_trajectory:
        return result.tokens, result.trajectory
    return result.tokens
