"""Hugging Face LLaDA checkpoints (GSAI-ML/LLaDA-8B-*) to and from our params (docs/semantics.md, The model).

HF stores linear weights `[out, in]` with names `model.transformer.blocks.{i}.q_proj.weight`,
...; we store `[in, ...out]` kernels with the layers stacked on axis 0. Loading streams one
parameter at a time: a stacked parameter is assembled in one host buffer, put on its device
(or sharding) and freed before the next, so the host never holds two copies of the model.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterator

import jax
import ml_dtypes
import numpy as np

from llada_jax.config import ModelConfig

PREFIX = "model.transformer."
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"

# Our per-layer param name -> (HF name suffix, [out, in] -> ours).
_LAYER_PARAMS = ("attn_norm", "q_proj", "k_proj", "v_proj", "attn_out", "ff_norm", "ff_proj", "up_proj", "ff_out")

_NP_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}
_TORCH_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def _to_ours(name: str, w: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    """Convert one HF tensor (one layer) to our layout."""
    d, n, k, h = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    if name in ("attn_norm", "ff_norm", "ln_f", "wte"):
        return w
    if name == "q_proj":
        return w.T.reshape(d, n, h)
    if name in ("k_proj", "v_proj"):
        return w.T.reshape(d, k, h)
    if name == "attn_out":
        return w.T.reshape(n, h, d)
    return w.T  # ff_proj, up_proj, ff_out (layer and head)


def _to_hf(name: str, w: np.ndarray) -> np.ndarray:
    """Inverse of `_to_ours` for one layer's tensor."""
    if w.ndim == 1 or name == "wte":
        return w
    if name in ("q_proj", "k_proj", "v_proj"):
        return w.reshape(w.shape[0], -1).T
    if name == "attn_out":
        return w.reshape(-1, w.shape[-1]).T
    return w.T


def _hf_shape(name: str, cfg: ModelConfig) -> tuple[int, ...]:
    d, m, v = cfg.d_model, cfg.mlp_hidden_size, cfg.vocab_size
    kv = cfg.n_kv_heads * cfg.head_dim
    return {
        "wte": (v, d), "ln_f": (d,), "head": (v, d),
        "attn_norm": (d,), "ff_norm": (d,), "q_proj": (d, d), "k_proj": (kv, d), "v_proj": (kv, d),
        "attn_out": (d, d), "ff_proj": (m, d), "up_proj": (m, d), "ff_out": (d, m),
    }[name]


def _hf_names(cfg: ModelConfig) -> Iterator[tuple[tuple[str, ...], str, str]]:
    """(our path, HF name, shape key) for every tensor, in the release's order."""
    yield ("wte",), PREFIX + "wte.weight", "wte"
    for i in range(cfg.n_layers):
        for p in _LAYER_PARAMS:
            yield ("layers", p, str(i)), f"{PREFIX}blocks.{i}.{p}.weight", p
    yield ("ln_f",), PREFIX + "ln_f.weight", "ln_f"
    if not cfg.weight_tying:
        yield ("ff_out",), PREFIX + "ff_out.weight", "head"


def config_from_hf(hf: dict, param_dtype: str | None = None, where: str = "config.json") -> ModelConfig:
    """Our ModelConfig from a HF LLaDA `config.json` dict."""
    def get(key, default=None):
        value = hf.get(key)
        return default if value is None else value

    n_heads = get("n_heads")
    vocab = get("embedding_size", get("vocab_size"))
    if n_heads is None or vocab is None or get("d_model") is None:
        raise ValueError(f"{where}: not a LLaDA config (needs d_model, n_heads, vocab_size/embedding_size)")
    torch_dtype = str(get("torch_dtype", "float32")).replace("torch.", "")
    defaults = ModelConfig()
    data = {
        "vocab_size": vocab,
        "d_model": get("d_model"),
        "n_layers": get("n_layers"),
        "n_heads": n_heads,
        "n_kv_heads": get("n_kv_heads", n_heads),
        "mlp_hidden_size": get("mlp_hidden_size", get("mlp_ratio", 4) * get("d_model")),
        "rope_theta": get("rope_theta", 10000.0),
        "rms_norm_eps": get("rms_norm_eps", get("layer_norm_eps", 1e-5)),
        "max_seq_len": get("max_sequence_length", 4096),
        "weight_tying": bool(get("weight_tying", False)),
        "mask_token_id": get("mask_token_id", defaults.mask_token_id),
        "bos_token_id": get("bos_token_id", defaults.bos_token_id),
        "eos_token_id": get("eos_token_id", defaults.eos_token_id),
        "eot_token_id": get("eot_token_id", defaults.eot_token_id),
        "pad_token_id": get("pad_token_id", get("eos_token_id", defaults.pad_token_id)),
        "param_dtype": param_dtype or (torch_dtype if torch_dtype in _NP_DTYPES else "float32"),
        "dtype": "bfloat16",
    }
    return ModelConfig.from_dict(data, where=where)


