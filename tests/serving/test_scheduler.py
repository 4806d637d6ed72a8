"""The scheduler and its slot batch against `generate` alone, and the lifecycle (admission, cancel,
a full queue, a draining stop).

Why tokens and not logits are compared: XLA's CPU kernels round a reduction or a small matmul
differently for a different batch size or row length (measured on this model: a row's logits
alone, [1, L], and in a padded batch, [4, 32], differ by ~2e-7), so an answer equals
`generate`'s when no decision is a near-tie. As in tests/inference/test_sampling.py the weights
are scaled up (x4) so that confidences are well separated.
"""

from __future__ import annotations

import threading
import time

import jax
import numpy as np
import pytest

from llada_jax.inference.sampling import generate
from llada_jax.serving.requests import RequestError, SamplingRequest
from llada_jax.serving.scheduler import CANCELLED, SHUTDOWN, QueueFull, Scheduler, ShuttingDown
from llada_jax.serving.slots import SlotBatch, default_length_buckets

SCALE = 4.0
BUCKETS = (32,)  # one row length: few compiles

MIXED = [  # every option at least once, in few distinct plans (each is one `generate` compile)
    dict(max_tokens=24, steps=12, block_length=8),
    dict(max_tokens=16, steps=8, block_length=8, cfg_scale=1.5, cache="dual", remasking="margin"),
    dict(max_tokens=16, steps=8, block_length=4, temperature=0.8, remasking="random", seed=3),
    dict(max_tokens=16, steps=16, block_length=8, threshold=0.3, cache="prefix"),
    dict(max_tokens=8, steps=8, block_length=8, logits_eos_inf=True, confidence_eos_eot_inf=True,
         remasking="entropy"),
]


@pytest.fixture(scope="module")
def params(tiny_params):
    return jax.tree.map(lambda a: a * SCALE, tiny_params)


def _prompt(rng, n):
    p = rng.integers(7, 512, n)
    p[0] = 1
    return p


def _request(cfg, prompt, **kw):
    return SamplingRequest.create(cfg, prompt, **kw)


def test_mixed_requests_equal_generate_alone(tiny_cfg, params):
    """Different prompt lengths, lengths, schedules, caches, thresholds, temperature, random
    remasking and guidance in one slot batch of 4: each answer is `generate` on its prompt alone."""
    rng = np.random.default_rng(1)
    requests = [_request(tiny_cfg, _prompt(rng, int(rng.integers(3, 9))), **kw) for kw in MIXED]
    with Scheduler(params, tiny_cfg, max_batch=4, buckets=BUCKETS) as sched:
        tickets = [sched.submit(r) for r in requests]
        finals = [t.result(timeout=120) for t in tickets]
        stats = sched.stats()
        frames = [list(t.frames(timeout=1)) for t in tickets]
    assert 0 < sched.compiles <= sched.planned_compiles
    assert stats["finished"] == len(requests) and stats["errors"] == 0
    assert stats["output_tokens"] == sum(r.max_tokens for r in requests)
    for r, final, fr in zip(requests, finals, frames):
        assert final.done and final.error is None
        want = np.asarray(generate(params, tiny_cfg, r.prompt_array(), **r.generate_kwargs()))[0, len(r.prompt_ids):]
        np.testing.assert_array_equal(final.tokens, want, err_msg=str(r))
        # One frame per model call; masks only ever disappear; the last frame is the answer.
        assert [f.step for f in fr] == list(range(1, len(fr) + 1))
        masks = [int((f.tokens == tiny_cfg.mask_token_id).sum()) for f in fr]
        assert masks == sorted(masks, reverse=True) and masks[-1] == 0
        if r.threshold is None:
            assert len(fr) == r.steps


def test_short_request_is_not_held_by_a_long_one(tiny_cfg, params):
    rng = np.random.default_rng(2)
    long = _request(tiny_cfg, _prompt(rng, 6), max_tokens=24, steps=24, block_length=8)
    short = _request(tiny_cfg, _prompt(rng, 4), max_tokens=8, steps=2, block_length=8)
    with Scheduler(params, tiny_cfg, max_batch=4, buckets=BUCKETS, chunk_s=0.0) as sched:  # admit every call
        t_long = sched.submit(long)
        t_long.get(0, timeout=60)  # the long one is running
        t_short = sched.submit(short)
        t_short.result(timeout=60)
        assert not t_long.done  # the short one was admitted between steps and finished first
        assert t_long.result(timeout=60).error is None
    want = np.asarray(generate(params, tiny_cfg, short.prompt_array(), **short.generate_kwargs()))[0, 4:]
    np.testing.assert_array_equal(t_short.result().tokens, want)


