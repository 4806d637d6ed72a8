"""The sampler against an independent step-by-step reference of the release's `generate`.

`reference_generate` below is a plain NumPy/Python loop written from docs/semantics.md (Sampling) and the
release's code, calling the model only through the public full-sequence `forward`: it builds
the per-row transfer schedule, the classifier-free-guidance copy, the EOS/EoT options (with
the release's aliasing of `logits_with_noise` and `logits` at temperature 0), the confidence
and the top-k selection itself. The model's weights are scaled up so that confidences are
well separated, and the reference asserts that no near-tie decided a selection.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llada_jax.model.transformer import forward, init_params
from llada_jax.inference import sampling
from llada_jax.inference.sampling import generate, generate_with_stats, step_keys, transfer_counts

SCALE = 4.0  # weights x4: max probabilities spread over ~0.1..0.95 (checked: no ties)
P, G = 6, 16


@pytest.fixture(scope="module")
def params(tiny_params):
    return jax.tree.map(lambda a: a * SCALE, tiny_params)


@pytest.fixture(scope="module")
def eos_params(params, tiny_cfg):
    """Head columns of EOS and EoT boosted so that both are often the argmax."""
    head = params["ff_out"]
    head = head.at[:, tiny_cfg.eos_token_id].multiply(3.0).at[:, tiny_cfg.eot_token_id].multiply(3.0)
    return {**params, "ff_out": head}


@pytest.fixture(scope="module")
def prompts():
    """Row 0: six real tokens; row 1: left-padded, four real tokens after two pads."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(7, 512, (2, P)).astype(np.int32)
    tokens[:, 0] = 1  # BOS
    mask = np.ones((2, P), bool)
    tokens[1, :2] = 2  # pad id (EOS)
    tokens[1, 2] = 1
    mask[1, :2] = False
    return tokens, mask


