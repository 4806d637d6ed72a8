"""Hugging Face LLaDA checkpoints (GSAI-ML/LLaDA-8B-*) to and from our params (docs/semantics.md, The model).

HF stores linear weights `[out, in]` with names `model.transformer.blocks.{i}.q_proj.weight`,
...; we store `[in, ...out]` kernels with the layers stacked on axis 0. Loading streams one
parameter at a time: a stacked parameter is assembled in one host buffer, put on its device
(or sharding) and freed before the next, so the host never holds two copies of the model.

Directories may be local or on a bucket (`llada_jax.io.paths`): safetensors files are read by
byte range through a file object (`SafetensorsFile`, which also refuses a truncated or damaged
file with one line naming it) and written whole from bytes.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any, Iterator

import jax
import ml_dtypes
import numpy as np

from llada_jax.config import ModelConfig
from llada_jax.io.paths import PathLike, as_path, is_file, path_str, write_bytes, write_text

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


_ST_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16, "F64": np.float64,
              "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


class SafetensorsFile:
    """One .safetensors file, local or remote, read by byte range: the header is checked against
    the file size on open, so a truncated or damaged file is a ValueError naming it."""

    def __init__(self, path: PathLike):
        self.path = as_path(path)
        where = path_str(self.path)
        size = self.path.stat().length
        with self.path.open("rb") as f:
            head = f.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else None
            if n is None or n > size - 8:
                raise ValueError(f"{where}: truncated or not a safetensors file ({size} bytes)")
            try:
                header = json.loads(f.read(n))
            except (ValueError, UnicodeDecodeError):
                raise ValueError(f"{where}: damaged safetensors header") from None
        header.pop("__metadata__", None)
        self._start = 8 + n
        self.tensors = header
        for name, t in header.items():
            begin, end = t["data_offsets"]
            if t.get("dtype") not in _ST_DTYPES or end - begin != math.prod(t["shape"]) * np.dtype(_ST_DTYPES[t["dtype"]]).itemsize:
                raise ValueError(f"{where}: tensor '{name}' has a damaged header entry")
            if self._start + end > size:
                raise ValueError(f"{where}: truncated ({size} bytes; tensor '{name}' ends at byte {self._start + end})")

    def keys(self) -> list[str]:
        return list(self.tensors)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.tensors[name]["shape"])

    def get(self, name: str) -> np.ndarray:
        t = self.tensors[name]
        begin, end = t["data_offsets"]
        with self.path.open("rb") as f:
            f.seek(self._start + begin)
            raw = f.read(end - begin)
        if len(raw) != end - begin:
            raise ValueError(f"{path_str(self.path)}: truncated while reading tensor '{name}'")
        return np.frombuffer(raw, dtype=_ST_DTYPES[t["dtype"]]).reshape(t["shape"])


def _weight_map(path) -> dict[str, str]:
    index = path / INDEX_FILE
    if is_file(index):
        try:
            weight_map = json.loads(index.read_text()).get("weight_map")
        except ValueError:
            raise ValueError(f"{path_str(index)}: not valid JSON") from None
        if not isinstance(weight_map, dict):
            raise ValueError(f"{path_str(index)}: no 'weight_map' mapping")
        for shard in sorted(set(weight_map.values())):
            if not is_file(path / shard):
                raise FileNotFoundError(f"{path_str(path)}: shard '{shard}' named in {INDEX_FILE} is missing")
        return weight_map
    single = path / SINGLE_FILE
    if is_file(single):
        return {name: SINGLE_FILE for name in SafetensorsFile(single).keys()}
    raise FileNotFoundError(f"{path_str(path)}: neither {INDEX_FILE} nor {SINGLE_FILE} found")


class _ShardReader:
    """Opens each shard once (header checked) and reads tensors by name."""

    def __init__(self, path, weight_map: dict[str, str]):
        self.path, self.weight_map = path, weight_map
        self.handles = {shard: SafetensorsFile(path / shard) for shard in sorted(set(weight_map.values()))}

    def get(self, name: str, expected: tuple[int, ...]) -> np.ndarray:
        shard = self.weight_map.get(name)
        if shard is None:
            raise KeyError(f"{path_str(self.path)}: tensor '{name}' is missing from the checkpoint")
        handle = self.handles[shard]
        if name not in handle.tensors:
            raise KeyError(f"{path_str(self.path / shard)}: tensor '{name}' named in {INDEX_FILE} is missing")
        shape = handle.shape(name)
        if shape != tuple(expected):
            raise ValueError(
                f"{path_str(self.path / shard)}: tensor '{name}' has shape {shape}, but config.json implies {tuple(expected)}"
            )
        return handle.get(name)


def read_hf_config(path: PathLike, param_dtype: str | None = None) -> ModelConfig:
    """The ModelConfig of a HF LLaDA directory's `config.json` (a damaged file: ValueError naming it)."""
    config_file = as_path(path) / "config.json"
    if not is_file(config_file):
        raise FileNotFoundError(f"{path_str(path)}: no config.json (not a Hugging Face LLaDA directory)")
    try:
        hf = json.loads(config_file.read_text())
    except ValueError as e:
        raise ValueError(f"{path_str(config_file)}: not valid JSON ({e})") from None
    return config_from_hf(hf, param_dtype, where=path_str(config_file))


def load_hf_checkpoint(path: PathLike, *, shardings: Any = None, param_dtype: str | None = None,
                       dtype: str | None = None) -> tuple[ModelConfig, Any]:
    """Read a HF LLaDA directory into `(ModelConfig, params)`, streaming tensor by tensor.

    `shardings`: a pytree like the params of `jax.sharding.Sharding`s (or a callable
    `(path_tuple) -> Sharding`); each parameter is placed straight onto it. `param_dtype`
    defaults to the checkpoint's `torch_dtype`; `dtype` (compute) defaults to bfloat16.
    """
    path = as_path(path)
    cfg = read_hf_config(path, param_dtype)
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


def save_hf_checkpoint(path: PathLike, cfg: ModelConfig, params: Any, *, dtype: str | None = None,
                       max_shard_bytes: int = 5 * 1024**3) -> list:
    """Write `params` in the HF LLaDA layout: config.json, safetensors shards and their index.

    `dtype` defaults to the params' dtype. Shards hold at most `max_shard_bytes` each (one file
    `model.safetensors` when everything fits). Returns the shard paths.
    """
    from safetensors.numpy import save

    path = as_path(path)
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
        write_bytes(path / name, save(data, metadata={"format": "pt"}))
        files.append(path / name)
        del data
    if n > 1:
        write_text(path / INDEX_FILE, json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    elif (path / INDEX_FILE).exists():
        (path / INDEX_FILE).unlink()
    write_text(path / "config.json", json.dumps(config_to_hf(cfg, dtype), indent=2))
    return files


def hf_param_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """HF tensor name -> shape, for tests and tooling that write checkpoints by hand."""
    return {hf_name: _hf_shape(key, cfg) for _, hf_name, key in _hf_names(cfg)}

