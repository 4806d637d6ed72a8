"""llada-jax: the LLaDA masked diffusion language model in JAX/Flax."""

from llada_jax.config.platforms import skip_absent_tpu

skip_absent_tpu()  # before any JAX backend starts: no TPU probe (and its warnings) where there is no TPU

from llada_jax.config import ConfigError, ModelConfig, SampleConfig, load_config
from llada_jax.model.diffusion import forward_process, pretrain_loss, sft_forward_process, sft_loss
from llada_jax.model.transformer import forward, init_params
from llada_jax.io.hf import load_hf_checkpoint, save_hf_checkpoint
from llada_jax.inference.sampling import GenerateResult, generate, generate_with_stats
from llada_jax.io.tokenizer import check_tokenizer_matches, load_tokenizer, train_tokenizer
from llada_jax.inference.likelihood import log_likelihood, log_likelihood_batch
from llada_jax.evaluation.tasks import load_task
from llada_jax.config import MeshConfig, TrainConfig
from llada_jax.model.sharding import make_mesh, param_shardings
from llada_jax.training.step import TrainState, init_state, make_train_step
from llada_jax.training.loop import run_training
from llada_jax.training.checkpointer import export_checkpoint

__version__ = "0.1.0"
