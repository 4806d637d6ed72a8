"""llada-jax: the LLaDA masked diffusion language model in JAX/Flax.

The public names below are imported on first use (PEP 562), so `import llada_jax` and the
`llada-jax` command start without importing JAX: a command can install its SIGTERM handler
before any slow import.
"""

from llada_jax.config.platforms import skip_absent_tpu

skip_absent_tpu()  # before any JAX backend starts: no TPU probe (and its warnings) where there is no TPU

import importlib

# Public name -> the module that defines it.
_API = {
    "ConfigError": "llada_jax.config", "ModelConfig": "llada_jax.config", "SampleConfig": "llada_jax.config",
    "load_config": "llada_jax.config", "MeshConfig": "llada_jax.config", "TrainConfig": "llada_jax.config",
    "forward_process": "llada_jax.model.diffusion", "pretrain_loss": "llada_jax.model.diffusion",
    "sft_forward_process": "llada_jax.model.diffusion", "sft_loss": "llada_jax.model.diffusion",
    "forward": "llada_jax.model.transformer", "init_params": "llada_jax.model.transformer",
    "load_hf_checkpoint": "llada_jax.io.hf", "save_hf_checkpoint": "llada_jax.io.hf",
    "GenerateResult": "llada_jax.inference.sampling", "generate": "llada_jax.inference.sampling",
    "generate_with_stats": "llada_jax.inference.sampling",
    "check_tokenizer_matches": "llada_jax.io.tokenizer", "load_tokenizer": "llada_jax.io.tokenizer",
    "train_tokenizer": "llada_jax.io.tokenizer",
    "log_likelihood": "llada_jax.inference.likelihood", "log_likelihood_batch": "llada_jax.inference.likelihood",
    "load_task": "llada_jax.evaluation.tasks",
    "make_mesh": "llada_jax.model.sharding", "param_shardings": "llada_jax.model.sharding",
    "TrainState": "llada_jax.training.step", "init_state": "llada_jax.training.step",
    "make_train_step": "llada_jax.training.step",
    "run_training": "llada_jax.training.loop",
    "export_checkpoint": "llada_jax.io.run_checkpoint",
}

__all__ = sorted(_API)
__version__ = "0.1.0"


def __getattr__(name: str):
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'llada_jax' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + list(_API))
