"""Checkpoint fingerprints: each array's, computed on device, and the data iterator state's.

An array's fingerprint is two 32-bit sums over its elements' bit patterns, each word weighted
by an odd, position-dependent multiplier: `sum_i bits_i * w_i mod 2^32`. Integer addition mod
2^32 is exact and associative, so the value is the same on any sharding, device count or
reduction order; any change of one element changes both sums (odd multipliers are invertible
mod 2^32), and moving elements changes them too. It reads the state once on device and brings
back 8 bytes per array. The data iterator state (JSON, one per process) is fingerprinted by
SHA-256 of its canonical JSON, which is what a restore compares and `verify` recomputes from
the files Grain wrote.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# Two odd multipliers (golden-ratio and murmur constants) for the position weights.
_MULTIPLIERS = (0x9E3779B1, 0x85EBCA6B)


def _bits_u32(x: jax.Array) -> jax.Array:
    """The element bit patterns of `x` as uint32 (narrower types zero-extended; wider: both halves)."""
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.uint8)
    size = x.dtype.itemsize
    if size == 8:
        return jax.lax.bitcast_convert_type(x, jnp.uint32).reshape(-1)
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[size]
    return jax.lax.bitcast_convert_type(x, unsigned).reshape(-1).astype(jnp.uint32)


def _array_fingerprint(x: jax.Array) -> jax.Array:
    bits = _bits_u32(x)
    i = jnp.arange(bits.shape[0], dtype=jnp.uint32)
    sums = []
    for m in _MULTIPLIERS:
        w = (i * jnp.uint32(m) + jnp.uint32(m >> 1)) | jnp.uint32(1)
        sums.append(jnp.sum(bits * w, dtype=jnp.uint32))
    return jnp.stack(sums)


@jax.jit
def _tree_fingerprints(tree) -> list:
    return [_array_fingerprint(x) for x in jax.tree.leaves(tree)]


def _key_name(k) -> str:
    for attr in ("name", "key", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def leaf_names(tree) -> list[str]:
    """`params/layers/q_proj`-style name of every leaf, in `jax.tree.leaves` order (the same for a
    NamedTuple state and the dicts Orbax restores)."""
    return ["/".join(_key_name(k) for k in p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def array_fingerprints(tree) -> dict[str, str]:
    """Leaf name -> 16 hex digits, for every array of `tree` (computed on device, any sharding)."""
    values = jax.device_get(_tree_fingerprints(tree))
    return {name: "".join(f"{int(v):08x}" for v in np.asarray(fp)) for name, fp in zip(leaf_names(tree), values)}


def data_state_fingerprint(state: Any) -> str:
    """SHA-256 (hex) of an iterator state's canonical JSON (the state as Grain saves it)."""
    if isinstance(state, (bytes, str)):
        state = json.loads(state)
    return hashlib.sha256(json.dumps(state, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def all_process_strings(value: str) -> list[str]:
    """`value` (a fixed-length hex string) of every process, in process order (one collective)."""
    if jax.process_count() == 1:
        return [value]
    from jax.experimental import multihost_utils

    raw = np.frombuffer(bytes.fromhex(value), np.uint8)
    gathered = np.asarray(multihost_utils.process_allgather(raw))
    return [bytes(row.astype(np.uint8)).hex() for row in gathered.reshape(jax.process_count(), -1)]


def differences(saved: dict[str, str], actual: dict[str, str]) -> list[str]:
    """What differs between two fingerprint maps, as short phrases (empty: they agree)."""
    out = [f"array {k} missing" for k in saved if k not in actual]
    out += [f"array {k} fingerprint {actual[k]} != saved {v}" for k, v in saved.items() if k in actual and actual[k] != v]
    return out
