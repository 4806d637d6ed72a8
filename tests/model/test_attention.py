"""Attention implementations against a float64 NumPy softmax attention and against each other.

The splash kernel runs in Pallas interpret mode here (it is a TPU kernel): same numerics as on
TPU, slow, so the shapes are one or two 128-token tiles.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType

from llada_jax.config import MeshConfig, ModelConfig
from llada_jax.model.attention import attention, resolve_impl, splash_attention, xla_attention
from llada_jax.model.sharding import LOGICAL_RULES, make_mesh
from llada_jax.model.transformer import forward, init_params


def numpy_attention(q, k, v, key_mask):
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    groups = q.shape[2] // k.shape[2]
    k, v = np.repeat(k, groups, axis=2), np.repeat(v, groups, axis=2)
    scores = np.einsum("btnh,bsnh->bnts", q, k) / math.sqrt(q.shape[-1])
    if key_mask is not None:
        scores = np.where(np.asarray(key_mask)[:, None, None, :], scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return np.einsum("bnts,bsnh->btnh", probs, v)


def _qkv(b, t, n, kv, h, seed=0, dtype=jnp.float32):
    ks = jax.random.split(jax.random.key(seed), 3)
    q = jax.random.normal(ks[0], (b, t, n, h), jnp.float32)
    k = jax.random.normal(ks[1], (b, t, kv, h), jnp.float32)
    v = jax.random.normal(ks[2], (b, t, kv, h), jnp.float32)
    return q.astype(dtype), k.astype(dtype), v.astype(dtype)


def _cut_mask(b, t, keep):
    """Row i keeps its first keep[i] keys (the random-length cut / right padding)."""
    return jnp.arange(t)[None, :] < jnp.asarray(keep)[:, None]


@pytest.mark.parametrize("kv_heads", [4, 2, 1], ids=["mha", "gqa", "mqa"])
def test_xla_attention_matches_numpy(kv_heads):
    q, k, v = _qkv(2, 9, 4, kv_heads, 8)
    mask = _cut_mask(2, 9, [9, 5])
    want = numpy_attention(q, k, v, mask)
    np.testing.assert_allclose(np.asarray(xla_attention(q, k, v, mask)), want, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(xla_attention(q, k, v, None)), numpy_attention(q, k, v, None),
                               atol=1e-5, rtol=1e-5)


def test_xla_attention_bf16_within_bf16_rounding_of_float32_softmax():
    """bf16 scores/probabilities with float32 statistics vs the former float32-score path."""
    q, k, v = _qkv(2, 64, 4, 2, 32, seed=1)
    mask = _cut_mask(2, 64, [64, 40])
    want = numpy_attention(q.astype(jnp.bfloat16), k.astype(jnp.bfloat16), v.astype(jnp.bfloat16), mask)
    got = xla_attention(q.astype(jnp.bfloat16), k.astype(jnp.bfloat16), v.astype(jnp.bfloat16), mask)
    former = jax.nn.dot_product_attention(q.astype(jnp.bfloat16), k.astype(jnp.bfloat16), v.astype(jnp.bfloat16),
                                          mask=mask[:, None, None, :], implementation="xla")
    assert got.dtype == jnp.bfloat16
    # Outputs are averages of unit-normal values: a few bf16 ulps (2^-8 relative) of error.
    err_new = np.abs(np.asarray(got, np.float64) - want).max()
    err_old = np.abs(np.asarray(former, np.float64) - want).max()
    assert err_new < 3e-2 and err_old < 3e-2, (err_new, err_old)
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(former, np.float32), atol=3e-2)


def test_splash_matches_xla_forward_and_gradients():
    q, k, v = _qkv(2, 128, 2, 1, 16, seed=2)
    mask = _cut_mask(2, 128, [128, 77])
    real_rows = mask[:, :, None, None]
    weights = jnp.cos(jnp.arange(16.0))

    def loss(fn):
        # Pad queries' outputs are never used (splash gives them pad-only attention): excluded.
        return lambda q, k, v: jnp.sum(jnp.where(real_rows, fn(q, k, v), 0.0) * weights)

    splash = lambda q, k, v: splash_attention(q, k, v, mask, interpret=True)  # noqa: E731
    xla = lambda q, k, v: xla_attention(q, k, v, mask)  # noqa: E731
    np.testing.assert_allclose(np.asarray(jnp.where(real_rows, splash(q, k, v), 0.0)),
                               np.where(real_rows, numpy_attention(q, k, v, mask), 0.0), atol=2e-5)
    g_splash = jax.grad(loss(splash), argnums=(0, 1, 2))(q, k, v)
    g_xla = jax.grad(loss(xla), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(g_splash, g_xla):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5, rtol=1e-4)


def test_splash_under_a_mesh_runs_per_shard_and_matches():
    """shard_map over batch (data, fsdp) and heads (tensor) from the logical rules: same numbers."""
    q, k, v = _qkv(4, 128, 4, 4, 8, seed=3)
    mask = _cut_mask(4, 128, [128, 100, 128, 3])
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    fn = jax.jit(lambda q, k, v, m: splash_attention(q, k, v, m, interpret=True))
    with nn.logical_axis_rules(LOGICAL_RULES), jax.set_mesh(mesh):
        text = fn.lower(q, k, v, mask).as_text()
        got = fn(q, k, v, mask)
    assert "shard_map" in text or "manual" in text
    real = np.asarray(mask)[:, :, None, None]
    np.testing.assert_allclose(np.where(real, np.asarray(got), 0.0),
                               np.where(real, numpy_attention(q, k, v, mask), 0.0), atol=2e-5)


def test_model_with_splash_equals_xla(tiny_cfg, tiny_params):
    """The whole mask predictor with attention_impl=splash: same logits on the real positions."""
    tokens = np.random.default_rng(0).integers(5, tiny_cfg.vocab_size, size=(2, 128))
    mask = np.ones((2, 128), bool)
    mask[1, 90:] = False
    want = np.asarray(forward(tiny_params, tiny_cfg, tokens, attention_mask=mask))
    got = np.asarray(forward(tiny_params, tiny_cfg.replace(attention_impl="splash"), tokens, attention_mask=mask))
    np.testing.assert_allclose(got[mask], want[mask], atol=2e-5, rtol=1e-5)
    # Lengths the kernel cannot tile run the xla path instead.
    short = tokens[:, :12]
    np.testing.assert_array_equal(
        np.asarray(forward(tiny_params, tiny_cfg.replace(attention_impl="splash"), short)),
        np.asarray(forward(tiny_params, tiny_cfg, short)))


def test_auto_picks_by_platform_and_dtype():
    assert resolve_impl("auto", jnp.bfloat16) == "xla"  # this CPU host
    assert resolve_impl("cudnn", jnp.float32) == "cudnn" and resolve_impl("xla", jnp.bfloat16) == "xla"
    for platform, dtype, want in (("tpu", jnp.float32, "splash"), ("gpu", jnp.bfloat16, "cudnn"),
                                  ("gpu", jnp.float32, "xla"), ("cpu", jnp.bfloat16, "xla")):
        device = jax.sharding.AbstractDevice(device_kind="x", num_cores=None, platform=platform)
        mesh = jax.sharding.AbstractMesh((1,), ("data",), axis_types=(AxisType.Auto,), abstract_device=device)
        with jax.sharding.use_abstract_mesh(mesh):
            assert resolve_impl("auto", dtype) == want, (platform, dtype)


def test_auto_lowers_to_the_splash_kernel_for_a_tpu_topology():
    """On a CPU host, for v5e:2x2 (libtpu): `auto` becomes the Mosaic kernel, per shard."""
    pytest.importorskip("libtpu", reason="the 'tpu' extra (libtpu) describes TPU topologies")
    from jax.experimental import topologies

    devices = topologies.get_topology_desc(topology_name="v5e:2x2", platform="tpu").devices
    mesh = make_mesh(MeshConfig(fsdp=2, tensor=2), devices)
    shapes = [jax.ShapeDtypeStruct((4, 256, 4, 128), jnp.bfloat16)] * 3 + [jax.ShapeDtypeStruct((4, 256), jnp.bool_)]
    with nn.logical_axis_rules(LOGICAL_RULES), jax.set_mesh(mesh):
        text = jax.jit(lambda q, k, v, m: attention(q, k, v, m, "auto")).lower(*shapes).as_text()
    assert "tpu_custom_call" in text
    assert "shard_map" in text or "manual" in text


def test_config_accepts_splash_and_chunk_size():
    cfg = ModelConfig.from_dict({"attention_impl": "splash", "loss_chunk_size": 128})
    assert cfg.attention_impl == "splash" and cfg.loss_chunk_size == 128
    with pytest.raises(Exception, match="loss_chunk_size"):
        ModelConfig.from_dict({"loss_chunk_size": 0})
    with pytest.raises(Exception, match="attention_impl"):
        ModelConfig.from_dict({"attention_impl": "flash"})
