"""Hugging Face LLaDA checkpoints: round trip, hand-written layout, and bad checkpoints."""

import json

import jax
import numpy as np
import pytest
from safetensors.numpy import save_file

from llada_jax.io.checkpoint import load_model, save_params
from llada_jax.cli.main import main
from llada_jax.config import ModelConfig
from llada_jax.io.hf import load_hf_checkpoint, save_hf_checkpoint
from llada_jax.model.transformer import forward
from numpy_reference import reference_logits

CFG = ModelConfig.from_dict(dict(
    vocab_size=61, d_model=16, n_layers=2, n_heads=4, n_kv_heads=2, mlp_hidden_size=24, max_seq_len=32,
    mask_token_id=60, bos_token_id=1, eos_token_id=2, eot_token_id=3, pad_token_id=2, dtype="float32",
    rope_theta=10000.0, init_std=0.3))


def _release_config(cfg):
    """config.json as the release writes it (a subset of its keys; no eot/bos fields)."""
    return {"d_model": cfg.d_model, "n_layers": cfg.n_layers, "n_heads": cfg.n_heads, "n_kv_heads": cfg.n_kv_heads,
            "mlp_hidden_size": cfg.mlp_hidden_size, "vocab_size": cfg.vocab_size, "embedding_size": cfg.vocab_size,
            "rope_theta": cfg.rope_theta, "rms_norm_eps": cfg.rms_norm_eps, "weight_tying": False,
            "mask_token_id": cfg.mask_token_id, "eos_token_id": cfg.eos_token_id, "pad_token_id": cfg.pad_token_id,
            "bos_token_id": cfg.bos_token_id, "eot_token_id": cfg.eot_token_id,
            "max_sequence_length": cfg.max_seq_len, "torch_dtype": "float32", "block_type": "llama"}


def _write_release_layout(path, cfg, tensors, n_shards=3):
    """Write HF-named [out, in] tensors, sharded with an index, as the release does."""
    path.mkdir(parents=True, exist_ok=True)
    names = list(tensors)
    groups = np.array_split(np.arange(len(names)), n_shards)
    weight_map = {}
    for k, group in enumerate(groups, 1):
        shard = f"model-{k:05d}-of-{n_shards:05d}.safetensors"
        save_file({names[i]: tensors[names[i]] for i in group}, str(path / shard))
        weight_map.update({names[i]: shard for i in group})
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (path / "config.json").write_text(json.dumps(_release_config(cfg)))


@pytest.fixture(scope="module")
def release_tensors():
    """Random weights in the release's naming and layout, written independently of hf.py."""
    rng = np.random.default_rng(0)
    d, m, v, kv = CFG.d_model, CFG.mlp_hidden_size, CFG.vocab_size, CFG.n_kv_heads * CFG.head_dim
    t = {"model.transformer.wte.weight": rng.normal(size=(v, d)),
         "model.transformer.ln_f.weight": 1 + 0.1 * rng.normal(size=(d,)),
         "model.transformer.ff_out.weight": 0.3 * rng.normal(size=(v, d))}
    for i in range(CFG.n_layers):
        p = f"model.transformer.blocks.{i}."
        t[p + "attn_norm.weight"] = 1 + 0.1 * rng.normal(size=(d,))
        t[p + "ff_norm.weight"] = 1 + 0.1 * rng.normal(size=(d,))
        t[p + "q_proj.weight"] = 0.3 * rng.normal(size=(d, d))
        t[p + "k_proj.weight"] = 0.3 * rng.normal(size=(kv, d))
        t[p + "v_proj.weight"] = 0.3 * rng.normal(size=(kv, d))
        t[p + "attn_out.weight"] = 0.3 * rng.normal(size=(d, d))
        t[p + "ff_proj.weight"] = 0.3 * rng.normal(size=(m, d))
        t[p + "up_proj.weight"] = 0.3 * rng.normal(size=(m, d))
        t[p + "ff_out.weight"] = 0.3 * rng.normal(size=(d, m))
    return {k: val.astype(np.float32) for k, val in t.items()}


def _reference_weights(tensors, cfg):
    w = {"wte": tensors["model.transformer.wte.weight"], "ln_f": tensors["model.transformer.ln_f.weight"],
         "head": tensors["model.transformer.ff_out.weight"]}
    for i in range(cfg.n_layers):
        for name in ("attn_norm", "ff_norm", "q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out"):
            w[f"{i}.{name}"] = tensors[f"model.transformer.blocks.{i}.{name}.weight"]
    return {k: v.astype(np.float64) for k, v in w.items()}


