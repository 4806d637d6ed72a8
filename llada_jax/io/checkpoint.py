"""Orbax checkpoints: a params-only export for sampling, and loading any model directory.

A params export is a directory holding `config.yaml` (the resolved config, all sections) and
`params/` (an Orbax StandardCheckpointer pytree). `load_model` also accepts a Hugging Face
LLaDA directory (config.json + safetensors), so every command takes either. Every path may be
local or on a bucket (`gs://...`, through `llada_jax.io.paths`).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import yaml

from llada_jax.config import Config, ConfigError, ModelConfig, config_from_dict, load_config
from llada_jax.io.paths import PathLike, as_path, is_file, path_str, write_text

PARAMS_DIR = "params"
CONFIG_FILE = "config.yaml"


def quiet_abandoned_reads() -> None:
    """Drop the reports of Orbax reads abandoned after another read of the same checkpoint failed.

    When one array of a damaged checkpoint fails to read, Orbax stops waiting for the others:
    tensorstore reads still in flight complete into Orbax's closed event loop ("Event loop is
    closed"), and read coroutines never resumed are closed when collected, which Orbax turns into
    "Encountered error while reading array index" from the GeneratorExit. Python reports each as
    an unraisable exception: dozens of tracebacks around the one error that says what failed.
    Installed once per process, before reading; every other unraisable exception still reaches
    the previous hook. asyncio's report of such a read task's unretrieved exception is dropped too.
    """
    previous = sys.unraisablehook
    if getattr(previous, "quiets_abandoned_reads", False):
        return

    def hook(unraisable):
        if not is_abandoned_read_report(unraisable):
            previous(unraisable)

    hook.quiets_abandoned_reads = True
    sys.unraisablehook = hook
    logging.getLogger("asyncio").addFilter(_drop_abandoned_read_tasks)


def _drop_abandoned_read_tasks(record: logging.LogRecord) -> bool:
    """asyncio's "Task exception was never retrieved" for a read Orbax abandoned the same way (its
    error is the one already reported): dropped; every other asyncio record passes.

    Such a task runs an Orbax coroutine, or wraps a tensorstore future directly (then only its
    error, a tensorstore error carrying its `tensorstore_spec`, says where it came from).
    """
    message = record.getMessage()
    if not message.startswith("Task exception was never retrieved"):
        return True
    error = record.exc_info[1] if record.exc_info else None
    from_orbax = f"{os.sep}orbax{os.sep}" in message
    from_tensorstore = error is not None and "[tensorstore_spec=" in str(error)
    return not (from_orbax or from_tensorstore)


def is_abandoned_read_report(unraisable) -> bool:
    """Whether an unraisable report (`sys.UnraisableHookArgs`) comes from an abandoned Orbax read."""
    error = unraisable.exc_value
    if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
        return True
    code = getattr(unraisable.object, "cr_code", None)  # a coroutine closed while suspended
    return (code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename
            and isinstance(getattr(error, "__cause__", None), GeneratorExit))


def abstract_params(cfg: ModelConfig, shardings=None):
    """Shapes and dtypes of `cfg`'s params (with `shardings` when given): a restore target."""
    from llada_jax.model.transformer import param_shapes
    from llada_jax.model.sharding import with_shardings

    shapes = param_shapes(cfg)
    return shapes if shardings is None else with_shardings(shapes, shardings)


def write_config(path: PathLike, config: Config) -> None:
    """`config.yaml` (all sections) in `path`, as `read_config` reads it (written whole)."""
    write_text(as_path(path) / CONFIG_FILE, yaml.safe_dump(config.to_dict(), sort_keys=False))


def save_params(path: PathLike, config: Config | ModelConfig, params: Any):
    """Write `params` and the config to `path` (created; an existing export is replaced)."""
    import orbax.checkpoint as ocp

    path = as_path(path)
    path.mkdir(parents=True, exist_ok=True)
    write_config(path, config if isinstance(config, Config) else load_config(None).replace(model=config))
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(path / PARAMS_DIR, params, force=True)
    checkpointer.wait_until_finished()
    return path


def read_config(path: PathLike) -> Config:
    """The resolved config stored next to a params export or a training checkpoint; a damaged
    file is a ConfigError naming it (and the line and column of a YAML error)."""
    from llada_jax.config.sections import parse_yaml_text

    file = as_path(path) / CONFIG_FILE
    if not is_file(file):
        raise ConfigError(f"{path_str(path)}: no {CONFIG_FILE} (not a llada-jax checkpoint directory)")
    data = parse_yaml_text(file.read_text(), path_str(file))
    if not isinstance(data, dict):
        raise ConfigError(f"{path_str(file)}: expected a mapping at the top level")
    try:
        return config_from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{path_str(file)}: {e}") from None


def load_params(path: PathLike, shardings=None, param_dtype: str | None = None):
    """Restore `(config, params)` from a params export, optionally straight onto `shardings`
    and in another storage dtype."""
    import orbax.checkpoint as ocp

    path = as_path(path)
    config = read_config(path)
    cfg = config.model if param_dtype is None else config.model.replace(param_dtype=param_dtype)
    if not (path / PARAMS_DIR).is_dir():
        raise FileNotFoundError(f"{path_str(path)}: missing the '{PARAMS_DIR}/' directory of a params export")
    target = abstract_params(cfg, shardings)
    checkpointer = ocp.StandardCheckpointer()
    quiet_abandoned_reads()
    try:
        params = checkpointer.restore(path / PARAMS_DIR, target)
    except (ValueError, KeyError) as e:
        raise ValueError(f"{path_str(path)}: parameters do not match the model config: {str(e).splitlines()[0]}") from None
    except Exception as e:  # a missing, truncated or damaged array file
        raise ValueError(f"{path_str(path)}: params export unreadable ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:200]})") from None
    return config.replace(model=cfg), params


def is_hf_dir(path: PathLike) -> bool:
    path = as_path(path)
    return is_file(path / "config.json") and any(path.glob("*.safetensors"))


def _not_a_model_dir(path) -> FileNotFoundError:
    return FileNotFoundError(
        f"{path_str(path)}: neither a Hugging Face LLaDA directory (config.json + *.safetensors) nor a "
        f"llada-jax export ({CONFIG_FILE} + {PARAMS_DIR}/)"
    )


def read_model_config(path: PathLike) -> ModelConfig:
    """The `ModelConfig` of a HF LLaDA directory or a llada-jax export, without loading weights."""
    path = as_path(path)
    if is_hf_dir(path):
        from llada_jax.io.hf import read_hf_config

        return read_hf_config(path)
    if is_file(path / CONFIG_FILE):
        return read_config(path).model
    raise _not_a_model_dir(path)


def load_model(path: PathLike, shardings=None, param_dtype: str | None = None) -> tuple[ModelConfig, Any]:
    """`(ModelConfig, params)` from a HF LLaDA directory or a llada-jax params export."""
    path = as_path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint directory {path_str(path)} does not exist")
    if is_hf_dir(path):
        from llada_jax.io.hf import load_hf_checkpoint

        return load_hf_checkpoint(path, shardings=shardings, param_dtype=param_dtype)
    if is_file(path / CONFIG_FILE) and (path / PARAMS_DIR).is_dir():
        config, params = load_params(path, shardings, param_dtype)
        return config.model, params
    raise _not_a_model_dir(path)