def config_to_hf(cfg: ModelConfig, torch_dtype: str) -> dict:
    """A HF LLaDA `config.json` dict for `cfg` (the keys the release's config carries)."""
    return {
        "architectures": ["LLaDAModelLM"],
        "model_type": "llada",
        "activation_type": "silu",
        "alibi": False,
        "attention_layer_norm": False,
        "block_type": "llama",
        "include_bias": False,
        "include_qkv_bias": False,
        "layer_norm_type": "rms",
        "rope": True,
        "d_model": cfg.d_model,
        "n_layers": cfg.n_layers,
        "n_heads": cfg.n_heads,
        "n_kv_heads": cfg.n_kv_heads,
        "mlp_hidden_size": cfg.mlp_hidden_size,
        "vocab_size": cfg.vocab_size,
        "embedding_size": cfg.vocab_size,
        "rope_theta": cfg.rope_theta,
        "rms_norm_eps": cfg.rms_norm_eps,
        "max_sequence_length": cfg.max_seq_len,
        "weight_tying": cfg.weight_tying,
        "mask_token_id": cfg.mask_token_id,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "pad_token_id": cfg.pad_token_id,
        "eot_token_id": cfg.eot_token_id,
        "torch_dtype": _TORCH_DTYPES[torch_dtype],
        "use_cache": False,
    }


def _weight_map(path: Path) -> dict[str, str]:
    index = path / INDEX_FILE
    if index.is_file():
        with open(index) as f:
            weight_map = json.load(f).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index}: no 'weight_map' mapping")
        for shard in sorted(set(weight_map.values())):
            if not (path / shard).is_file():
                raise FileNotFoundError(f"{path}: shard '{shard}' named in {INDEX_FILE} is missing")
        return weight_map
    single = path / SINGLE_FILE
    if single.is_file():
        from safetensors import safe_open

        with safe_open(single, "np") as f:
            return {name: SINGLE_FILE for name in f.keys()}
    raise FileNotFoundError(f"{path}: neither {INDEX_FILE} nor {SINGLE_FILE} found")


class _ShardReader:
    """Opens each shard once (memory-mapped) and reads tensors by name."""

    def __init__(self, path: Path, weight_map: dict[str, str]):
        self.path, self.weight_map, self.handles = path, weight_map, {}

    def get(self, name: str, expected: tuple[int, ...]) -> np.ndarray:
        from safetensors import safe_open

        shard = self.weight_map.get(name)
        if shard is None:
            raise KeyError(f"{self.path}: tensor '{name}' is missing from the checkpoint")
        if shard not in self.handles:
            self.handles[shard] = safe_open(self.path / shard, "np")
        handle = self.handles[shard]
        shape = tuple(handle.get_slice(name).get_shape())
        if shape != tuple(expected):
            raise ValueError(
                f"{self.path / shard}: tensor '{name}' has shape {shape}, but config.json implies {tuple(expected)}"
            )
        return handle.get_tensor(name)


