"""log_likelihood against a literal reference loop, exact enumeration, and the batched form."""

import itertools
import math
from fractions import Fraction

import jax
import numpy as np
import pytest

import llada_jax as lj
from llada_jax.inference import likelihood as llm
from llada_jax.inference.likelihood import (log_likelihood, log_likelihood_batch, mask_counts, minibatch_keys,
                                  minibatch_mask)


def release_counts(k, la, b):
    """m_j of the release with Python's exact round-half-to-even on the rational k + j*La/b."""
    return [((round(Fraction(k) + Fraction(j * la, b)) - 1) % la) + 1 for j in range(b)]


def test_mask_counts_match_release_rounding():
    for la in range(1, 8):
        for b in (1, 2, 3, 4, 6, 16):
            for k in range(1, la + 1):
                assert list(np.asarray(mask_counts(k, la, b))) == release_counts(k, la, b), (la, b, k)
    # A worked half-way case: La=3, b=2, k=2 -> round(3.5) = 4 -> m = 1.
    assert list(np.asarray(mask_counts(2, 3, 2))) == [2, 1]


def test_minibatch_mask_counts_and_padding_independence():
    key = jax.random.key(3)
    mask, m = minibatch_mask(key, 5, 8, 5)
    mask_long, m_long = minibatch_mask(key, 5, 8, 40)
    mask, mask_long = np.asarray(mask), np.asarray(mask_long)
    np.testing.assert_array_equal(mask.sum(-1), np.asarray(m))
    np.testing.assert_array_equal(mask_long[:, :5], mask)
    assert not mask_long[:, 5:].any()
    # The subsets vary across rows and keys (not a fixed prefix).
    masks = [np.asarray(minibatch_mask(k, 5, 8, 5)[0]) for k in jax.random.split(key, 20)]
    assert len({m.tobytes() for m in masks}) == 20


