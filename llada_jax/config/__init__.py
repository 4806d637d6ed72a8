"""Configuration: frozen, validated dataclass sections (model, sample, train, mesh, data) and YAML loading.

The bottom layer: imports nothing else of llada_jax. `base` holds the dataclass machinery
(typed `from_dict`, did-you-mean errors, field checks), `sections` the sections and `load_config`.
"""

from llada_jax.config.base import NONE_WORDS, ConfigBase, ConfigError, did_you_mean
from llada_jax.config.sections import (ATTENTION_IMPLS, CACHES, DATA_FORMATS, DECAY_SHAPES, DTYPES, GRPO_REWARDS,
                                       OBJECTIVES, REFERENCE_OBJECTIVES, REMASKING, REMAT_POLICIES, SAMPLE_FIELDS,
                                       SECTIONS, THRESHOLD_REMASKING, VRPO_ALLOCATIONS, Config, DataConfig, GrpoConfig,
                                       MeshConfig, ModelConfig, SampleConfig, Section, TrainConfig, VrpoConfig,
                                       config_from_dict, load_config, section_of)

__all__ = ["NONE_WORDS", "ConfigBase", "ConfigError", "did_you_mean", "ATTENTION_IMPLS", "CACHES", "DATA_FORMATS",
           "DECAY_SHAPES", "DTYPES", "OBJECTIVES", "REMASKING", "REMAT_POLICIES", "SAMPLE_FIELDS", "SECTIONS",
           "THRESHOLD_REMASKING", "Config", "DataConfig", "MeshConfig", "ModelConfig", "SampleConfig", "Section",
           "TrainConfig", "config_from_dict", "load_config", "section_of", "GRPO_REWARDS", "REFERENCE_OBJECTIVES",
           "VRPO_ALLOCATIONS", "GrpoConfig", "VrpoConfig"]
