"""The mask predictor against an independent NumPy implementation of docs/semantics.md (The model)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.core import jaxprs_in_params

from llada_jax.config import ModelConfig
from llada_jax.model.transformer import (forward, forward_fill_cache, forward_hidden, forward_window, head_logits,
                                         init_params, param_logical_axes, param_shapes)
from numpy_reference import hf_weights, reference_logits

BASE = dict(vocab_size=97, d_model=32, n_layers=2, n_heads=4, mlp_hidden_size=48, max_seq_len=64,
            mask_token_id=96, bos_token_id=1, eos_token_id=2, eot_token_id=3, pad_token_id=2,
            dtype="float32", param_dtype="float32", rope_theta=10000.0, init_std=0.2)

VARIANTS = {
    "mha": dict(n_kv_heads=4),
    "gqa": dict(n_kv_heads=2),
    "mqa_tied": dict(n_kv_heads=1, weight_tying=True, n_layers=1),
}


@pytest.fixture(scope="module", params=list(VARIANTS))
def model(request):
    cfg = ModelConfig.from_dict({**BASE, **VARIANTS[request.param]})
    params = init_params(cfg, jax.random.key(hash(request.param) % 1000))
    return cfg, params


def test_logits_match_numpy_reference(model):
    cfg, params = model
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, size=(2, 11))
    got = np.asarray(forward(params, cfg, tokens))
    want = reference_logits(hf_weights(params, cfg), cfg, tokens)
    assert got.dtype == np.float32 and got.shape == (2, 11, cfg.vocab_size)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_attention_is_bidirectional(model):
    cfg, params = model
    tokens = np.arange(10, 20)[None, :]
    changed = tokens.copy()
    changed[0, -1] = 50
    a = np.asarray(forward(params, cfg, tokens))
    b = np.asarray(forward(params, cfg, changed))
    assert np.abs(a[0, 0] - b[0, 0]).max() > 1e-4


def test_left_padding_leaves_real_logits_unchanged(model):
    cfg, params = model
    rng = np.random.default_rng(1)
    real = rng.integers(4, cfg.vocab_size - 1, size=(1, 9))
    pad = 5
    padded = np.concatenate([np.full((1, pad), cfg.pad_token_id), real], axis=1)
    mask = np.concatenate([np.zeros((1, pad), bool), np.ones((1, 9), bool)], axis=1)
    unpadded = np.asarray(forward(params, cfg, real))
    with_pad = np.asarray(forward(params, cfg, padded, attention_mask=mask))
    np.testing.assert_allclose(with_pad[:, pad:], unpadded, atol=1e-5, rtol=1e-5)
    # The mask is what makes this hold: without it the pads change the real tokens' logits.
    no_mask = np.asarray(forward(params, cfg, padded))
    assert np.abs(no_mask[:, pad:] - unpadded).max() > 1e-4


def test_key_mask_matches_reference(model):
    cfg, params = model
    rng = np.random.default_rng(2)
    tokens = rng.integers(0, cfg.vocab_size, size=(2, 8))
    mask = np.ones((2, 8), bool)
    mask[1, :3] = False
    got = np.asarray(forward(params, cfg, tokens, attention_mask=mask))
    want = reference_logits(hf_weights(params, cfg), cfg, tokens, key_mask=mask)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_bf16_compute_close_to_float32(tiny_cfg, tiny_params):
    tokens = np.random.default_rng(3).integers(0, tiny_cfg.vocab_size, size=(2, 16))
    f32 = np.asarray(forward(tiny_params, tiny_cfg, tokens))
    bf16 = np.asarray(forward(tiny_params, tiny_cfg.replace(dtype="bfloat16"), tokens))
    assert bf16.dtype == np.float32
    # Stated tolerance: bf16 has an 8-bit mantissa; logits (|x| ~ 1) agree to 5e-2 absolute.
    np.testing.assert_allclose(bf16, f32, atol=5e-2)
    assert np.mean(bf16.argmax(-1) == f32.argmax(-1)) > 0.9


def test_remat_policies_give_identical_logits_and_grads(tiny_cfg, tiny_params):
    tokens = jnp.asarray(np.random.default_rng(4).integers(0, tiny_cfg.vocab_size, size=(1, 8)))

    def grads(cfg):
        return jax.grad(lambda p: jnp.mean(forward(p, cfg, tokens) ** 2))(tiny_params)

    base = grads(tiny_cfg)
    for policy in ("full", "dots_no_batch"):
        other = grads(tiny_cfg.replace(remat_policy=policy))
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5), base, other)


def test_params_carry_logical_axes(tiny_cfg):
    axes = param_logical_axes(tiny_cfg)
    shapes = param_shapes(tiny_cfg)
    assert tuple(axes["wte"]) == ("vocab", "embed")
    assert tuple(axes["layers"]["q_proj"]) == ("layers", "embed", "heads", "head_dim")
    assert tuple(axes["layers"]["k_proj"]) == ("layers", "embed", "kv_heads", "head_dim")
    flat_axes = jax.tree_util.tree_leaves(axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    flat_shapes = jax.tree_util.tree_leaves(shapes)
    assert len(flat_axes) == len(flat_shapes)
    for spec, shape in zip(flat_axes, flat_shapes):
        assert len(spec) == len(shape.shape)
    assert shapes["layers"]["q_proj"].shape[0] == tiny_cfg.n_layers  # scanned: stacked on axis 0


def test_param_count_matches_config(tiny_cfg, tiny_params):
    count = sum(x.size for x in jax.tree_util.tree_leaves(tiny_params))
    assert count == tiny_cfg.num_params()
    assert 100_000 < count < 1_000_000  # "a few hundred thousand parameters"


def test_cached_window_forward_equals_full_forward(tiny_cfg, tiny_params):
    tokens = jnp.asarray(np.random.default_rng(5).integers(0, tiny_cfg.vocab_size, size=(2, 12)))
    full = forward(tiny_params, tiny_cfg, tokens)
    _, cache = forward_fill_cache(tiny_params, tiny_cfg, tokens)
    window, _ = forward_window(tiny_params, tiny_cfg, tokens[:, 4:8], cache, 4)
    np.testing.assert_allclose(window, full[:, 4:8], atol=1e-5)
    head, _ = forward_fill_cache(tiny_params, tiny_cfg, tokens, head_start=6, head_length=3)
    np.testing.assert_allclose(head, full[:, 6:9], atol=1e-5)


def test_out_of_vocabulary_tokens_rejected(tiny_cfg, tiny_params):
    tokens = np.array([[1, 2, tiny_cfg.vocab_size]])
    with pytest.raises(ValueError, match=r"id 512 at position \(0, 2\) is outside the vocabulary"):
        forward(tiny_params, tiny_cfg, tokens)
    with pytest.raises(ValueError, match="attention_mask: shape"):
        forward(tiny_params, tiny_cfg, np.array([[1, 2]]), attention_mask=np.ones((1, 3), bool))


def test_hidden_states_through_the_head_equal_forward(tiny_cfg, tiny_params):
    tokens = jnp.asarray(np.random.default_rng(6).integers(0, tiny_cfg.vocab_size, size=(2, 10)))
    mask = jnp.arange(10)[None, :] < jnp.array([[10], [7]])
    hidden, head = forward_hidden(tiny_params, tiny_cfg, tokens, mask)
    assert hidden.shape == (2, 10, tiny_cfg.d_model) and head.shape == (tiny_cfg.d_model, tiny_cfg.vocab_size)
    np.testing.assert_allclose(head_logits(hidden, head), forward(tiny_params, tiny_cfg, tokens, mask), atol=1e-6)


def test_embedding_gradient_in_compute_dtype(tiny_cfg, tiny_params):
    """bf16 compute: the embedding's backward scatter-add is bf16 [V, D], not float32."""
    cfg = tiny_cfg.replace(dtype="bfloat16")
    tokens = jnp.zeros((2, 8), jnp.int32)
    jaxpr = jax.make_jaxpr(jax.grad(lambda p: jnp.mean(forward_hidden(p, cfg, tokens)[0].astype(jnp.float32))))(
        tiny_params)

    def scatters(j):
        for e in j.eqns:
            if e.primitive.name.startswith("scatter"):
                yield e
            for sub in jaxprs_in_params(e.params):
                yield from scatters(sub)

    scatters = list(scatters(jaxpr.jaxpr))
    assert scatters and all(e.outvars[0].aval.dtype == jnp.bfloat16 for e in scatters)
    assert any(e.outvars[0].aval.shape == (cfg.vocab_size, cfg.d_model) for e in scatters)