def _softmax(z):
    z = z - np.max(z, axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def reference_generate(params, cfg, prompt, attention_mask=None, *, steps, gen_length, block_length,
                       temperature=0.0, cfg_scale=0.0, remasking="low_confidence", logits_eos_inf=False,
                       confidence_eos_eot_inf=False, key=None, tie_tol=1e-4):
    """The release's `generate`, literally, in NumPy. Returns (tokens, number of selections checked)."""
    mask_id, eos, eot = cfg.mask_token_id, cfg.eos_token_id, cfg.eot_token_id
    b, p = prompt.shape
    x = np.full((b, p + gen_length), mask_id, np.int64)
    x[:, :p] = prompt
    am = None
    if attention_mask is not None:
        am = np.concatenate([attention_mask, np.ones((b, gen_length), bool)], axis=1)
    prompt_index = x != mask_id
    num_blocks = gen_length // block_length
    s = steps // num_blocks
    call = 0
    checked = 0
    for nb in range(num_blocks):
        lo, hi = p + nb * block_length, p + (nb + 1) * block_length
        n = (x[:, lo:hi] == mask_id).sum(axis=1)
        num_transfer = np.zeros((b, s), np.int64) + (n // s)[:, None]
        for j in range(b):
            num_transfer[j, : n[j] % s] += 1
        for i in range(s):
            mask_index = x == mask_id
            if cfg_scale > 0:
                un_x = x.copy()
                un_x[prompt_index] = mask_id
                both = np.concatenate([x, un_x], axis=0)
                am2 = None if am is None else np.concatenate([am, am], axis=0)
                out = np.asarray(forward(params, cfg, both, am2), np.float64)
                cond, un = out[:b], out[b:]
                logits = un + (cfg_scale + 1) * (cond - un)
            else:
                logits = np.asarray(forward(params, cfg, x, am), np.float64)
            if logits_eos_inf:
                logits[:, :, eos] = -np.inf
            if temperature == 0:
                logits_with_noise = logits  # the same array, as in the release
            else:
                gkey, _ = step_keys(key, call)
                with jax.enable_x64(True):
                    u = np.asarray(jax.random.uniform(gkey, (b, block_length, logits.shape[-1]), jnp.float64))
                logits_with_noise = np.exp(logits)
                logits_with_noise[:, lo:hi] = logits_with_noise[:, lo:hi] / (-np.log(u)) ** temperature
            x0 = np.argmax(logits_with_noise, axis=-1)
            top2 = np.sort(logits_with_noise[:, lo:hi], axis=-1)[..., -2:]
            if confidence_eos_eot_inf:
                logits_with_noise[:, :, eos] = -np.inf
                logits[:, :, eot] = -np.inf
            if remasking == "low_confidence":
                probs = _softmax(logits)
                x0_p = np.take_along_axis(probs, x0[..., None], axis=-1)[..., 0]
            elif remasking == "random":
                _, rkey = step_keys(key, call)
                x0_p = np.zeros(x.shape)
                x0_p[:, lo:hi] = np.asarray(jax.random.uniform(rkey, (b, block_length), jnp.float32))
            elif remasking == "margin":
                srt = np.sort(_softmax(logits), axis=-1)
                x0_p = srt[..., -1] - srt[..., -2]
            elif remasking == "entropy":
                probs = _softmax(logits)
                x0_p = np.sum(probs * np.log(probs + 1e-10), axis=-1)
            else:
                raise NotImplementedError(remasking)
            x0_p[:, hi:] = -np.inf
            x0 = np.where(mask_index, x0, x)
            confidence = np.where(mask_index, x0_p, -np.inf)
            for j in range(b):
                k = num_transfer[j, i]
                order = np.argsort(-confidence[j], kind="stable")
                chosen = order[:k]
                # No near-tie may decide the result: neither the k-th/(k+1)-th confidence (exact
                # zero-confidence ties of -inf'ed EOS/EoT excepted) nor a chosen argmax.
                c = confidence[j][order]
                if k < np.isfinite(c).sum() and not (c[k - 1] == 0 and c[k] == 0):
                    assert c[k - 1] - c[k] > tie_tol, f"near-tie in confidence at step {call}"
                if temperature == 0 and remasking != "random":
                    gaps = top2[j, chosen - lo, 1] - top2[j, chosen - lo, 0]
                    assert np.all(gaps > tie_tol), f"near-tie in argmax at step {call}"
                # The sampler never proposes the mask id (see sampling._propose); the release would.
                assert not np.any(x0[j, chosen] == mask_id), "the release would write a mask id here"
                checked += len(chosen)
                x[j, chosen] = x0[j, chosen]
            call += 1
    return x, checked


CASES = {
    "single_block": dict(steps=8, gen_length=G, block_length=G),
    "semi_ar_remainders": dict(steps=12, gen_length=G, block_length=4),
    "cfg": dict(steps=8, gen_length=G, block_length=8, cfg_scale=1.5),
    "eos_options": dict(steps=16, gen_length=G, block_length=8, logits_eos_inf=True, confidence_eos_eot_inf=True),
    "confidence_eos_eot_inf": dict(steps=16, gen_length=G, block_length=8, confidence_eos_eot_inf=True),
    "random": dict(steps=8, gen_length=G, block_length=8, remasking="random"),
    "margin": dict(steps=8, gen_length=G, block_length=8, remasking="margin"),
    "entropy": dict(steps=8, gen_length=G, block_length=8, remasking="entropy"),
    "temperature": dict(steps=8, gen_length=G, block_length=8, temperature=0.8),
}


# Every case unpadded; left padding with the cases that exercise the schedule, guidance and EOS.
PADDED_CASES = ("single_block", "semi_ar_remainders", "cfg", "eos_options", "random")
REFERENCE_RUNS = [pytest.param(c, False, id=f"{c}-unpadded") for c in CASES] + \
    [pytest.param(c, True, id=f"{c}-left_padded") for c in PADDED_CASES]


@pytest.mark.parametrize("case, padded", REFERENCE_RUNS)
def test_matches_reference(case, padded, tiny_cfg, params, eos_params, prompts):
    kw = dict(CASES[case])
    weights = eos_params if "eos" in case else params
    prompt, mask = prompts
    if not padded:
        prompt, mask = prompt[:1], None
    if kw.get("temperature", 0) > 0 or kw.get("remasking") == "random":
        kw["key"] = jax.random.key(7)
    want, checked = reference_generate(weights, tiny_cfg, prompt, mask, **kw)
    assert checked == prompt.shape[0] * G
    got = generate(weights, tiny_cfg, prompt, mask, **kw)
    assert got.dtype == jnp.int32 and got.shape == (prompt.shape[0], P + G)
    np.testing.assert_array_equal(np.asarray(got), want)
    np.testing.assert_array_equal(np.asarray(got)[:, :P], prompt)  # prompt (and pads) untouched
    if "eos" in case:  # the options matter for this model: EOS/EoT are predicted
        assert np.isin(want[:, P:], [tiny_cfg.eot_token_id, tiny_cfg.eos_token_id]).any() or \
            kw.get("logits_eos_inf")


def test_eos_options_change_the_output(tiny_cfg, eos_params, prompts):
    """The EOS/EoT options are exercised: each changes the result on the EOS-heavy model."""
    prompt = prompts[0][:1]
    base = dict(steps=16, gen_length=G, block_length=8)
    plain = np.asarray(generate(eos_params, tiny_cfg, prompt, **base))
    no_eos = np.asarray(generate(eos_params, tiny_cfg, prompt, logits_eos_inf=True, **base))
    assert (plain[:, P:] == tiny_cfg.eos_token_id).any() and not (no_eos[:, P:] == tiny_cfg.eos_token_id).any()


def test_transfer_counts_formula():
    masked = np.zeros((3, 8), bool)
    masked[0, :8] = True
    masked[1, :5] = True
    counts = np.asarray(transfer_counts(masked, 3))
    expected = [[n // 3 + (1 if i < n % 3 else 0) for i in range(3)] for n in (8, 5, 0)]
    np.testing.assert_array_equal(counts, expected)
    np.testing.assert_array_equal(counts.sum(1), [8, 5, 0])


def _writes_per_step(result, prompt_len):
    """[calls, B]: positions written at each step, and [calls, B, L] of where."""
    ws = np.asarray(result.write_step)
    calls = int(result.model_calls)
    where = ws[None] == np.arange(calls)[:, None, None]
    return where.sum(-1), where


def test_schedule_and_trajectory(tiny_cfg, params, prompts):
    prompt, mask = prompts
    steps, k_len = 12, 4
    r = generate_with_stats(params, tiny_cfg, prompt, mask, steps=steps, gen_length=G, block_length=k_len,
                            return_trajectory=True)
    s = steps // (G // k_len)
    counts, where = _writes_per_step(r, P)
    assert int(r.model_calls) == steps
    expected = [k_len // s + (1 if (i % s) < k_len % s else 0) for i in range(steps)]
    np.testing.assert_array_equal(counts, np.array(expected)[:, None].repeat(2, 1))
    for t in range(steps):  # every write lies in the block of its step
        cols = np.nonzero(where[t].any(0))[0]
        blk = t // s
        assert cols.min() >= P + blk * k_len and cols.max() < P + (blk + 1) * k_len
    traj = r.trajectory
    assert traj.shape == (steps, 2, P + G)
    np.testing.assert_array_equal(traj[-1], np.asarray(r.tokens))
    for blk in range(G // k_len):  # a block is complete after its last step
        last = traj[(blk + 1) * s - 1]
        assert not (last[:, P + blk * k_len: P + (blk + 1) * k_len] == tiny_cfg.mask_token_id).any()
        assert (last[:, P + (blk + 1) * k_len:] == tiny_cfg.mask_token_id).all()
    masks_left = (traj == tiny_cfg.mask_token_id).sum(-1)
    assert np.all(np.diff(masks_left, axis=0) <= 0)  # nothing re-masked


def test_threshold_decoding(tiny_cfg, params, prompts):
    prompt, mask = prompts
    kw = dict(steps=G, gen_length=G, block_length=8)
    r = generate_with_stats(params, tiny_cfg, prompt, mask, threshold=0.3, **kw)
    tokens = np.asarray(r.tokens)
    assert not (tokens[:, P:] == tiny_cfg.mask_token_id).any()
    counts, where = _writes_per_step(r, P)
    calls = int(r.model_calls)
    assert calls < G  # some steps wrote several tokens
    np.testing.assert_array_equal(counts.sum(0), [G, G])
    ws = np.asarray(r.write_step)[:, P:]
    for blk in range(2):  # >= 1 token a step per row while its block still has masks
        cols = slice(blk * 8, (blk + 1) * 8)
        for row in range(2):
            steps_used = np.unique(ws[row, cols])
            assert np.array_equal(steps_used, np.arange(steps_used.min(), steps_used.max() + 1))
    # The same compiled sampler at threshold 1.0: one token a step, as the schedule with steps = G.
    compiled = sampling._sampler._cache_size()
    r1 = generate_with_stats(params, tiny_cfg, prompt, mask, threshold=1.0, **kw)
    assert sampling._sampler._cache_size() == compiled  # threshold is traced: no recompilation
    assert int(r1.model_calls) == G
    counts1, _ = _writes_per_step(r1, P)
    assert np.all(counts1 == 1)
    np.testing.assert_array_equal(np.asarray(r1.tokens), np.asarray(generate(params, tiny_cfg, prompt, mask, **kw)))


@pytest.fixture(scope="module")
def one_layer(tiny_cfg):
    cfg = tiny_cfg.replace(n_layers=1)
    return cfg, jax.tree.map(lambda a: a * SCALE, init_params(cfg, jax.random.key(1)))


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_cache_exact_for_one_layer(cache, one_layer, prompts):
    """With one layer a position's keys/values depend on its own token only, and the stale cache
    entries (prompt, other blocks) are tokens that do not change within a block: exact."""
    cfg, p1 = one_layer
    prompt, mask = prompts
    kw = dict(steps=8, gen_length=G, block_length=8, cfg_scale=0.5)
    want = generate_with_stats(p1, cfg, prompt, mask, **kw)
    got = generate_with_stats(p1, cfg, prompt, mask, cache=cache, **kw)
    np.testing.assert_array_equal(np.asarray(got.tokens), np.asarray(want.tokens))
    assert int(got.model_calls) == int(want.model_calls) == 8
    thr = generate_with_stats(p1, cfg, prompt, mask, cache=cache, threshold=0.5, **kw)
    thr_exact = generate_with_stats(p1, cfg, prompt, mask, threshold=0.5, **kw)
    np.testing.assert_array_equal(np.asarray(thr.tokens), np.asarray(thr_exact.tokens))


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_cache_writes_only_the_current_block(cache, tiny_cfg, params, prompts):
    prompt, mask = prompts
    kw = dict(steps=G, gen_length=G, block_length=8)
    exact = np.asarray(generate(params, tiny_cfg, prompt, mask, **kw))
    r = generate_with_stats(params, tiny_cfg, prompt, mask, cache=cache, **kw)
    tokens = np.asarray(r.tokens)
    assert not (tokens == tiny_cfg.mask_token_id).any()
    np.testing.assert_array_equal(tokens[:, :P], prompt)
    counts, where = _writes_per_step(r, P)
    for t in range(G):
        cols = np.nonzero(where[t].any(0))[0]
        assert cols.min() >= P + (t // 8) * 8 and cols.max() < P + (t // 8 + 1) * 8
    # The first step of the first block sees exactly the uncached forward.
    first = np.asarray(r.write_step) == 0
    np.testing.assert_array_equal(tokens[first], exact[first])


def test_same_output_on_8_devices(tiny_cfg, params):
    from llada_jax.config import MeshConfig
    from llada_jax.model.sharding import batch_sharding, make_mesh, param_shardings

    rng = np.random.default_rng(3)
    prompt = rng.integers(7, 512, (4, P)).astype(np.int32)
    mask = np.ones((4, P), bool)
    mask[1, :3] = False
    mask[3, :1] = False
    kw = dict(steps=8, gen_length=G, block_length=8, temperature=0.7, cfg_scale=0.5, cache="dual",
              key=jax.random.key(5))
    single = generate_with_stats(params, tiny_cfg, prompt, mask, **kw)
    mesh = make_mesh(MeshConfig(data=4, fsdp=1, tensor=2))
    assert mesh.devices.size == 8
    sharded_params = jax.device_put(params, param_shardings(tiny_cfg, mesh))
    assert any(len(set(a.sharding.device_set)) == 8 and not a.sharding.is_fully_replicated
               for a in jax.tree.leaves(sharded_params))
    with jax.set_mesh(mesh):
        sp = jax.device_put(prompt, batch_sharding(mesh))
        sm = jax.device_put(mask, batch_sharding(mesh))
        multi = generate_with_stats(sharded_params, tiny_cfg, sp, sm, **kw)
    assert len(multi.tokens.sharding.device_set) == 8
    np.testing.assert_array_equal(np.asarray(multi.tokens), np.asarray(single.tokens))
    np.testing.assert_array_equal(np.asarray(multi.write_step), np.asarray(single.write_step))


BAD = [
    (dict(gen_length=16, block_length=5, steps=16), "not divisible by block_length"),
    (dict(gen_length=16, block_length=4, steps=6), "not divisible by the number of blocks"),
    (dict(gen_length=256, block_length=256, steps=256), "exceeds the model's max_seq_len"),
    (dict(gen_length=16, block_length=8, steps=8, remasking="low_confidense"), "did you mean 'low_confidence'"),
    (dict(gen_length=16, block_length=8, steps=8, threshold=0.0), "outside (0, 1]"),
    (dict(gen_length=16, block_length=8, steps=8, threshold=1.5), "outside (0, 1]"),
    (dict(gen_length=16, block_length=8, steps=8, cache="triple"), "cache"),
    (dict(gen_length=16, block_length=8, steps=8, temperature=1.0), "need a PRNG key"),
    (dict(gen_length=16, block_length=8, steps=8, threshold=0.9, remasking="entropy"), "threshold"),
    (dict(gen_length=16, block_length=8, steps=8, temperature=-1.0), "temperature"),
]


@pytest.mark.parametrize("kw,message", BAD, ids=[m for _, m in BAD])
def test_bad_input_fails_before_compiling(kw, message, tiny_cfg, params, prompts, monkeypatch):
    def must_not_run(*a, **k):
        raise AssertionError("the sampler was traced before the arguments were validated")

    monkeypatch.setattr(sampling, "_sampler", must_not_run)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        generate(params, tiny_cfg, prompts[0], **kw)


def test_bad_prompt_fails_before_compiling(tiny_cfg, params, prompts, monkeypatch):
    monkeypatch.setattr(sampling, "_sampler", lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    kw = dict(steps=8, gen_length=16, block_length=8)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        generate(params, tiny_cfg, np.full((1, 4), 9999), **kw)
    with pytest.raises(ValueError, match="attention_mask"):
        generate(params, tiny_cfg, prompts[0], np.ones((2, 3), bool), **kw)
    with pytest.raises(ValueError, match="prompt must be"):
        generate(params, tiny_cfg, np.ones((4,), np.int32), **kw)


def test_mask_id_is_never_written(tiny_cfg, params, prompts):
    """A model whose argmax is often the mask id still fills every position (and terminates)."""
    prompt, mask = prompts
    head = params["ff_out"].at[:, tiny_cfg.mask_token_id].multiply(3.0)
    weights = {**params, "ff_out": head}
    kw = dict(steps=G, gen_length=G, block_length=8)
    from llada_jax.model.transformer import forward as fwd
    x = np.concatenate([prompt, np.full((2, G), tiny_cfg.mask_token_id, np.int32)], axis=1)
    assert (np.asarray(fwd(weights, tiny_cfg, x, np.concatenate([mask, np.ones((2, G), bool)], 1))).argmax(-1)[:, P:]
            == tiny_cfg.mask_token_id).any()
    for extra in (dict(), dict(threshold=0.3)):
        r = generate_with_stats(weights, tiny_cfg, prompt, mask, **kw, **extra)
        assert not (np.asarray(r.tokens)[:, P:] == tiny_cfg.mask_token_id).any()
        assert int(r.model_calls) <= G
