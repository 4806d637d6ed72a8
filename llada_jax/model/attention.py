"""Bidirectional attention with a key (padding) mask, in the implementation the config names.

`attention(q, k, v, key_mask, impl)` takes q [B, T, N, H], k/v [B, S, K, H] (N a multiple of
K: grouped-query heads) and a boolean key mask [B, S] (true = a real key) or None, and
returns [B, T, N, H] in q's dtype. LLaDA's mask is full: every query sees every real key.

- `xla`: plain einsums that XLA fuses. Scores and probabilities stay in the compute dtype
  (bf16 in training: the [B, N, T, S] buffers are half the size of float32 ones); the softmax
  statistics (row max, row sum) and the normalisation are float32, as in MaxText's
  dot-product attention. In float32 compute this is the textbook softmax attention.
- `splash`: the Pallas TPU splash-attention kernel (`jax.experimental.pallas.ops.tpu`), which
  never materialises the scores. Padding is a segment-id mask (real = 1, pad = 0): a real
  query sees exactly the real keys; a pad query sees only pad keys (its output is never
  used). Under a mesh the kernel runs per shard (`shard_map` over the batch and head axes that
  the logical rules in context give `act_batch` / `act_heads`). Off TPU it runs in Pallas
  interpret mode (slow: for checking numerics on CPU). Query/key lengths that are not
  multiples of 128 (the kernel's tile) fall back to `xla` for that call, e.g. the sampler's
  short cache windows.
- `cudnn`: `jax.nn.dot_product_attention(implementation="cudnn")` (GPU, bf16/fp16 only).
- `auto`: `splash` on TPU, `cudnn` on GPU in bf16/fp16, `xla` otherwise. The platform is the
  mesh's devices' when a mesh is set (so an ahead-of-time compile for a TPU topology on a CPU
  host picks `splash`), else JAX's default backend.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

SPLASH_TILE = 128  # the kernel's lane width: sequence blocks are multiples of it


def attention(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array | None, impl: str) -> jax.Array:
    """Full (bidirectional) attention over the keys where `key_mask` is true; see the module doc."""
    impl = resolve_impl(impl, q.dtype)
    if impl == "splash" and splash_fits(q.shape[1], k.shape[1]):
        return splash_attention(q, k, v, key_mask, interpret=current_platform() != "tpu")
    if impl == "cudnn":
        mask = None if key_mask is None else key_mask[:, None, None, :]
        return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="cudnn")
    return xla_attention(q, k, v, key_mask)


def current_platform() -> str:
    """The platform of the mesh in context (AOT compiles for a TPU topology), else the default backend."""
    mesh = jax.sharding.get_abstract_mesh()
    device = None if mesh.empty else getattr(mesh, "abstract_device", None)
    return device.platform if device is not None else jax.default_backend()


def resolve_impl(impl: str, dtype, platform: str | None = None) -> str:
    """`auto` -> `splash` on TPU, `cudnn` on GPU with a 16-bit compute dtype, else `xla`
    (on `platform`, by default the one in context)."""
    if impl != "auto":
        return impl
    platform = platform or current_platform()
    if platform == "tpu":
        return "splash"
    if platform in ("gpu", "cuda") and jnp.dtype(dtype).itemsize == 2:
        return "cudnn"
    return "xla"


def splash_fits(q_len: int, kv_len: int) -> bool:
    """Whether the splash kernel tiles these lengths (multiples of 128)."""
    return q_len % SPLASH_TILE == 0 and kv_len % SPLASH_TILE == 0


def xla_attention(q, k, v, key_mask):
    """Softmax attention with compute-dtype scores/probabilities and float32 row statistics."""
    b, t, n, h = q.shape
    kv_heads = k.shape[2]
    qg = q.reshape(b, t, kv_heads, n // kv_heads, h)
    scores = jnp.einsum("btkgh,bskh->bkgts", qg, k)
    scores = scores * jnp.asarray(1.0 / math.sqrt(h), scores.dtype)
    if key_mask is not None:
        big_negative = -0.7 * jnp.finfo(scores.dtype).max
        scores = jnp.where(key_mask[:, None, None, None, :], scores, jnp.asarray(big_negative, scores.dtype))
    row_max = jax.lax.stop_gradient(jnp.max(scores, axis=-1, keepdims=True))
    probs = jnp.exp(scores - row_max)                                           # compute dtype, <= 1
    row_sum = jnp.sum(probs.astype(jnp.float32), axis=-1)                       # [b, k, g, t] float32
    # Unnormalised output in the compute dtype (its backward, d probs, then is too), normalised in float32.
    out = jnp.einsum("bkgts,bskh->btkgh", probs.astype(v.dtype), v).astype(jnp.float32)
    out = out / jnp.transpose(row_sum, (0, 3, 1, 2))[..., None]
    return out.astype(q.dtype).reshape(b, t, n, h)


def _splash_kernel(n_heads: int, q_len: int, kv_len: int, head_shards: int, interpret: bool):
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    mask = sm.MultiHeadMask([sm.FullMask((q_len, kv_len)) for _ in range(n_heads)])
    bq = next(s for s in (512, 256, 128) if q_len % s == 0)
    bkv = next(s for s in (512, 256, 128) if kv_len % s == 0)
    sizes = sk.BlockSizes(block_q=bq, block_kv=bkv, block_kv_compute=bkv, block_q_dkv=bq, block_kv_dkv=bkv,
                          block_kv_dkv_compute=bkv, block_q_dq=bq, block_kv_dq=bkv)
    # Built per trace, not cached: its mask-info arrays become constants of the trace that made them.
    return sk.make_splash_mha(mask=mask, block_sizes=sizes, head_shards=head_shards, q_seq_shards=1,
                              interpret=interpret)


def _mesh_axes(logical: str, dim: int, mesh) -> tuple[str, ...]:
    """Mesh axes the logical rules in context give `logical`, kept while they divide `dim`."""
    spec = nn.logical_to_mesh_axes((logical,))[0]
    axes = (spec,) if isinstance(spec, str) else tuple(spec or ())
    kept, size = [], 1
    for ax in axes:
        n = mesh.shape.get(ax, 1)
        if n > 1 and dim % (size * n) == 0:
            kept.append(ax)
            size *= n
    return tuple(kept)


def splash_attention(q, k, v, key_mask, *, interpret: bool = False):
    """The splash kernel over q [B, T, N, H], k/v [B, S, K, H]; per shard under a mesh."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk

    b, t, n, h = q.shape
    groups = n // k.shape[2]
    if groups > 1:  # grouped-query heads: the MHA kernel sees each kv head repeated
        k, v = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)
    # The kernel does not scale the scores; [B, N, T, H] layout.
    qt = jnp.swapaxes(q * jnp.asarray(1.0 / math.sqrt(h), q.dtype), 1, 2)
    kt, vt = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)
    seg = None if key_mask is None else key_mask.astype(jnp.int32)

    def local(kernel, qt, kt, vt, seg):
        if seg is None:
            return jax.vmap(lambda q_, k_, v_: kernel(q_, k_, v_))(qt, kt, vt)
        return jax.vmap(lambda q_, k_, v_, s_: kernel(q_, k_, v_, segment_ids=sk.SegmentIds(s_, s_)))(qt, kt, vt, seg)

    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        out = local(_splash_kernel(n, t, kt.shape[2], 1, interpret), qt, kt, vt, seg)
        return jnp.swapaxes(out, 1, 2)
    batch_axes = _mesh_axes("act_batch", b, mesh) or None
    head_axes = _mesh_axes("act_heads", n, mesh)
    head_axis = head_axes[0] if len(head_axes) == 1 else None
    head_shards = mesh.shape[head_axis] if head_axis else 1
    kernel = _splash_kernel(n, t, kt.shape[2], head_shards, interpret)
    kernel_spec = kernel.manual_sharding_spec(jax.sharding.NamedSharding(mesh, P(head_axis, None)))
    qkv_spec = P(batch_axes, head_axis, None, None)
    seg_spec = None if seg is None else P(batch_axes, None)
    run = jax.shard_map(local, mesh=mesh, in_specs=(kernel_spec, qkv_spec, qkv_spec, qkv_spec, seg_spec),
                        out_specs=qkv_spec, check_vma=False)
    return jnp.swapaxes(run(kernel, qt, kt, vt, seg), 1, 2)

