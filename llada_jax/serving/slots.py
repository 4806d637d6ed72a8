"""The slot batch: requests as rows of one batch, each at its own block and step, stepped together.

A slot batch is a batch with per-row schedules. A model call is `_one_call`: one model call over
the rows (`model.transformer.forward_rows`, the output head on each row's current block only),
one `inference.denoise.transfer` with every setting per row (the transfer `sampling.generate`
runs too), then each row's schedule (block, step in block, model calls) advanced on the device
exactly as `generate`'s loop advances it. `slot_chunk` runs a traced number of such calls in one
jitted program (a `fori_loop`, as `generate` runs its steps): the host round trip, which costs
as much as a call of a small model, is paid once a chunk. The chunk records, for every call,
each row's block and which positions it wrote, from which the host rebuilds a frame per call.
`SlotBatch.step(budget_s)` sizes a chunk to the time budget and ends it at the call after which
the first of its requests can be done, so new requests take free rows between chunks.

Layout (the answer must equal `generate` on the prompt alone): a row holds its prompt and
answer at the positions they have alone, `[0, P + G)`, padded at the END to the batch's length
bucket; pad keys are masked, so they take no part in attention. A request with cfg_scale > 0
takes two rows: the conditional one and its unconditional copy (prompt positions masked),
combined as `generate` combines its two halves. Prefix and dual caches are per row: the cache
is full length and a per-row `fresh` mask says which positions this call recomputes (all at a
block's first step, which fills the cache; then the block and what follows it, or the block
only); the others are read from the cache, the keys/values `generate`'s windowed call sees.
Here the rows are always computed full length, so a cache reproduces `generate`'s results but
not its savings.

Numerics: XLA's CPU kernels round reductions and small matmuls differently for different
shapes (batch size and row length both: measured, see the tests' module doc), so the logits of a
row in a batch agree with the alone call to ~1e-7, not bit for bit; tokens agree unless two
candidates are that close (a near-tie).

Randomness: the row's request key `jax.random.key(seed)`, step t's keys `step_keys(key, t)`,
the Gumbel uniforms drawn per row as [1, W, V] (a prefix of which is the alone [1, K, V] draw).

Shapes come from fixed buckets: batch (powers of two up to max_batch), row length
(`default_length_buckets`) and head window (`window_buckets`: powers of two from 8, at most the row length), times two
static switches (some row samples; some row has a cache) and the confidence measure (the one
every row uses, or all of them): `planned_compiles` is their product, `compiles` counts those used.
The number of calls in a chunk is traced, so it adds no compiles.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from llada_jax.config import REMASKING, ModelConfig
from llada_jax.inference.denoise import RowOptions, combine_guidance, transfer
from llada_jax.inference.sampling import Plan, float64_noise, scheduled_count, step_keys
from llada_jax.model.transformer import KVCache, forward_rows
from llada_jax.serving.requests import SamplingRequest

# Columns of the per-row int32 table passed to each chunk: the schedule's state (block, step in
# block, model calls so far), which the chunk advances, then the request's constants.
_STATE_COLS = ("block", "step_in_block", "call")
_INT_COLS = _STATE_COLS + ("block_length", "steps_per_block", "num_blocks", "remasking", "src", "partner",
                           "prompt_len", "length", "cache_mode", "flags")
_FLAG_BITS = ("cond", "uncond", "guided", "sample", "use_threshold", "logits_eos_inf", "confidence_eos_eot_inf")
_FLOAT_COLS = ("threshold", "cfg_scale")
_CACHE_MODES = (None, "prefix", "dual")
MAX_CHUNK_CALLS = 64  # model calls one jitted chunk may run (the size of its per-call record)


def default_length_buckets(max_seq_len: int) -> tuple[int, ...]:
    """Row lengths: multiples of 8 up to 128, then eight a doubling (<= 12.5% padding), and max_seq_len."""
    out = set(range(8, min(128, max_seq_len) + 1, 8))
    lo = 128
    while lo < max_seq_len:
        out.update(range(lo, 2 * lo + 1, lo // 8))
        lo *= 2
    return tuple(sorted({b for b in out if b <= max_seq_len} | {max_seq_len}))


def _pow2_upto(n: int) -> list[int]:
    out, b = [], 1
    while b < n:
        out.append(b)
        b *= 2
    return out + [n]


def window_buckets(length: int) -> list[int]:
    """Head windows for rows of `length`: powers of two from 8 (or `length` if shorter), and `length`."""
    return [w for w in _pow2_upto(length) if w >= min(8, length)]


def _bucket(value: int, buckets) -> int:
    for b in buckets:
        if b >= value:
            return b
    raise ValueError(f"{value} exceeds the largest bucket {buckets[-1]}")


class _Rows(NamedTuple):
    ints: jax.Array      # int32 [B, len(_INT_COLS)]
    floats: jax.Array    # float32 [B, len(_FLOAT_COLS)]
    temperature: jax.Array  # float64 [B] when sampling, else float32
    key_data: jax.Array  # uint32 [B, 2]: each row's request key


def _one_call(params, x, cache, state, rows: _Rows, *, cfg: ModelConfig, window: int, sample: bool, cached: bool,
              remasking: str | None):
    """One model call and one transfer for every row, then each row's schedule advanced as
    `generate`'s loop advances it; returns (tokens, cache, state). `remasking`: the one
    confidence measure of every row, or None (rows differ: all measures computed, picked per row)."""
    b, length = x.shape
    col = {name: rows.ints[:, i] for i, name in enumerate(_INT_COLS)}
    flag = {name: (col["flags"] >> i) & 1 == 1 for i, name in enumerate(_FLAG_BITS)}
    fcol = {name: rows.floats[:, i] for i, name in enumerate(_FLOAT_COLS)}
    block, step_in_block, call = state[:, 0], state[:, 1], state[:, 2]
    block_length, steps = col["block_length"], jnp.maximum(col["steps_per_block"], 1)
    active = block < col["num_blocks"]  # a free row has no blocks
    start = col["prompt_len"] + block * block_length
    mask_id = jnp.int32(cfg.mask_token_id)
    pos = jnp.arange(length, dtype=jnp.int32)[None, :]
    # An unconditional row reads its request's tokens with the prompt masked (classifier-free guidance).
    tokens = jnp.take(x, col["src"], axis=0)
    tokens = jnp.where(flag["uncond"][:, None] & (pos < col["prompt_len"][:, None]), mask_id, tokens)
    key_mask = pos < col["length"][:, None]
    fresh = None
    if cached:  # a block's first call refills the cache; then the block and after (prefix) or the block (dual)
        refill = (step_in_block == 0) | (col["cache_mode"] == 0)
        fresh_from = jnp.where(refill, 0, start)
        fresh_to = jnp.where(~refill & (col["cache_mode"] == 2), start + block_length, length)
        fresh = (pos >= fresh_from[:, None]) & (pos < fresh_to[:, None])
    logits, cache = forward_rows(params, cfg, tokens, key_mask, head_start=start, head_length=window,
                                 cache=cache, fresh=fresh)
    uncond = jnp.take(logits, col["partner"], axis=0)
    logits = jnp.where(flag["guided"][:, None, None],
                       combine_guidance(logits, uncond, fcol["cfg_scale"][:, None, None]), logits)

    offs = jnp.arange(window, dtype=jnp.int32)[None, :]
    idx = start[:, None] + offs
    block_pos = (offs < block_length[:, None]) & (idx < length)
    in_block = block_pos & (flag["cond"] & active)[:, None]
    at = jnp.minimum(idx, length - 1)
    xw = jnp.take_along_axis(x, at, axis=1)
    keys = jax.random.wrap_key_data(rows.key_data)
    gumbel_keys, rand_keys = jax.vmap(step_keys)(keys, call)
    gumbel_u = None
    if sample:
        gumbel_u = jax.vmap(lambda k: jax.random.uniform(k, (1, window, logits.shape[-1]), jnp.float64)[0])(
            gumbel_keys)
    rand_u = None
    if remasking in (None, "random"):
        rand_u = jax.vmap(lambda k: jax.random.uniform(k, (1, window), jnp.float32)[0])(rand_keys)
    count = scheduled_count(block_length, steps, step_in_block)  # a block's positions all start masked
    opts = RowOptions(remasking=col["remasking"] if remasking is None else remasking,
                      sample=flag["sample"] if sample else False,
                      temperature=rows.temperature, logits_eos_inf=flag["logits_eos_inf"],
                      confidence_eos_eot_inf=flag["confidence_eos_eot_inf"], use_threshold=flag["use_threshold"],
                      threshold=fcol["threshold"], count=jnp.where(flag["use_threshold"], 0, count))
    new_w, _ = transfer(logits, xw, in_block, opts, cfg, gumbel_u, rand_u)
    write_at = jnp.where(in_block, idx, length)  # out of range: dropped
    x = x.at[jnp.arange(b, dtype=jnp.int32)[:, None], write_at].set(new_w, mode="drop")

    # The schedule (an unconditional row follows its request's row, `src`): a block ends after its
    # steps, or in threshold mode when none of its positions is masked.
    src_block = jnp.take_along_axis(jnp.take(x, col["src"], axis=0), at, axis=1)
    unmasked = ~jnp.any((src_block == mask_id) & block_pos, axis=1)
    block_done = jnp.where(flag["use_threshold"], unmasked, step_in_block + 1 >= steps)
    state = jnp.stack([jnp.where(active & block_done, block + 1, block),
                       jnp.where(active, jnp.where(block_done, 0, step_in_block + 1), step_in_block),
                       call + active.astype(jnp.int32)], axis=1)
    return x, cache, state


def _slot_chunk_body(params, x, cache, rows: _Rows, n_calls, *, cfg: ModelConfig, window: int, sample: bool,
                     cached: bool, remasking: str | None):
    """`n_calls` (traced, <= MAX_CHUNK_CALLS) model calls in one program, each as `_one_call`.

    Returns (tokens, cache, state [B, 3], blocks [MAX_CHUNK_CALLS, B]: each row's block after
    call j, written [B, L]: the call of this chunk that wrote each position, -1 if none).
    """
    b, length = x.shape
    state0 = rows.ints[:, : len(_STATE_COLS)]

    def body(j, carry):
        x, cache, state, blocks, written = carry
        new_x, cache, state = _one_call(params, x, cache, state, rows, cfg=cfg, window=window, sample=sample,
                                        cached=cached, remasking=remasking)
        written = jnp.where(new_x != x, j, written)
        return new_x, cache, state, blocks.at[j].set(state[:, 0]), written

    init = (x, cache, state0, jnp.zeros((MAX_CHUNK_CALLS, b), jnp.int32), jnp.full((b, length), -1, jnp.int32))
    return jax.lax.fori_loop(0, n_calls, body, init)


slot_chunk = jax.jit(_slot_chunk_body, static_argnames=("cfg", "window", "sample", "cached", "remasking"),
                     donate_argnums=(2,))


@dataclasses.dataclass
class _Slot:
    """Host-side record of one request (its conditional row `row`, unconditional `partner`) and
    its schedule's state as of the last chunk."""

    request: SamplingRequest
    plan: Plan
    row: int
    partner: int            # the unconditional row, or `row` itself
    key_data: np.ndarray
    block: int = 0
    step_in_block: int = 0
    calls: int = 0

    @property
    def length(self) -> int:
        return self.plan.prompt_len + self.plan.gen_length

    @property
    def min_calls_left(self) -> int:
        """Model calls this request needs at least: exactly its schedule's, or in threshold mode
        one per block left (a call writes at least one token, a block at least one call)."""
        blocks_left = self.plan.num_blocks - self.block
        if self.plan.use_threshold:
            return blocks_left
        return blocks_left * self.plan.steps_per_block - self.step_in_block


