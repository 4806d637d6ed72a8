"""GRPO's batch source: rollouts by the jitted sampler, rewards, advantages and old log-probabilities.

The loop asks `RolloutSource.next_batch(state, step, mesh)` for the batch of each optimizer step.
At every `grpo.mu`-th step (a rollout step s0) it takes the next prompts from the prompt
pipeline, repeats each `grpo.num_generations` (G) times, samples completions with the current
policy (the `sample:` settings at `grpo.temperature`, rows sharded over the mesh's batch axes
as `eval` does), scores them (`training.rewards`), turns the rewards into group advantages and
takes the policy's one-step log-probabilities under the masks of steps s0 .. s0 + mu - 1 (the
masks the train step draws from `fold_in(rng, step)`, so the first inner step's ratio is 1).
Steps s0 .. s0 + mu - 1 then each get that rollout batch with their own old log-probabilities.

All randomness comes from the train state: the rollout key is `fold_in(fold_in(rng, s0), ROLLOUT)`.
The iterator state saved with a checkpoint holds the prompt pipeline's position and the current
rollout batch, so a run resumed inside a rollout batch continues it bitwise.
"""

from __future__ import annotations

import base64
import functools
import io
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from llada_jax.config import Config, ModelConfig
from llada_jax.inference.sampling import generate_with_stats
from llada_jax.io.tokenizer import decode_answer
from llada_jax.model.sharding import LOGICAL_RULES, batch_spec, host_batch_to_global
from llada_jax.training.grpo import (completion_logps, completion_mask, group_advantages, prompt_width,
                                     zero_variance_share)
from llada_jax.training.rewards import compute_rewards, load_reward

ROLLOUT = 0x524F4C4C  # fold_in tag of the rollout key ("ROLL"): apart from the step's own key
_ARRAYS = ("tokens", "prompt_lengths", "advantages", "old_logps")


def rollout_key(rng: jax.Array, step: int) -> jax.Array:
    """The sampler key of the rollout made at optimizer step `step` (raw key data `rng` of the state)."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.wrap_key_data(rng), step), ROLLOUT)


@functools.partial(jax.jit, static_argnames=("model", "width", "p_mask", "mu"))
def old_logps(params, tokens, prompt_lengths, rng, step, *, model: ModelConfig, width: int, p_mask: float,
              mu: int) -> jax.Array:
    """float32 [B, mu, L]: the policy's one-step log-probabilities (0 on prompt positions) under the
    masks the train step draws at steps `step` .. `step + mu - 1`."""
    base = jax.random.wrap_key_data(rng)
    out = []
    with nn.logical_axis_rules(LOGICAL_RULES):
        for j in range(mu):
            lp = completion_logps(params, model, tokens, prompt_lengths, jax.random.fold_in(base, step + j),
                                  prompt_width=width, p_mask=p_mask)
            out.append(jnp.pad(lp, ((0, 0), (width, 0))))
    return jnp.stack(out, axis=1)


def local_rows(x: jax.Array, mesh) -> np.ndarray:
    """This process's rows of a global batch-sharded array (all of them with one process)."""
    if jax.process_count() == 1:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    spec = batch_spec(x.ndim)
    return np.asarray(multihost_utils.global_array_to_host_local_array(x, mesh, spec))


def _encode(a: np.ndarray) -> str:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _decode(s: str) -> np.ndarray:
    return np.load(io.BytesIO(base64.b64decode(s)), allow_pickle=False)


