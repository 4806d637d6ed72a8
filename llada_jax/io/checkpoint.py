"""Orbax checkpoints: a params-only export for sampling, and loading any model directory.

A params export is a directory holding `config.yaml` (the resolved config, all sections) and
`params/` (an Orbax StandardCheckpointer pytree). `load_model` also accepts a Hugging Face
LLaDA directory (config.json + safetensors), so every command takes either.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from llada_jax.config import Config, ConfigError, ModelConfig, config_from_dict, load_config

PARAMS_DIR = "params"
CONFIG_FILE = "config.yaml"


def abstract_params(cfg: ModelConfig, shardings=None):
    """Shapes and dtypes of `cfg`'s params (with `shardings` when given): a restore target."""
    from llada_jax.model.transformer import param_shapes
    from llada_jax.model.sharding import with_shardings

    shapes = param_shapes(cfg)
    return shapes if shardings is None else with_shardings(shapes, shardings)


def write_config(path: Path, config: Config) -> None:
    """`config.yaml` (all sections) in `path`, as `read_config` reads it."""
    with open(Path(path) / CONFIG_FILE, "w") as f:
        yaml.safe_dump(config.to_dict(), f, sort_keys=False)


def save_params(path: str | Path, config: Config | ModelConfig, params: Any) -> Path:
    """Write `params` and the config to `path` (created; an existing export is replaced)."""
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    path.mkdir(parents=True, exist_ok=True)
    write_config(path, config if isinstance(config, Config) else load_config(None).replace(model=config))
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


def load_params(path: str | Path, shardings=None, param_dtype: str | None = None):
    """Restore `(config, params)` from a params export, optionally straight onto `shardings`
    and in another storage dtype."""
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    config = read_config(path)
    cfg = config.model if param_dtype is None else config.model.replace(param_dtype=param_dtype)
    if not (path / PARAMS_DIR).is_dir():
        raise FileNotFoundError(f"{path}: missing the '{PARAMS_DIR}/' directory of a params export")
    target = abstract_params(cfg, shardings)
    checkpointer = ocp.StandardCheckpointer()
    try:
        params = checkpointer.restore(path / PARAMS_DIR, target)
    except (ValueError, KeyError) as e:
        raise ValueError(f"{path}: parameters do not match the model config: {e}") from e
    return config.replace(model=cfg), params


def is_hf_dir(path: str | Path) -> bool:
    path = Path(path)
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def _not_a_model_dir(path: Path) -> FileNotFoundError:
    return FileNotFoundError(
        f"{path}: neither a Hugging Face LLaDA directory (config.json + *.safetensors) nor a "
        f"llada-jax export ({CONFIG_FILE} + {PARAMS_DIR}/)"
    )


def read_model_config(path: str | Path) -> ModelConfig:
    """The `ModelConfig` of a HF LLaDA directory or a llada-jax export, without loading weights."""
    path = Path(path)
    if is_hf_dir(path):
        from llada_jax.io.hf import config_from_hf

        with open(path / "config.json") as f:
            return config_from_hf(json.load(f), where=str(path / "config.json"))
    if (path / CONFIG_FILE).is_file():
        return read_config(path).model
    raise _not_a_model_dir(path)


def load_model(path: str | Path, shardings=None, param_dtype: str | None = None) -> tuple[ModelConfig, Any]:
    """`(ModelConfig, params)` from a HF LLaDA directory or a llada-jax params export."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint directory {path} does not exist")
    if is_hf_dir(path):
        from llada_jax.io.hf import load_hf_checkpoint

        return load_hf_checkpoint(path, shardings=shardings, param_dtype=param_dtype)
    if (path / CONFIG_FILE).is_file() and (path / PARAMS_DIR).is_dir():
        config, params = load_params(path, shardings, param_dtype)
        return config.model, params
    raise _not_a_model_dir(path)
