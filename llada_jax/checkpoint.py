"""Orbax checkpoints: a params-only export for sampling, and loading any model directory.

A params export is a directory holding `config.yaml` (the resolved config, all sections) and
`params/` (an Orbax StandardCheckpointer pytree). `load_model` also accepts a Hugging Face
LLaDA directory (config.json + safetensors), so every command takes either.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import yaml

from llada_jax.config import Config, ConfigError, ModelConfig, config_from_dict, load_config

PARAMS_DIR = "params"
CONFIG_FILE = "config.yaml"


def _abstract_params(cfg: ModelConfig, shardings=None):
    from llada_jax.model import param_shapes

    shapes = param_shapes(cfg)
    if shardings is None:
        return shapes
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)


def save_params(path: str | Path, config: Config | ModelConfig, params: Any) -> Path:
    """Write `params` and the config to `path` (created; an existing export is replaced)."""
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    path.mkdir(parents=True, exist_ok=True)
    full = config if isinstance(config, Config) else load_config(None).replace(model=config)
    with open(path / CONFIG_FILE, "w") as f:
        yaml.safe_dump(full.to_dict(), f, sort_keys=False)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(path / PARAMS_DIR, params, force=True)
    checkpointer.wait_until_finished()
    return path


def read_config(path: str | Path) -> Config:
    """The resolved config stored next to a params export or a training checkpoint."""
    path = Path(path)
    file = path / CONFIG_FILE
    if not file.is_file():
        raise ConfigError(f"{path}: no {CONFIG_FILE} (not a llada-jax checkpoint directory)")
    with open(file) as f:
        return config_from_dict(yaml.safe_load(f) or {})


def load_params(path: str | Path, shardings=None, model_config: ModelConfig | None = None):
    """Restore `(config, params)` from a params export, optionally straight onto `shardings`."""
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    config = read_config(path)
    cfg = model_config or config.model
    if not (path / PARAMS_DIR).is_dir():
        raise FileNotFoundError(f"{path}: missing the '{PARAMS_DIR}/' directory of a params export")
    target = _abstract_params(cfg, shardings)
    checkpointer = ocp.StandardCheckpointer()
    try:
        params = checkpointer.restore(path / PARAMS_DIR, target)
    except (ValueError, KeyError) as e:
        raise ValueError(f"{path}: parameters do not match the model config: {e}") from e
    return config.replace(model=cfg), params


def is_hf_dir(path: str | Path) -> bool:
    path = Path(path)
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def load_model(path: str | Path, shardings=None, param_dtype: str | None = None) -> tuple[ModelConfig, Any]:
    """`(ModelConfig, params)` from a HF LLaDA directory or a llada-jax params export."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint directory {path} does not exist")
    if is_hf_dir(path):
        from llada_jax.hf import load_hf_checkpoint

        return load_hf_checkpoint(path, shardings=shardings, param_dtype=param_dtype)
    if (path / CONFIG_FILE).is_file():
        config = read_config(path)
        cfg = config.model if param_dtype is None else config.model.replace(param_dtype=param_dtype)
        if (path / PARAMS_DIR).is_dir():
            restored, params = load_params(path, shardings, model_config=cfg)
            return restored.model, params
    raise FileNotFoundError(
        f"{path}: neither a Hugging Face LLaDA directory (config.json + *.safetensors) nor a "
        f"llada-jax export ({CONFIG_FILE} + {PARAMS_DIR}/)"
    )
