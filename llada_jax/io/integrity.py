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

import functools
import hashlib
import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# Two odd multipliers (golden-ratio and murmur constants) for the position weights.
_MULTIPLIERS = (0x9E3779B1, 0x85EBCA6B)


def _words(x: jax.Array) -> jax.Array:
    """The element bit patterns of `x` as uint32, in `x`'s shape plus any trailing word axes (a PRNG
    key's data; the two halves of an 8-byte element); narrower types zero-extended."""
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.uint8)
    size = x.dtype.itemsize
    if size == 8:
        return jax.lax.bitcast_convert_type(x, jnp.uint32)
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[size]
    return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


def _weighted_sums(bits: jax.Array, positions: jax.Array) -> jax.Array:
    """The two sums `sum_i bits_i * w_i mod 2^32`, w_i odd and set by the word's global position i."""
    sums = []
    for m in _MULTIPLIERS:
        w = (positions * jnp.uint32(m) + jnp.uint32(m >> 1)) | jnp.uint32(1)
        sums.append(jnp.sum(bits * w, dtype=jnp.uint32))
    return jnp.stack(sums)


def _array_fingerprint(x: jax.Array) -> jax.Array:
    bits = _words(x).reshape(-1)
    return _weighted_sums(bits, jnp.arange(bits.shape[0], dtype=jnp.uint32))


@jax.jit
def _tree_fingerprints(tree) -> list:
    return [_array_fingerprint(x) for x in jax.tree.leaves(tree)]


@functools.partial(jax.jit, static_argnames=("global_shape",))
def _shard_fingerprint(data, offsets: jax.Array, global_shape: tuple[int, ...]) -> jax.Array:
    """The share of one shard (at `offsets` of an array of `global_shape`) in the array's fingerprint:
    its words weighted by their positions in the whole array, so the shares of disjoint shards add up
    (mod 2^32) to `_array_fingerprint` of the array."""
    words = _words(data)
    shape = tuple(global_shape) + words.shape[len(global_shape):]
    positions = jnp.zeros(words.shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(words.ndim)):
        coord = jnp.arange(words.shape[axis], dtype=jnp.uint32)
        if axis < len(global_shape):
            coord = coord + offsets[axis]
        positions = positions + jax.lax.broadcast_in_dim(coord, words.shape, (axis,)) * jnp.uint32(stride % 2**32)
        stride *= shape[axis]
    return _weighted_sums(words.reshape(-1), positions.reshape(-1))


def process_fingerprints(tree) -> dict[str, str]:
    """Leaf name -> this process's share of its fingerprint: the sums over the shards it owns (replica 0
    of each shard on its devices), 16 hex digits, then 8 hex digits naming which shards those are.

    The shares of all processes add up to `array_fingerprints`; computed on this process alone (no
    collective), so a process can check what it wrote and read without waiting for the others.
    """
    names, pending = [], []
    with jax.set_mesh(None):  # each shard is computed on its own device, outside the run's mesh
        for name, x in zip(leaf_names(tree), jax.tree.leaves(tree)):
            owned = [s for s in x.addressable_shards if s.replica_id == 0]
            offsets = [tuple(sl.start or 0 for sl in s.index) for s in owned]
            layout = hashlib.sha256(json.dumps(sorted(
                (o, tuple(s.data.shape)) for o, s in zip(offsets, owned))).encode()).hexdigest()[:8]
            names.append((name, layout))
            pending.append([_shard_fingerprint(s.data, np.asarray(o, np.uint32).reshape(-1), tuple(x.shape))
                            for o, s in zip(offsets, owned)])
    values = jax.device_get(pending)  # every shard dispatched first, then one transfer
    out = {}
    for (name, layout), shares in zip(names, values):
        total = sum((np.asarray(v, np.uint64) for v in shares), np.zeros(2, np.uint64)) % 2**32
        out[name] = "".join(f"{int(v):08x}" for v in total) + layout
    return out


def fingerprints_from_shares(shares: list[dict[str, str]]) -> dict[str, str]:
    """`array_fingerprints` of a tree from every process's `process_fingerprints` of it: the shares
    added mod 2^32 (each shard is owned by exactly one process), so a save needs no second pass."""
    def added(name: str, word: slice) -> int:
        return sum(int(share[name][word], 16) for share in shares) % 2**32

    return {name: f"{added(name, slice(0, 8)):08x}{added(name, slice(8, 16)):08x}" for name in shares[0]}


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


def tree_fingerprint(tree) -> str:
    """SHA-256 (hex) of every array's fingerprint with its leaf name: one value naming a whole
    params tree (e.g. a frozen reference model), the same on any sharding."""
    return hashlib.sha256(json.dumps(array_fingerprints(tree), sort_keys=True).encode()).hexdigest()


def data_state_fingerprint(state: Any) -> str:
    """SHA-256 (hex) of an iterator state's canonical JSON (the state as Grain saves it)."""
    if isinstance(state, (bytes, str)):
        state = json.loads(state)
    return hashlib.sha256(json.dumps(state, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _all_process_bytes(raw: bytes) -> list[bytes]:
    """`raw` (the same length on every process) of every process, in process order (one collective)."""
    if jax.process_count() == 1:
        return [raw]
    from jax.experimental import multihost_utils

    gathered = np.asarray(multihost_utils.process_allgather(np.frombuffer(raw, np.uint8)))
    return [bytes(row.astype(np.uint8)) for row in gathered.reshape(jax.process_count(), -1)]


def all_process_strings(value: str) -> list[str]:
    """`value` (a fixed-length hex string) of every process, in process order (one collective)."""
    return [raw.hex() for raw in _all_process_bytes(bytes.fromhex(value))]


def all_process_texts(text: str) -> list[str]:
    """`text` of every process, in process order: how processes share a verdict (an error message, a
    list of steps, their fingerprint shares) before acting on it. Two collectives (the lengths, then
    the texts padded to the longest); none with one process."""
    if jax.process_count() == 1:
        return [text]
    data = text.encode()
    size = max(int.from_bytes(r, "little") for r in _all_process_bytes(len(data).to_bytes(8, "little")))
    raw = len(data).to_bytes(8, "little") + data.ljust(size, b"\0")
    return [r[8:8 + int.from_bytes(r[:8], "little")].decode() for r in _all_process_bytes(raw)]


def all_process_shares(mine: dict[str, str]) -> list[dict[str, str]]:
    """Every process's `process_fingerprints` (this one's is `mine`), in process order."""
    return [json.loads(t) for t in all_process_texts(json.dumps(mine))]


def differences(saved: dict[str, str], actual: dict[str, str]) -> list[str]:
    """What differs between two fingerprint maps, as short phrases (empty: they agree)."""
    out = [f"array {k} missing" for k in saved if k not in actual]
    out += [f"array {k} fingerprint {actual[k]} != saved {v}" for k, v in saved.items() if k in actual and actual[k] != v]
    return out