def test_cancel_frees_the_slot_and_full_queue(tiny_cfg, params):
    rng = np.random.default_rng(3)
    long = dict(max_tokens=24, steps=24, block_length=8)
    with Scheduler(params, tiny_cfg, max_batch=2, max_queue=1, buckets=BUCKETS, chunk_s=0.0) as sched:
        running = []
        for _ in range(2):  # one at a time: the queue holds one
            running.append(sched.submit(_request(tiny_cfg, _prompt(rng, 5), **long)))
            running[-1].get(0, timeout=60)
        waiting = sched.submit(_request(tiny_cfg, _prompt(rng, 5), max_tokens=8, steps=4, block_length=8))
        with pytest.raises(QueueFull) as full:
            sched.submit(_request(tiny_cfg, _prompt(rng, 5), **long))
        assert full.value.retry_after > 0
        assert sched.stats()["queue_depth"] == 1 and sched.stats()["busy_slots"] == 2
        running[0].cancel()
        final = running[0].result(timeout=30)
        assert final.error == CANCELLED and final.done
        assert waiting.result(timeout=60).error is None  # it took the freed slot
        assert not running[1].done  # ... before the other long request ended
        assert running[1].result(timeout=60).error is None
        assert sched.stats()["cancelled"] == 1


def test_a_chunk_runs_many_calls_and_ends_where_a_request_finishes(tiny_cfg, params):
    """With a time budget a chunk is many model calls in one jitted call, each reported as its own
    frame, and it ends at the call after which the first request is done (its slot is free then)."""
    rng = np.random.default_rng(6)
    long = _request(tiny_cfg, _prompt(rng, 5), max_tokens=24, steps=24, block_length=8)
    short = _request(tiny_cfg, _prompt(rng, 3), max_tokens=16, steps=6, block_length=8, threshold=0.5)
    slots = SlotBatch(params, tiny_cfg, max_batch=2, length_buckets=BUCKETS)
    ids = [slots.admit(r) for r in (long, short)]
    calls = slots.step(budget_s=60.0) + slots.step(budget_s=60.0)
    assert len(calls) == 2  # a shape's first call compiles, its second is timed: single calls
    while not any(r.done for r in calls[-1]):
        # threshold mode: at least one call per block left, so the chunk can never overshoot its end
        before = slots._slots[ids[1]].min_calls_left
        more = slots.step(budget_s=60.0)
        assert 1 <= len(more) <= before
        calls += more
    short_frames = [r for call in calls for r in call if r.slot == ids[1]]
    assert short_frames[-1].done and not any(r.done for r in short_frames[:-1])
    assert [r.calls for r in short_frames] == list(range(1, len(short_frames) + 1))
    masks = [int((r.tokens == tiny_cfg.mask_token_id).sum()) for r in short_frames]
    assert masks == sorted(masks, reverse=True) and masks[-1] == 0
    assert sum(r.written for r in short_frames) == short.max_tokens
    slots.release(ids[1])
    long_frames = [r for call in calls for r in call if r.slot == ids[0]]
    chunks = []  # alone now (a new batch shape, its call time scaled from the last one): one chunk
    while not (chunks and chunks[-1][-1][0].done):
        chunks.append(slots.step(budget_s=60.0))
    assert [len(c) for c in chunks] == [long.steps - len(long_frames)]
    long_frames += [r for chunk in chunks for call in chunk for r in call]
    assert [r.calls for r in long_frames] == list(range(1, long.steps + 1))
    for r, final in ((long, long_frames[-1]), (short, short_frames[-1])):
        want = np.asarray(generate(params, tiny_cfg, r.prompt_array(), **r.generate_kwargs()))[0, len(r.prompt_ids):]
        np.testing.assert_array_equal(final.tokens, want, err_msg=str(r))


def test_a_frame_per_chunk_when_not_every_call(tiny_cfg, params):
    rng = np.random.default_rng(7)
    request = _request(tiny_cfg, _prompt(rng, 4), max_tokens=16, steps=16, block_length=8)
    with Scheduler(params, tiny_cfg, max_batch=2, buckets=BUCKETS, chunk_s=60.0) as sched:
        sched.submit(request).result(timeout=60)  # compiles the shape and times its calls
        ticket = sched.submit(request, every_call=False)
        frames = list(ticket.frames(timeout=60))
        calls = sched.stats()["model_calls"]
    assert frames[-1].done and frames[-1].step == request.steps == calls / 2
    assert len(frames) < request.steps  # the calls after the first two ran as one chunk: one frame
    want = np.asarray(generate(params, tiny_cfg, request.prompt_array(), **request.generate_kwargs()))[0, 4:]
    np.testing.assert_array_equal(frames[-1].tokens, want)