def _log_softmax(x):
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def reference_log_likelihood(params, cfg, prompt, answer, mc_num, batch_size, cfg_scale, key):
    """The release's loop written out: same masks (from the exposed helpers), NumPy loss."""
    prompt, answer = np.asarray(prompt), np.asarray(answer)
    seq = np.concatenate([prompt, answer])[None].repeat(batch_size, 0)
    p, la = len(prompt), len(answer)
    losses = []
    for bkey in minibatch_keys(key, mc_num // batch_size):
        ans_mask, m = minibatch_mask(bkey, la, batch_size, la)
        is_mask = np.concatenate([np.zeros((batch_size, p), bool), np.asarray(ans_mask)], axis=1)
        noisy = np.where(is_mask, cfg.mask_token_id, seq)
        logits = np.asarray(lj.forward(params, cfg, noisy), np.float64)
        if cfg_scale > 0:
            un = noisy.copy()
            un[:, :p] = cfg.mask_token_id
            un_logits = np.asarray(lj.forward(params, cfg, un), np.float64)
            logits = un_logits + (cfg_scale + 1) * (logits - un_logits)
        ce = -np.take_along_axis(_log_softmax(logits), seq[..., None], -1)[..., 0]
        p_mask = (np.asarray(m) / la)[:, None].repeat(seq.shape[1], 1)
        losses.append((ce[is_mask] / p_mask[is_mask]).sum() / batch_size)
    return -sum(losses) / len(losses)


@pytest.mark.parametrize("cfg_scale", [0.0, 1.5])
def test_equals_reference_loop(tiny_cfg, tiny_params, cfg_scale):
    prompt = np.array([1, 17, 40, 99, 7])
    answer = np.array([55, 66, 77, 88, 200, 300, 2])
    key = jax.random.key(11)
    got = log_likelihood(tiny_params, tiny_cfg, prompt, answer, mc_num=32, batch_size=8, cfg_scale=cfg_scale, key=key)
    want = reference_log_likelihood(tiny_params, tiny_cfg, prompt, answer, 32, 8, cfg_scale, key)
    assert got == pytest.approx(want, rel=1e-5)
    # Same key, same value; another key, another value.
    again = log_likelihood(tiny_params, tiny_cfg, prompt, answer, mc_num=32, batch_size=8, cfg_scale=cfg_scale, key=key)
    assert again == got
    other = log_likelihood(tiny_params, tiny_cfg, prompt, answer, mc_num=32, batch_size=8, cfg_scale=cfg_scale,
                           key=jax.random.key(12))
    assert other != got


def test_unbiased_against_enumeration(tiny_cfg, tiny_params):
    """Mean over many keys == exact expectation over k, rows and every mask subset of 3 tokens."""
    prompt, answer = np.array([1, 23, 45]), np.array([67, 89, 101])
    la, b = 3, 4
    p = len(prompt)
    seq = np.concatenate([prompt, answer])
    # Exact per-subset value sum CE over the subset, for every non-empty subset of the answer.
    subsets = [s for m in range(1, la + 1) for s in itertools.combinations(range(la), m)]
    rows = np.stack([np.where(np.isin(np.arange(len(seq)), [p + i for i in s]), tiny_cfg.mask_token_id, seq)
                     for s in subsets])
    ce = -np.take_along_axis(_log_softmax(np.asarray(lj.forward(tiny_params, tiny_cfg, rows))),
                             np.broadcast_to(seq, rows.shape)[..., None], -1)[..., 0]
    subset_sum = {s: sum(ce[r, p + i] for i in s) for r, s in enumerate(subsets)}
    level = {m: np.mean([v for s, v in subset_sum.items() if len(s) == m]) * la / m for m in range(1, la + 1)}
    # k ~ U{1..La}; rows j use m_j(k) (non-uniform for j = 2 here: round-half-to-even).
    exact = -np.mean([np.mean([level[m] for m in release_counts(k, la, b)]) for k in range(1, la + 1)])

    n = 600
    estimates = log_likelihood_batch(tiny_params, tiny_cfg, [prompt] * n, [answer] * n, mc_num=b, batch_size=b,
                                     key=jax.random.key(5))
    stderr = estimates.std(ddof=1) / math.sqrt(n)
    assert stderr > 0
    # 4.5 standard errors: a false failure has probability < 1e-5.
    assert abs(estimates.mean() - exact) < 4.5 * stderr, (estimates.mean(), exact, stderr)


def test_batched_equals_one_pair(tiny_cfg, tiny_params):
    prompts = [np.array([1, 5, 9]), np.array([], dtype=np.int32), np.array([1, 20, 21, 22, 23, 24, 25, 26, 27])]
    answers = [np.array([30, 31, 32, 33]), np.array([40, 41]), np.array([50])]
    keys = jax.random.split(jax.random.key(9), 3)
    batched = log_likelihood_batch(tiny_params, tiny_cfg, prompts, answers, mc_num=16, batch_size=8, keys=keys,
                                   cfg_scale=0.5)
    single = [log_likelihood(tiny_params, tiny_cfg, p, a, mc_num=16, batch_size=8, key=k, cfg_scale=0.5)
              for p, a, k in zip(prompts, answers, keys)]
    np.testing.assert_allclose(batched, single, rtol=2e-5)
    # `key` splits into one key per pair.
    by_key = log_likelihood_batch(tiny_params, tiny_cfg, prompts, answers, mc_num=16, batch_size=8,
                                  key=jax.random.key(9), cfg_scale=0.5)
    np.testing.assert_allclose(by_key, batched, rtol=1e-6)
    # Calls of 2 pairs (the last filled with a copy to the same shape) give the same estimates.
    chunked = log_likelihood_batch(tiny_params, tiny_cfg, prompts, answers, mc_num=16, batch_size=8, keys=keys,
                                   cfg_scale=0.5, pairs_per_call=2)
    assert chunked.shape == (3,)
    np.testing.assert_allclose(chunked, batched, rtol=1e-6)


def test_bad_input_errors_before_compile(tiny_cfg, tiny_params, monkeypatch):
    def no_compile(*a, **k):
        raise AssertionError("compiled before validating")

    monkeypatch.setattr(llm, "_log_likelihood_jit", no_compile)
    key = jax.random.key(0)
    long_answer = np.full(tiny_cfg.max_seq_len, 9)
    with pytest.raises(ValueError, match="exceed the model's context"):
        log_likelihood(tiny_params, tiny_cfg, np.array([1, 2]), long_answer, key=key)
    with pytest.raises(ValueError, match="multiple of batch_size"):
        log_likelihood(tiny_params, tiny_cfg, np.array([1]), np.array([5]), mc_num=10, batch_size=4, key=key)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        log_likelihood(tiny_params, tiny_cfg, np.array([1]), np.array([5, 9999]), key=key)
    with pytest.raises(ValueError, match="mask id"):
        log_likelihood(tiny_params, tiny_cfg, np.array([1]), np.array([5, tiny_cfg.mask_token_id]), key=key)
    with pytest.raises(ValueError, match="answer: is empty"):
        log_likelihood(tiny_params, tiny_cfg, np.array([1]), np.array([], np.int32), key=key)
    with pytest.raises(ValueError, match="pair 1: answer"):
        log_likelihood_batch(tiny_params, tiny_cfg, [[1], [1]], [[5], long_answer], key=key)
    with pytest.raises(ValueError, match="differ in number"):
        log_likelihood_batch(tiny_params, tiny_cfg, [[1], [1]], [[5]], key=key)