class RolloutSource:
    """The loop's batch source for objective grpo (see the module docstring).

    `prompt_iter` yields {"row": int32 [prompts per process]} indices into `rows`
    (`data.prompts.make_prompt_dataset`); `get_state`/`set_state` make it checkpointable with
    the train state (Grain's checkpoint handler stores the bytes as this process's JSON file).
    """

    def __init__(self, config: Config, rows, prompt_iter, tokenizer, reward_fn=None):
        self.config, self.rows, self.prompt_iter, self.tokenizer = config, rows, prompt_iter, tokenizer
        self.grpo, self.sample, self.model = config.grpo, config.sample, config.model
        self.reward_fn = reward_fn if reward_fn is not None else load_reward(self.grpo.reward)
        self.width = prompt_width(config.train, self.sample)
        self._buffer: dict | None = None   # the current rollout batch: step, arrays, metrics

    def __iter__(self):
        return self

    def __next__(self):
        raise TypeError("a GRPO batch is sampled by the policy: call next_batch(state, step, mesh)")

    def next_batch(self, state, step: int, mesh) -> dict[str, np.ndarray]:
        """This process's rows of the batch of optimizer step `step` (= `state.step`)."""
        mu = self.grpo.mu
        first = step - step % mu
        if self._buffer is None or self._buffer["step"] != first:
            if step % mu:
                raise RuntimeError(f"grpo: step {step} is inside the rollout batch of step {first}, whose "
                                   f"rollouts are not in the restored iterator state")
            self._buffer = self._rollout(state, first, mesh)
        b = self._buffer
        return {"tokens": b["tokens"], "prompt_lengths": b["prompt_lengths"], "advantages": b["advantages"],
                "old_logps": np.ascontiguousarray(b["old_logps"][:, step - first])}

    @property
    def batch_metrics(self) -> dict[str, float]:
        """Metrics of the rollout batch the last `next_batch` came from (logged with each step)."""
        return dict(self._buffer["metrics"]) if self._buffer is not None else {}

    def _rollout(self, state, first: int, mesh) -> dict:
        g, model, width = self.grpo.num_generations, self.model, self.width
        idx = np.repeat(np.asarray(next(self.prompt_iter)["row"]), g)
        lengths = self.rows.lengths[idx]
        host = {"prompt": self.rows.ids[idx], "mask": np.arange(width)[None, :] >= width - lengths[:, None],
                "prompt_lengths": lengths}
        on_mesh = host_batch_to_global(host, mesh)
        options = {**self.sample.to_dict(), "temperature": self.grpo.temperature}
        with jax.set_mesh(mesh):
            out = generate_with_stats(state.params, model, on_mesh["prompt"], on_mesh["mask"],
                                      key=rollout_key(state.rng, first), **options)
            old = old_logps(state.params, out.tokens, on_mesh["prompt_lengths"], state.rng, first, model=model,
                            width=width, p_mask=self.grpo.p_mask, mu=self.grpo.mu)
        tokens = local_rows(out.tokens, mesh)
        old = local_rows(old, mesh)
        completions = tokens[:, width:]
        stops = (model.eos_token_id, model.eot_token_id)
        texts = [decode_answer(self.tokenizer, row, stops) for row in completions]
        rewards = compute_rewards(self.reward_fn, [self.rows.prompts[i] for i in idx], texts,
                                  [self.rows.answers[i] for i in idx], [self.rows.sources[i] for i in idx])
        advantages = np.asarray(group_advantages(rewards, g, scale=self.grpo.scale_advantages), np.float32)
        lengths_c = np.asarray(completion_mask(completions, model.eos_token_id)).sum(axis=1)
        metrics = {"reward_mean": float(rewards.mean()), "reward_std": float(rewards.std()),
                   "zero_std_share": float(zero_variance_share(rewards, g)),
                   "completion_length": float(lengths_c.mean())}
        return {"step": first, "tokens": tokens.astype(np.int32), "prompt_lengths": lengths.astype(np.int32),
                "advantages": advantages, "old_logps": old.astype(np.float32), "metrics": metrics}

    # Checkpointing (Grain's handler: bytes for an iterator that is not a Grain DatasetIterator).

    def get_state(self) -> bytes:
        buf = None
        if self._buffer is not None:
            buf = {"step": self._buffer["step"], "metrics": self._buffer["metrics"],
                   **{k: _encode(self._buffer[k]) for k in _ARRAYS}}
        return json.dumps({"prompts": self.prompt_iter.get_state(), "rollout": buf}, sort_keys=True).encode()

    def set_state(self, state: bytes) -> None:
        saved = json.loads(state)
        self.prompt_iter.set_state(saved["prompts"])
        buf = saved["rollout"]
        self._buffer = None if buf is None else {
            "step": int(buf["step"]), "metrics": buf["metrics"], **{k: _decode(buf[k]) for k in _ARRAYS}}

    def start_prefetch(self) -> None:
        start = getattr(self.prompt_iter, "start_prefetch", None)
        if start is not None:
            start()


def make_rollout_source(config: Config, tokenizer, data_cfg, split: str = "train") -> RolloutSource:
    """The batch source of objective grpo over the prompt rows of `data_cfg` (this process's shard)."""
    from llada_jax.data.prompts import build_prompt_rows, make_prompt_dataset

    train, g = config.train, config.grpo.num_generations
    count = jax.process_count()
    if train.batch_size % (g * count):
        raise ValueError(f"train.batch_size={train.batch_size} is not a multiple of grpo.num_generations={g} "
                         f"x {count} process(es): each process samples whole groups")
    width = prompt_width(train, config.sample)
    if width <= 0:
        raise ValueError(f"train.seq_len={train.seq_len} leaves no room for a prompt before "
                         f"sample.gen_length={config.sample.gen_length} completion tokens")
    rows = build_prompt_rows(data_cfg, tokenizer, width, config.model.pad_token_id, shard_index=jax.process_index(),
                             shard_count=count, split=split)
    prompts = make_prompt_dataset(rows, data_cfg, train.batch_size // (g * count), seed=train.seed)
    return RolloutSource(config, rows, iter(prompts), tokenizer)