class StepResult(NamedTuple):
    """A request's state after a model call: answer tokens [G], its model calls so far, done, tokens written."""

    slot: int
    tokens: np.ndarray
    calls: int
    done: bool
    written: int


class SlotBatch:
    """The rows of the slot batch and their schedules (not thread-safe: the scheduler owns it)."""

    def __init__(self, params: Any, cfg: ModelConfig, *, max_batch: int = 8, length_buckets=None):
        self.params, self.cfg, self.max_batch = params, cfg, max_batch
        self.length_buckets = tuple(sorted(length_buckets or default_length_buckets(cfg.max_seq_len)))
        if self.length_buckets[-1] < cfg.max_seq_len:
            self.length_buckets += (cfg.max_seq_len,)
        self.batch_buckets = tuple(_pow2_upto(max_batch))
        self._slots: dict[int, _Slot] = {}
        self._owner: list[int | None] = [None] * max_batch   # row -> slot id (its conditional row)
        self._x = np.full((max_batch, cfg.max_seq_len), cfg.mask_token_id, np.int32)
        self._cache: KVCache | None = None
        self._shapes: set[tuple] = set()
        self._call_seconds: dict[tuple, float] = {}  # per shape: seconds a model call takes (moving average)
        self._cell_seconds: float | None = None       # the last timed call's seconds per row position

    # -- capacity
    @property
    def planned_compiles(self) -> int:
        windows = sum(len(window_buckets(lb)) for lb in self.length_buckets)
        return len(self.batch_buckets) * windows * 4 * (len(REMASKING) + 1)

    @property
    def compiles(self) -> int:
        return len(self._shapes)

    @property
    def free_rows(self) -> int:
        return self._owner.count(None)

    @property
    def busy_rows(self) -> int:
        return self.max_batch - self.free_rows

    @staticmethod
    def rows_needed(request: SamplingRequest) -> int:
        return 2 if request.cfg_scale > 0 else 1

    def check(self, request: SamplingRequest) -> Plan:
        """Validate a request for this model (RequestError) and return its plan."""
        return request.plan(self.cfg)  # make_plan refuses a sampling plan without a key (seed)

    # -- admission
    def admit(self, request: SamplingRequest) -> int:
        """Put a request into the lowest free rows; returns its slot id."""
        plan = self.check(request)
        free = [i for i, o in enumerate(self._owner) if o is None][: self.rows_needed(request)]
        if len(free) < self.rows_needed(request):
            raise RuntimeError("no free slot")
        row = free[0]
        partner = free[-1]
        key = jax.random.key(0 if request.seed is None else request.seed)
        slot = _Slot(request, plan, row, partner, np.asarray(jax.random.key_data(key), np.uint32))
        for r in free:
            self._owner[r] = row
        self._x[row] = self.cfg.mask_token_id
        self._x[row, : plan.prompt_len] = request.prompt_ids
        self._slots[row] = slot
        return row

    def reset(self) -> None:
        """Drop every request and the cache (after a failed step, whose donated cache is gone)."""
        self._slots.clear()
        self._owner = [None] * self.max_batch
        self._cache = None

    def release(self, slot_id: int) -> None:
        """Free the rows of a slot (finished, cancelled or failed)."""
        self._slots.pop(slot_id, None)
        self._owner = [None if o == slot_id else o for o in self._owner]

    # -- one chunk of model calls
    def _table(self, nb: int):
        ints = np.zeros((nb, len(_INT_COLS)), np.int32)
        floats = np.zeros((nb, len(_FLOAT_COLS)), np.float32)
        temperature = np.zeros(nb, np.float64)
        key_data = np.zeros((nb, 2), np.uint32)
        ci = {n: i for i, n in enumerate(_INT_COLS)}
        ints[:, ci["src"]] = ints[:, ci["partner"]] = np.arange(nb)
        for s in self._slots.values():
            req, plan = s.request, s.plan
            rows = [(s.row, False)] + ([(s.partner, True)] if s.partner != s.row else [])
            for r, is_uncond in rows:
                bits = dict(cond=not is_uncond, uncond=is_uncond, guided=plan.guided and not is_uncond,
                            sample=plan.sample, use_threshold=plan.use_threshold,
                            logits_eos_inf=plan.logits_eos_inf, confidence_eos_eot_inf=plan.confidence_eos_eot_inf)
                flags = sum(1 << i for i, n in enumerate(_FLAG_BITS) if bits[n])
                values = dict(block=s.block, step_in_block=s.step_in_block, call=s.calls,
                              block_length=plan.block_length, steps_per_block=plan.steps_per_block,
                              num_blocks=plan.num_blocks, remasking=REMASKING.index(plan.remasking), src=s.row,
                              partner=s.partner, prompt_len=plan.prompt_len, length=s.length,
                              cache_mode=_CACHE_MODES.index(plan.cache), flags=flags)
                ints[r] = [values[n] for n in _INT_COLS]
                floats[r] = [1.0 if req.threshold is None else req.threshold, req.cfg_scale]
                temperature[r] = req.temperature
                key_data[r] = s.key_data
        return ints, floats, temperature, key_data

    def step(self, budget_s: float = 0.0) -> list[list[StepResult]]:
        """Model calls over the occupied rows, in one jitted chunk: one call, or as many as fit in
        `budget_s` seconds (timed on earlier calls of the same shape, or scaled by rows x length
        from the last timed call) and end no later than the first request can finish, so a
        finished row is free for the next request at once.
        Returns, for each call, every request's state after it."""
        if not self._slots:
            return []
        used = [i for i, o in enumerate(self._owner) if o is not None]
        nb = _bucket(max(used) + 1, self.batch_buckets)
        lb = _bucket(max(s.length for s in self._slots.values()), self.length_buckets)
        window = _bucket(max(s.plan.block_length for s in self._slots.values()), window_buckets(lb))
        sample = any(s.plan.sample for s in self._slots.values())
        cached = any(s.plan.cache is not None for s in self._slots.values())
        kinds = {s.plan.remasking for s in self._slots.values()}
        remasking = kinds.pop() if len(kinds) == 1 else None
        shape = (nb, lb, window, sample, cached, remasking)
        n_calls = min([MAX_CHUNK_CALLS] + [s.min_calls_left for s in self._slots.values()])
        per_call = self._call_seconds.get(shape)
        if per_call is None and self._cell_seconds is not None:  # a shape not timed yet: scaled from the last one
            per_call = self._cell_seconds * nb * lb
        n_calls = max(1, min(n_calls, int(budget_s / per_call) if per_call else 1))
        cache = self._layout_cache(nb, lb) if cached else None
        ints, floats, temperature, key_data = self._table(nb)
        before = self._x[:nb, :lb].copy()
        t0 = time.perf_counter()
        with float64_noise(sample):
            rows = _Rows(ints, floats, temperature if sample else temperature.astype(np.float32), key_data)
            x, cache, state, blocks, written = slot_chunk(self.params, before, cache, rows, np.int32(n_calls),
                                                          cfg=self.cfg, window=window, sample=sample, cached=cached,
                                                          remasking=remasking)
            after, state, blocks, written = (np.asarray(a) for a in (x, state, blocks, written))
        if shape in self._shapes:  # the first call of a shape compiles: not a call's time
            seconds = (time.perf_counter() - t0) / n_calls
            old = self._call_seconds.get(shape)
            self._call_seconds[shape] = seconds if old is None else 0.8 * old + 0.2 * seconds
            self._cell_seconds = seconds / (nb * lb)
        self._shapes.add(shape)
        self._cache = cache
        self._x[:nb, :lb] = after
        results: list[list[StepResult]] = [[] for _ in range(n_calls)]
        for s in list(self._slots.values()):
            plan, row = s.plan, s.row
            answer = slice(plan.prompt_len, s.length)
            call_of, old, new = written[row, answer], before[row, answer], after[row, answer]
            per_call = np.bincount(written[row][written[row] >= 0], minlength=n_calls)  # tokens each call wrote
            calls, block = s.calls, s.block
            for j in range(n_calls):
                if block == plan.num_blocks:
                    break
                calls, block = calls + 1, int(blocks[j, row])
                tokens = np.where((call_of >= 0) & (call_of <= j), new, old)
                results[j].append(StepResult(row, tokens, calls, block == plan.num_blocks, int(per_call[j])))
            s.block, s.step_in_block, s.calls = (int(v) for v in state[row])
        return results

    def _layout_cache(self, nb: int, lb: int) -> KVCache:
        """The cache in shape [layers, nb, lb, ...]: kept rows/positions carried over, the rest zero."""
        cfg = self.cfg
        shape = (cfg.n_layers, nb, lb, cfg.n_kv_heads, cfg.head_dim)
        old = self._cache
        if old is not None and old.k.shape == shape:
            return old

        def relayout(a):
            new = jnp.zeros(shape, jnp.dtype(cfg.dtype))
            if a is None:
                return new
            b, l = min(nb, a.shape[1]), min(lb, a.shape[2])
            return new.at[:, :b, :l].set(a[:, :b, :l])

        return KVCache(relayout(None if old is None else old.k), relayout(None if old is None else old.v))
