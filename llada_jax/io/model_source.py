"""Where a model comes from: a training run folder, a params export or a Hugging Face directory.

Every `--checkpoint` (generate, eval, sweep, likelihood, lm-eval's `checkpoint=`) and
`train.init_from` names one of three kinds of directory:

- a training run folder (`train.checkpoint_dir`: Orbax steps of `TrainCheckpointer` and
  `config.yaml`): its latest step, or the step `N` of `RUN@N`; only the params of the train
  state are read (no optimizer state);
- a llada-jax params export (`config.yaml` + `params/`, `llada-jax export`);
- a Hugging Face LLaDA directory (`config.json` + `*.safetensors`).

`resolve_source` tells them apart (one-line errors for anything else, or for a step that the
run does not hold); the run's and the export's `config.yaml` give the sampler settings and
the tokenizer (`train.tokenizer`) the same way for both.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import jax
from etils import epath

from llada_jax.config import Config, ModelConfig, SampleConfig
from llada_jax.io.checkpoint import CONFIG_FILE, PARAMS_DIR, is_hf_dir, read_config
from llada_jax.io.paths import PathLike, as_path, is_file, path_str

KINDS = ("run", "export", "hf")


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """A resolved `--checkpoint`: its kind, directory and (for a run) the step to load."""

    kind: str                # "run" | "export" | "hf"
    path: epath.Path
    step: int | None = None  # the run's step; None for an export or a HF directory

    def __str__(self) -> str:
        return f"{path_str(self.path)}@{self.step}" if self.kind == "run" else path_str(self.path)


def split_step(checkpoint: PathLike) -> tuple[epath.Path, int | None]:
    """`RUN@STEP` -> (RUN, STEP); any other path (also an existing one containing '@') -> (path, None)."""
    text = str(checkpoint)
    match = re.fullmatch(r"(.+)@(\d+)", text)
    if match is None or as_path(text).exists():
        return as_path(text), None
    return as_path(match.group(1)), int(match.group(2))


def run_steps(run_dir: PathLike) -> list[int]:
    """The finished checkpoint steps of a training run folder, ascending (empty when none)."""
    import orbax.checkpoint as ocp

    return sorted(int(s) for s in ocp.path.step.checkpoint_steps(as_path(run_dir)))


def has_step_dirs(path: epath.Path) -> bool:
    """Whether `path` holds numbered step folders (finished or not), as a training run folder does."""
    return any(p.is_dir() and p.name.split(".")[0].isdigit() for p in path.iterdir())


def resolve_source(checkpoint: PathLike | ModelSource) -> ModelSource:
    """The kind of `checkpoint` and, for a run, the step (latest unless `@STEP`); one-line errors."""
    if isinstance(checkpoint, ModelSource):
        return checkpoint
    path, step = split_step(checkpoint)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint {path_str(path)} does not exist" if not path.exists()
                                else f"checkpoint {path_str(path)} is a file, not a directory")
    if is_hf_dir(path):
        kind = "hf"
    elif is_file(path / CONFIG_FILE) and (path / PARAMS_DIR).is_dir():
        kind = "export"
    elif is_file(path / CONFIG_FILE) and has_step_dirs(path):
        kind = "run"
    else:
        raise FileNotFoundError(
            f"{path}: not a model checkpoint; expected a training run folder ({CONFIG_FILE} + step folders), "
            f"a llada-jax params export ({CONFIG_FILE} + {PARAMS_DIR}/) or a Hugging Face LLaDA directory "
            f"(config.json + *.safetensors)")
    if kind != "run":
        if step is not None:
            raise ValueError(f"{checkpoint}: @{step} names a training step, but {path} is a "
                             f"{'params export' if kind == 'export' else 'Hugging Face directory'}, not a run folder")
        return ModelSource(kind, path)
    steps = run_steps(path)
    if not steps:
        raise FileNotFoundError(f"{path}: training run folder without a finished checkpoint step")
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise FileNotFoundError(f"{path}: no checkpoint step {step}; steps saved: {', '.join(map(str, steps))}")
    return ModelSource("run", path, step)


def source_config(checkpoint) -> Config | None:
    """The resolved config saved with a run or an export; None for a HF directory."""
    source = resolve_source(checkpoint)
    return None if source.kind == "hf" else read_config(source.path)


def source_model_config(checkpoint) -> ModelConfig:
    """The `ModelConfig` of any kind of checkpoint, without reading weights."""
    source = resolve_source(checkpoint)
    if source.kind == "hf":
        from llada_jax.io.checkpoint import read_model_config

        return read_model_config(source.path)
    return read_config(source.path).model


def source_sample(checkpoint) -> SampleConfig:
    """The sampler settings saved with a run or an export; the defaults for a HF directory."""
    config = source_config(checkpoint)
    return config.sample if config is not None else SampleConfig()


def source_tokenizer(checkpoint, tokenizer=None):
    """`tokenizer` if given, else one in the checkpoint directory, else its config's `train.tokenizer`."""
    from llada_jax.io.tokenizer import load_tokenizer

    if tokenizer is not None:
        return load_tokenizer(tokenizer)
    source = resolve_source(checkpoint)
    try:
        return load_tokenizer(source.path)
    except FileNotFoundError:
        pass
    config = source_config(source)
    path = config.train.tokenizer if config is not None else None
    if path:
        return load_tokenizer(path)
    raise FileNotFoundError(f"{source.path}: no tokenizer found in the directory or its config; pass one explicitly")


def load_model(checkpoint, shardings=None, param_dtype: str | None = None) -> tuple[ModelConfig, Any]:
    """`(ModelConfig, params)` of a run's step, a params export or a HF directory, optionally
    straight onto `shardings` and in another storage dtype."""
    source = resolve_source(checkpoint)
    if source.kind != "run":
        from llada_jax.io.checkpoint import load_model as load_model_dir

        return load_model_dir(source.path, shardings=shardings, param_dtype=param_dtype)
    from llada_jax.io.checkpoint import abstract_params
    from llada_jax.io.run_checkpoint import TrainCheckpointer

    config = read_config(source.path)
    target = abstract_params(config.model, shardings)  # as saved: the fingerprints are of the saved arrays
    ckpt = TrainCheckpointer(source.path, config, async_save=False)
    try:
        pinned = isinstance(checkpoint, ModelSource) or split_step(checkpoint)[1] is not None
        # RUN@STEP: that step, or an error naming it; a bare run folder: its newest step that verifies
        params = ckpt.restore_params(source.step, target) if pinned else latest_good_params(ckpt, target)
    finally:
        ckpt.close()
    if param_dtype is None or param_dtype == config.model.param_dtype:
        return config.model, params
    cfg = config.model.replace(param_dtype=param_dtype)
    return cfg, jax.tree.map(lambda x: x.astype(param_dtype), params)


def latest_good_params(ckpt, target_params):
    """The params of the newest step that reads and verifies (a damaged newer step is passed over)."""
    from llada_jax.io.run_checkpoint import CheckpointDamagedError

    failures = []
    for step in reversed(ckpt.all_steps()):
        try:
            return ckpt.restore_params(step, target_params)
        except CheckpointDamagedError as e:
            failures.append(str(e))
    raise CheckpointDamagedError(f"no checkpoint in {path_str(ckpt.directory)} verifies: " + " | ".join(failures))