def load_hf_checkpoint(path: str | Path, *, shardings: Any = None, param_dtype: str | None = None,
                       dtype: str | None = None) -> tuple[ModelConfig, Any]:
    """Read a HF LLaDA directory into `(ModelConfig, params)`, streaming tensor by tensor.

    `shardings`: a pytree like the params of `jax.sharding.Sharding`s (or a callable
    `(path_tuple) -> Sharding`); each parameter is placed straight onto it. `param_dtype`
    defaults to the checkpoint's `torch_dtype`; `dtype` (compute) defaults to bfloat16.
    """
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{path}: no config.json (not a Hugging Face LLaDA directory)")
    with open(config_file) as f:
        cfg = config_from_hf(json.load(f), param_dtype, where=str(config_file))
    if dtype is not None:
        cfg = cfg.replace(dtype=dtype)
    reader = _ShardReader(path, _weight_map(path))
    target = _NP_DTYPES[cfg.param_dtype]

    def place(value: np.ndarray, our_path: tuple[str, ...]):
        sharding = None
        if callable(shardings):
            sharding = shardings(our_path)
        elif shardings is not None:
            node = shardings
            for key in our_path:
                node = node[key]
            sharding = node
        return jax.device_put(value, sharding) if sharding is not None else jax.device_put(value)

    params: dict[str, Any] = {"layers": {}}
    for name in ("wte", "ln_f") + (() if cfg.weight_tying else ("head",)):
        hf_name = PREFIX + ("ff_out" if name == "head" else name) + ".weight"
        ours = "ff_out" if name == "head" else name
        w = _to_ours(name if name != "head" else "ff_out", reader.get(hf_name, _hf_shape(name, cfg)), cfg)
        params[ours] = place(np.ascontiguousarray(w, dtype=target), (ours,))
        del w
    for p in _LAYER_PARAMS:
        buffer = None
        for i in range(cfg.n_layers):
            w = _to_ours(p, reader.get(f"{PREFIX}blocks.{i}.{p}.weight", _hf_shape(p, cfg)), cfg)
            if buffer is None:
                buffer = np.empty((cfg.n_layers,) + w.shape, dtype=target)
            buffer[i] = w
            del w
        params["layers"][p] = place(buffer, ("layers", p))
        del buffer
    return cfg, params


def save_hf_checkpoint(path: str | Path, cfg: ModelConfig, params: Any, *, dtype: str | None = None,
                       max_shard_bytes: int = 5 * 1024**3) -> list[Path]:
    """Write `params` in the HF LLaDA layout: config.json, safetensors shards and their index.

    `dtype` defaults to the params' dtype. Shards hold at most `max_shard_bytes` each (one file
    `model.safetensors` when everything fits). Returns the shard paths.
    """
    from safetensors.numpy import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    dtype = dtype or str(np.dtype(params["wte"].dtype))
    if dtype not in _NP_DTYPES:
        raise ValueError(f"save_hf_checkpoint: dtype '{dtype}' is not one of {', '.join(_NP_DTYPES)}")
    target = _NP_DTYPES[dtype]
    itemsize = np.dtype(target).itemsize

    def tensor(our_path: tuple[str, ...], shape_key: str) -> np.ndarray:
        if our_path[0] == "layers":
            w = np.asarray(jax.device_get(params["layers"][our_path[1]][int(our_path[2])]))
            return _to_hf(our_path[1], w)
        w = np.asarray(jax.device_get(params[our_path[0]]))
        return _to_hf("head" if our_path[0] == "ff_out" else our_path[0], w)

    entries = list(_hf_names(cfg))
    shards: list[list[tuple]] = [[]]
    size = 0
    for entry in entries:
        nbytes = math.prod(_hf_shape(entry[2], cfg)) * itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(entry)
        size += nbytes

    n = len(shards)
    files, weight_map, total = [], {}, 0
    for k, group in enumerate(shards, start=1):
        name = SINGLE_FILE if n == 1 else f"model-{k:05d}-of-{n:05d}.safetensors"
        data = {}
        for our_path, hf_name, shape_key in group:
            w = np.ascontiguousarray(tensor(our_path, shape_key), dtype=target)
            if w.shape != _hf_shape(shape_key, cfg):
                raise ValueError(f"param {'/'.join(our_path)} has HF shape {w.shape}, expected {_hf_shape(shape_key, cfg)}")
            data[hf_name] = w
            weight_map[hf_name] = name
            total += w.nbytes
        save_file(data, str(path / name), metadata={"format": "pt"})
        files.append(path / name)
        del data
    if n > 1:
        with open(path / INDEX_FILE, "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    elif (path / INDEX_FILE).exists():
        (path / INDEX_FILE).unlink()
    with open(path / "config.json", "w") as f:
        json.dump(config_to_hf(cfg, dtype), f, indent=2)
    return files


def hf_param_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """HF tensor name -> shape, for tests and tooling that write checkpoints by hand."""
    return {hf_name: _hf_shape(key, cfg) for _, hf_name, key in _hf_names(cfg)}

