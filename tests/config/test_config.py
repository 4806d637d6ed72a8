"""Config loading, overrides and validation messages."""

import dataclasses

import pytest

from llada_jax.config import ConfigError, ModelConfig, SampleConfig, load_config
from conftest import REPO


def test_llada_8b_preset_is_the_release_architecture():
    cfg = ModelConfig.from_yaml(REPO / "configs" / "llada-8b.yaml")
    assert (cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.mlp_hidden_size) == (4096, 32, 32, 32, 12288)
    assert (cfg.vocab_size, cfg.rope_theta, cfg.rms_norm_eps, cfg.max_seq_len) == (126464, 500000.0, 1e-5, 4096)
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.mask_token_id, cfg.eot_token_id) == (126080, 126081, 126336, 126348)
    assert not cfg.weight_tying
    assert abs(cfg.num_params() - 8.02e9) < 0.01e9


def test_1b_preset():
    cfg = ModelConfig.from_yaml(REPO / "configs" / "llada-1b.yaml")
    assert (cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.mlp_hidden_size, cfg.vocab_size) == (2048, 16, 16, 5632, 126464)


def test_dotted_overrides_and_types(tmp_path):
    config = load_config(REPO / "configs" / "tiny.yaml", ["model.n_layers=4", "model.dtype=bfloat16", "sample.threshold=0.9"])
    assert config.model.n_layers == 4 and config.model.dtype == "bfloat16"
    assert config.sample.threshold == 0.9
    assert load_config(REPO / "configs" / "tiny.yaml", ["n_layers=3"]).model.n_layers == 3
    with pytest.raises(ConfigError, match=r"model.n_layers: expected an integer, got 'two'"):
        load_config(REPO / "configs" / "tiny.yaml", ["model.n_layers=two"])


def test_configs_are_frozen_and_hashable(tiny_cfg):
    with pytest.raises(dataclasses.FrozenInstanceError):
        tiny_cfg.d_model = 3
    assert hash(tiny_cfg) == hash(tiny_cfg.replace())


@pytest.mark.parametrize("change, message", [
    ({"n_layer": 2}, r"unknown key 'n_layer' \(did you mean 'n_layers'\?\)"),
    ({"d_model": 100, "n_heads": 3}, r"d_model: 100 is not divisible by n_heads=3"),
    ({"n_heads": 4, "n_kv_heads": 3}, r"n_heads: 4 is not a multiple of n_kv_heads=3"),
    ({"mask_token_id": 600}, r"mask_token_id: 600 is outside the vocabulary \[0, 512\)"),
    ({"remat_policy": "ful"}, r"remat_policy: 'ful' is not one of .*did you mean 'full'"),
    ({"n_layers": 0}, r"n_layers: must be positive"),
])
def test_bad_model_config_names_the_field(tiny_cfg, change, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig.from_dict({**tiny_cfg.to_dict(), **change})


def test_unknown_section_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("modle:\n  d_model: 8\n")
    with pytest.raises(ConfigError, match=r"unknown section 'modle' \(did you mean 'model'\?\)"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_sample_config_rules():
    with pytest.raises(ConfigError, match="gen_length: 100 is not divisible by block_length=32"):
        SampleConfig.from_dict({"gen_length": 100})
    with pytest.raises(ConfigError, match=r"threshold: 1.5 is outside \(0, 1\]"):
        SampleConfig.from_dict({"threshold": 1.5})


def test_format_value_is_read_back_by_coerce():
    from typing import Optional

    from llada_jax.config.base import coerce, format_value

    assert [format_value(v) for v in (None, 0.9, 1e-4, 32, "low_confidence")] == \
        ["none", "0.9", "0.0001", "32", "low_confidence"]
    for value, annotation in ((None, Optional[float]), (0.9, float), (1e-4, float), (32, int), ("x", str)):
        assert coerce(format_value(value), annotation, "test") == value
