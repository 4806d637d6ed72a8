"""Forward process and losses (docs/semantics.md, Training objectives) against worked examples and statistics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llada_jax.model.diffusion import (forward_process, head_cross_entropy, map_sequence_chunks, pretrain_loss,
                                       pretrain_loss_from_ce, random_length_mask, sft_forward_process, sft_loss,
                                       sft_loss_from_ce, token_cross_entropy, vocab_slices)
from llada_jax.model.transformer import head_logits

MASK = 9


def _ce(logits, target):
    z = logits - logits.max()
    return float(np.log(np.exp(z).sum()) - z[target])


def test_masked_fraction_follows_p_mask():
    tokens = jnp.zeros((256, 512), jnp.int32) + 5
    noisy, masked, p_mask = forward_process(jax.random.key(0), tokens, MASK)
    p = np.asarray(p_mask[:, 0])
    frac = np.asarray(masked).mean(axis=1)
    assert np.all((p >= 1e-3) & (p <= 1.0))
    assert np.allclose(np.asarray(p_mask), p[:, None])
    # Per row the masked count is Binomial(512, p): every row within 5 sigma.
    sigma = np.sqrt(p * (1 - p) / 512)
    assert np.all(np.abs(frac - p) <= 5 * sigma + 1e-9)
    # t ~ U(0,1): p_mask is spread over its range (mean of U(eps, 1) is ~0.5).
    assert abs(p.mean() - 0.5) < 0.06
    # Mask ids exactly where masked.
    assert np.array_equal(np.asarray(noisy) == MASK, np.asarray(masked))
    assert np.all(np.asarray(noisy)[~np.asarray(masked)] == 5)


def test_sft_prompt_is_never_masked():
    tokens = jnp.full((64, 40), 7, jnp.int32)
    prompt_lengths = jnp.arange(64) % 30 + 1
    noisy, masked, _ = sft_forward_process(jax.random.key(1), tokens, prompt_lengths, MASK)
    noisy, masked = np.asarray(noisy), np.asarray(masked)
    for r, pl in enumerate(np.asarray(prompt_lengths)):
        assert not masked[r, :pl].any() and np.all(noisy[r, :pl] == 7)
    assert np.array_equal(noisy == MASK, masked)
    assert masked.any()


def test_pretrain_loss_worked_example():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 5)).astype(np.float32)
    tokens = np.array([[1, 2, 3], [4, 0, 1]])
    masked = np.array([[True, False, True], [False, False, True]])
    p_mask = np.array([[0.5] * 3, [0.25] * 3], np.float32)
    want = (_ce(logits[0, 0], 1) / 0.5 + _ce(logits[0, 2], 3) / 0.5 + _ce(logits[1, 2], 1) / 0.25) / (2 * 3)
    got = float(pretrain_loss(jnp.asarray(logits), tokens, masked, p_mask))
    assert abs(got - want) < 1e-5
    # With a random-length cut to 2 positions the denominator becomes B * 2 and position 2 is not valid.
    valid = np.array([[True, True, False]] * 2)
    want_cut = (_ce(logits[0, 0], 1) / 0.5) / (2 * 2)
    got_cut = float(pretrain_loss(jnp.asarray(logits), tokens, masked & valid, p_mask, valid=valid))
    assert abs(got_cut - want_cut) < 1e-5


def test_sft_loss_worked_example_counts_eos_padding():
    eos = 2
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 6, 5)).astype(np.float32)
    # row 0: prompt of 2, answer "3 4" then EOS padding; row 1: prompt of 4, answer "1" + EOS.
    tokens = np.array([[1, 0, 3, 4, eos, eos], [1, 0, 4, 4, 1, eos]])
    prompt_lengths = np.array([2, 4])
    masked = np.array([[False, False, True, False, True, True],
                       [False, False, False, False, False, True]])
    p_mask = np.array([[0.6] * 6, [0.3] * 6], np.float32)
    row0 = (_ce(logits[0, 2], 3) + _ce(logits[0, 4], eos) + _ce(logits[0, 5], eos)) / 0.6 / 4  # answer length 4
    row1 = _ce(logits[1, 5], eos) / 0.3 / 2  # answer length 2 (one EOS of padding counted)
    got = float(sft_loss(jnp.asarray(logits), tokens, masked, p_mask, prompt_lengths))
    assert abs(got - (row0 + row1) / 2) < 1e-5


def test_token_cross_entropy_matches_numpy():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(3, 4, 7)).astype(np.float32) * 5
    targets = rng.integers(0, 7, size=(3, 4))
    want = np.array([[_ce(logits[b, t], targets[b, t]) for t in range(4)] for b in range(3)])
    np.testing.assert_allclose(np.asarray(token_cross_entropy(jnp.asarray(logits), targets)), want, rtol=1e-5, atol=1e-5)


def test_random_length_mask():
    always = random_length_mask(jax.random.key(3), 4, 50, prob=1.0)
    never = random_length_mask(jax.random.key(3), 4, 50, prob=0.0)
    assert np.asarray(never).all()
    kept = np.asarray(always)
    length = kept[0].sum()
    assert 1 <= length <= 50 and np.all(kept == (np.arange(50) < length)[None, :])
    # At the release's 1%, about 1 batch in 100 is cut.
    keys = jax.random.split(jax.random.key(4), 4000)
    cut = jax.vmap(lambda k: ~random_length_mask(k, 1, 64).all())(keys)
    assert 20 <= int(cut.sum()) <= 65  # Binomial(4000, 0.01 * 63/64): mean ~39, sd ~6


def _hidden_head_targets(dtype, b=2, length=11, d=16, v=50, seed=0):
    ks = jax.random.split(jax.random.key(seed), 3)
    hidden = jax.random.normal(ks[0], (b, length, d)).astype(dtype)
    head = (jax.random.normal(ks[1], (d, v)) / np.sqrt(d)).astype(dtype)
    return hidden, head, jax.random.randint(ks[2], (b, length), 0, v)


@pytest.mark.parametrize("vocab, slices", [(50, (1, 50)), (300, (3, 128)), (1024, (3, 384))])
def test_head_cross_entropy_equals_full_logits_with_gradients(vocab, slices):
    """Chunks of 4 over 11 positions (a ragged last chunk); the backward's vocabulary slices one,
    several with the last one padded: value and gradients as the full logits give."""
    hidden, head, targets = _hidden_head_targets(jnp.float32, v=vocab)
    assert vocab_slices(vocab, 11, 4) == slices
    weights = jnp.cos(jnp.arange(11.0))[None, :]
    chunked = lambda h, w: jnp.sum(head_cross_entropy(h, w, targets, 4) * weights)  # noqa: E731
    full = lambda h, w: jnp.sum(token_cross_entropy(head_logits(h, w), targets) * weights)  # noqa: E731
    np.testing.assert_allclose(np.asarray(head_cross_entropy(hidden, head, targets, 4)),
                               np.asarray(token_cross_entropy(head_logits(hidden, head), targets)),
                               rtol=1e-6, atol=1e-6)
    for a, b in zip(jax.grad(chunked, (0, 1))(hidden, head), jax.grad(full, (0, 1))(hidden, head)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_head_cross_entropy_bf16_within_bf16_rounding():
    hidden, head, targets = _hidden_head_targets(jnp.bfloat16, length=64, d=32, v=300, seed=1)
    chunked = lambda h, w: jnp.mean(head_cross_entropy(h, w, targets, 16))  # noqa: E731
    full = lambda h, w: jnp.mean(token_cross_entropy(head_logits(h, w), targets))  # noqa: E731
    assert float(chunked(hidden, head)) == pytest.approx(float(full(hidden, head)), rel=1e-6)
    for a, b in zip(jax.grad(chunked, (0, 1))(hidden, head), jax.grad(full, (0, 1))(hidden, head)):
        assert a.dtype == jnp.bfloat16
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        # bf16 keeps 8 mantissa bits: elementwise within a few ulps of the gradient's scale.
        np.testing.assert_allclose(a, b, atol=2e-2 * np.abs(b).max())


def test_map_sequence_chunks_equals_whole_sequence():
    x = jnp.arange(2 * 13 * 3, dtype=jnp.float32).reshape(2, 13, 3)
    y = jnp.arange(2 * 13, dtype=jnp.float32).reshape(2, 13)
    got = map_sequence_chunks(lambda a, b: a.sum(-1) * b, 5, x, y)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(x.sum(-1) * y))


def test_losses_from_ce_equal_the_logit_formulas():
    rng = np.random.default_rng(7)
    logits = jnp.asarray(rng.normal(size=(3, 10, 20)), jnp.float32)
    tokens = jnp.asarray(rng.integers(0, 20, (3, 10)))
    masked = jnp.asarray(rng.random((3, 10)) < 0.5)
    p_mask = jnp.full((3, 10), 0.4)
    valid = jnp.arange(10)[None, :] < 8
    ce = token_cross_entropy(logits, tokens)
    assert float(pretrain_loss_from_ce(ce, masked, p_mask, valid)) == float(
        pretrain_loss(logits, tokens, masked, p_mask, valid))
    plen = jnp.array([2, 5, 0])
    assert float(sft_loss_from_ce(ce, masked, p_mask, plen)) == float(sft_loss(logits, tokens, masked, p_mask, plen))