def test_release_layout_loads_and_gives_reference_logits(tmp_path, release_tensors):
    _write_release_layout(tmp_path / "hf", CFG, release_tensors)
    cfg, params = load_hf_checkpoint(tmp_path / "hf", dtype="float32")
    assert cfg.replace(init_std=CFG.init_std) == CFG
    tokens = np.random.default_rng(1).integers(0, CFG.vocab_size, size=(2, 10))
    want = reference_logits(_reference_weights(release_tensors, cfg), cfg, tokens)
    np.testing.assert_allclose(np.asarray(forward(params, cfg, tokens)), want, atol=1e-5, rtol=1e-5)


def test_round_trip_is_exact_and_sharded_like_the_release(tmp_path):
    params = jax.tree.map(np.asarray, jax.jit(lambda k: __import__("llada_jax").init_params(CFG, k))(jax.random.key(2)))
    files = save_hf_checkpoint(tmp_path / "out", CFG, params, max_shard_bytes=20_000)
    assert len(files) > 1 and files[0].name == f"model-00001-of-{len(files):05d}.safetensors"
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {f.name for f in files}
    assert "model.transformer.blocks.1.q_proj.weight" in index["weight_map"]
    cfg, loaded = load_hf_checkpoint(tmp_path / "out", dtype="float32")
    assert cfg.replace(init_std=CFG.init_std) == CFG
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), loaded, params)


def test_bf16_export_and_single_file(tmp_path, tiny_cfg, tiny_params):
    save_hf_checkpoint(tmp_path / "bf16", tiny_cfg, tiny_params, dtype="bfloat16")
    assert (tmp_path / "bf16" / "model.safetensors").is_file()
    assert not (tmp_path / "bf16" / "model.safetensors.index.json").exists()
    cfg, params = load_hf_checkpoint(tmp_path / "bf16")
    assert cfg.param_dtype == "bfloat16" and params["layers"]["q_proj"].dtype == np.dtype("bfloat16")
    np.testing.assert_allclose(np.asarray(params["wte"], np.float32), tiny_params["wte"], rtol=1e-2, atol=1e-3)


def test_load_onto_shardings(tmp_path, release_tensors):
    _write_release_layout(tmp_path / "hf", CFG, release_tensors, n_shards=2)
    mesh = jax.make_mesh((len(jax.devices()),), ("fsdp",), axis_types=(jax.sharding.AxisType.Auto,))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    seen = []

    def pick(path):
        seen.append(path)
        return sharding

    _, params = load_hf_checkpoint(tmp_path / "hf", shardings=pick)
    assert ("layers", "q_proj") in seen and ("wte",) in seen
    assert params["layers"]["q_proj"].sharding == sharding


def test_convert_hf_cli_and_load_model(tmp_path, release_tensors):
    _write_release_layout(tmp_path / "hf", CFG, release_tensors)
    assert main(["convert-hf", str(tmp_path / "hf"), str(tmp_path / "ours")]) == 0
    cfg, params = load_model(tmp_path / "ours")
    cfg_hf, params_hf = load_model(tmp_path / "hf")
    assert cfg == cfg_hf
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), params, params_hf)
    save_params(tmp_path / "again", cfg, params)
    assert load_model(tmp_path / "again")[0] == cfg


def test_shape_mismatch_names_the_tensor(tmp_path, release_tensors):
    bad = dict(release_tensors)
    bad["model.transformer.blocks.1.k_proj.weight"] = np.zeros((3, CFG.d_model), np.float32)
    _write_release_layout(tmp_path / "hf", CFG, bad)
    with pytest.raises(ValueError, match=r"tensor 'model.transformer.blocks.1.k_proj.weight' has shape \(3, 16\), "
                                         r"but config.json implies \(8, 16\)"):
        load_hf_checkpoint(tmp_path / "hf")


def test_missing_shard_and_missing_tensor(tmp_path, release_tensors):
    _write_release_layout(tmp_path / "hf", CFG, release_tensors)
    (tmp_path / "hf" / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="shard 'model-00002-of-00003.safetensors' named in "
                                                "model.safetensors.index.json is missing"):
        load_hf_checkpoint(tmp_path / "hf")
    partial = {k: v for k, v in release_tensors.items() if "blocks.1.up_proj" not in k}
    _write_release_layout(tmp_path / "hf2", CFG, partial)
    with pytest.raises(KeyError, match="blocks.1.up_proj.weight' is missing"):
        load_hf_checkpoint(tmp_path / "hf2")
    assert main(["convert-hf", str(tmp_path / "hf2"), str(tmp_path / "x")]) == 2