def test_stop_drains_then_refuses(tiny_cfg, params):
    rng = np.random.default_rng(4)
    sched = Scheduler(params, tiny_cfg, max_batch=2, buckets=BUCKETS).start()
    tickets = [sched.submit(_request(tiny_cfg, _prompt(rng, 4), max_tokens=8, steps=4, block_length=8))
               for _ in range(3)]
    stopper = threading.Thread(target=sched.stop, args=(60.0,))
    stopper.start()
    time.sleep(0.05)
    with pytest.raises(ShuttingDown):
        sched.submit(_request(tiny_cfg, _prompt(rng, 4), max_tokens=8, steps=4, block_length=8))
    stopper.join(90)
    assert all(t.result(timeout=1).error is None for t in tickets)  # in flight and queued: answered

    # A grace period too short: what is left ends with an error, nothing hangs.
    sched = Scheduler(params, tiny_cfg, max_batch=2, buckets=BUCKETS).start()
    tickets = [sched.submit(_request(tiny_cfg, _prompt(rng, 4), max_tokens=24, steps=24, block_length=8))
               for _ in range(3)]
    tickets[0].get(0, timeout=60)
    sched.stop(0.0)
    finals = [t.result(timeout=1) for t in tickets]
    assert all(f.done for f in finals) and any(f.error == SHUTDOWN for f in finals)


def test_async_frames(tiny_cfg, params):
    import asyncio

    rng = np.random.default_rng(5)
    request = _request(tiny_cfg, _prompt(rng, 4), max_tokens=8, steps=4, block_length=8)
    with Scheduler(params, tiny_cfg, max_batch=2, buckets=BUCKETS) as sched:
        ticket = sched.submit(request)

        async def collect():
            return [f async for f in ticket.aframes()]

        frames = asyncio.run(asyncio.wait_for(collect(), 60))
    assert [f.step for f in frames] == [1, 2, 3, 4] and frames[-1].done
    np.testing.assert_array_equal(frames[-1].tokens, ticket.result().tokens)


BAD = [
    (dict(max_tokens=16, steps=16, block_length=5), "block_length"),
    (dict(max_tokens=16, steps=6, block_length=4), "steps"),
    (dict(max_tokens=300, steps=300, block_length=300), "max_tokens"),
    (dict(max_tokens=16, steps=16, block_length=8, remasking="best"), "remasking"),
    (dict(max_tokens=16, steps=16, block_length=8, threshold=2.0), "threshold"),
    (dict(max_tokens=16, steps=16, block_length=8, cache="triple"), "cache"),
    (dict(max_tokens=16, steps=0, block_length=8), "steps"),
    (dict(max_tokens=16, steps="8", block_length=8), "steps"),
    (dict(max_tokens=16, steps=16, block_length=8, temperature=-1.0), "temperature"),
    (dict(max_tokens=16, steps=16, block_length=8, seed="x"), "seed"),
]


@pytest.mark.parametrize("kw, field", BAD, ids=[f for _, f in BAD])
def test_bad_requests_name_the_field(kw, field, tiny_cfg):
    with pytest.raises(RequestError) as e:
        _request(tiny_cfg, [1, 9, 10], **kw)
    assert e.value.field == field and isinstance(e.value, ValueError)


def test_seed_is_drawn_and_recorded(tiny_cfg):
    r = _request(tiny_cfg, [1, 9], max_tokens=8, steps=8, block_length=8, temperature=0.5)
    assert isinstance(r.seed, int) and r.generate_kwargs()["key"] is not None
    assert _request(tiny_cfg, [1, 9], max_tokens=8, steps=8, block_length=8).seed is None


def test_length_buckets_bound_the_padding():
    b = default_length_buckets(4096)
    assert b[-1] == 4096 and b[0] == 8 and len(b) < 64
    assert all(hi <= max(lo + 8, lo * 1.125) for lo, hi in zip(b, b[1:]))
    assert set(range(8, 129, 8)) <= set(b)  # short rows: padded to the next multiple of 8
