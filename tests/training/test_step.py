"""The train step: sharding invariance, gradient accumulation, non-finite skipping, schedule, learning."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.core import jaxprs_in_params

from llada_jax.config import MeshConfig, load_config
from llada_jax.training.optim import make_optimizer, wsd_schedule
from llada_jax.model.sharding import make_mesh
from llada_jax.model.diffusion import forward_process, pretrain_loss
from llada_jax.model.transformer import forward
from llada_jax.training.step import init_state, make_train_step, train_loss

from conftest import REPO

BASE = ["train.steps=20", "train.warmup_steps=2", "train.decay_steps=4", "train.batch_size=8", "train.seq_len=32",
        "train.learning_rate=1e-2", "train.random_length_prob=0.5",
        # Adam divides by sqrt(v) + eps: with a tiny eps, float-rounding noise in a near-zero gradient
        # becomes a full +-lr update; eps 1e-3 keeps the update Lipschitz in the gradient.
        "train.adam_eps=1e-3"]


def _config(*extra):
    return load_config(REPO / "configs" / "tiny.yaml", [*BASE, *extra])


def _batches(n, rows=8, length=32, seed=0):
    rng = np.random.default_rng(seed)
    return [{"tokens": rng.integers(5, 512, (rows, length)).astype(np.int32)} for _ in range(n)]


def _run(config, mesh, batches):
    state = init_state(config, mesh)
    step = make_train_step(config, mesh)
    losses = []
    for b in batches:
        state, m = step(state, b)
        losses.append(float(m["loss"]))
    return losses, jax.tree.map(np.asarray, jax.device_get(state.params)), state


@pytest.fixture(scope="module")
def one_device_run():
    config = _config()
    mesh = make_mesh(MeshConfig(), devices=jax.devices()[:1])
    return _run(config, mesh, _batches(3))


@pytest.mark.parametrize("mesh_cfg", [MeshConfig(data=1, fsdp=4, tensor=2), MeshConfig(data=2, fsdp=4, tensor=1)],
                         ids=["fsdp4xtensor2", "data2xfsdp4"])
def test_sharded_step_matches_one_device(one_device_run, mesh_cfg):
    ref_losses, ref_params, _ = one_device_run
    losses, params, state = _run(_config(), make_mesh(mesh_cfg), _batches(3))
    np.testing.assert_allclose(losses, ref_losses, rtol=2e-5, atol=2e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5), params, ref_params)
    # params really are sharded
    assert state.params["layers"]["q_proj"].sharding.spec[1] == "fsdp"


def test_gradient_accumulation_matches_full_batch(one_device_run):
    ref_losses, ref_params, _ = one_device_run
    losses, params, _ = _run(_config("train.grad_accum=2"), make_mesh(MeshConfig(data=2, fsdp=2, tensor=2)),
                             _batches(3))
    np.testing.assert_allclose(losses, ref_losses, rtol=2e-5, atol=2e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5), params, ref_params)


def test_non_finite_step_is_skipped_and_counted():
    config = _config()
    mesh = make_mesh(MeshConfig(), devices=jax.devices()[:1])
    state = init_state(config, mesh)
    step = make_train_step(config, mesh)
    bad = jax.tree.map(lambda x: x, state.params)
    bad["ln_f"] = bad["ln_f"].at[0].set(jnp.nan)
    state = state._replace(params=bad)
    before = jax.tree.map(np.asarray, jax.device_get(state))
    for i in range(2):
        state, m = step(state, _batches(1, seed=i)[0])
        assert not bool(m["finite"]) and math.isnan(float(m["loss"]))
    after = jax.tree.map(np.asarray, jax.device_get(state))
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), after.params, before.params)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), after.opt_state, before.opt_state)
    assert int(after.step) == 2 and int(after.bad_steps) == 2


def test_wsd_schedule_phases():
    config = load_config(None, ["train.steps=100", "train.warmup_steps=10", "train.decay_steps=20",
                                "train.learning_rate=1.0", "train.final_learning_rate=0.1"]).train
    lr = wsd_schedule(config)
    expect = {0: 0.1, 4: 0.5, 9: 1.0, 10: 1.0, 50: 1.0, 79: 1.0, 80: 1.0 - 0.9 / 20, 89: 1.0 - 0.9 * 10 / 20, 99: 0.1}
    for s, v in expect.items():
        assert float(lr(s)) == pytest.approx(v, rel=1e-6), s
    cos = wsd_schedule(config.replace(decay_shape="cosine"))
    assert float(cos(89)) == pytest.approx(1.0 - 0.9 * 0.5 * (1 - math.cos(math.pi * 0.5)), rel=1e-6)


def test_weight_decay_skips_norm_gains(tiny_params):
    config = load_config(None, ["train.steps=10", "train.warmup_steps=0", "train.decay_steps=0",
                                "train.weight_decay=0.5", "train.learning_rate=0.1"]).train
    opt = make_optimizer(config)
    zeros = jax.tree.map(jnp.zeros_like, tiny_params)
    updates, _ = jax.jit(opt.update)(zeros, opt.init(tiny_params), tiny_params)
    np.testing.assert_array_equal(np.asarray(updates["ln_f"]), 0.0)
    np.testing.assert_array_equal(np.asarray(updates["layers"]["attn_norm"]), 0.0)
    np.testing.assert_allclose(np.asarray(updates["wte"]), -0.1 * 0.5 * np.asarray(tiny_params["wte"]), rtol=1e-5)


def test_sft_step_ignores_prompt_content():
    """The prompt is never masked, so the SFT loss only sees it as context: same rows, same answers,
    different prompt tokens give different losses, but prompt_lengths = L gives zero loss."""
    config = _config("train.objective=sft")
    mesh = make_mesh(MeshConfig(data=2, fsdp=4))
    state = init_state(config, mesh)
    step = make_train_step(config, mesh)
    batch = _batches(1)[0]
    full = {"tokens": batch["tokens"], "prompt_lengths": np.full((8,), 32, np.int32)}
    _, m = step(jax.tree.map(jnp.copy, state), full)
    assert float(m["loss"]) == 0.0 and float(m["grad_norm"]) == 0.0
    half = {"tokens": batch["tokens"], "prompt_lengths": np.full((8,), 16, np.int32)}
    _, m = step(state, half)
    assert float(m["loss"]) > 0.0


def test_loss_falls_on_small_corpus(tmp_path):
    """A tiny model on real text (bytes of the Python docs) learns: the loss falls well below its start."""
    import grain

    from llada_jax.data import default_corpus_text
    from llada_jax.training.loop import run_training
    from llada_jax.training.metrics import read_metrics

    text = default_corpus_text()[:200_000].encode("utf-8")
    ids = np.frombuffer(text, np.uint8).astype(np.int32) + 5  # bytes -> ids 5..260 of the tiny vocab
    rows = ids[: len(ids) // 64 * 64].reshape(-1, 64)
    ds = (grain.MapDataset.source(rows).shuffle(seed=0).repeat().batch(16)
          .map(lambda x: {"tokens": x}).to_iter_dataset())
    config = load_config(REPO / "configs" / "tiny.yaml", [
        "train.steps=80", "train.warmup_steps=5", "train.decay_steps=10", "train.batch_size=16", "train.seq_len=64",
        "train.learning_rate=5e-3", "train.log_every=5", "train.checkpoint_every_steps=0", "train.tensorboard=true",
        f"train.checkpoint_dir={tmp_path}"])
    result = run_training(config, ds, mesh=make_mesh(MeshConfig(), devices=jax.devices()[:2]), progress=False)
    assert result.status == "done" and result.step == 80
    logs = [r for r in read_metrics(tmp_path) if "loss" in r]
    assert [r["step"] for r in logs] == list(range(5, 81, 5))
    first, last = logs[0]["loss"], np.mean([r["loss"] for r in logs[-3:]])
    assert last < 0.6 * first, (first, last)
    assert all(r["tokens_per_s"] > 0 and r["tflops_per_device"] > 0 for r in logs)
    assert list((tmp_path / "tb").iterdir())  # TensorBoard events written
    assert (tmp_path / "80").is_dir()  # the final step is checkpointed


def test_bf16_compute_keeps_float32_master_params():
    config = _config("model.dtype=bfloat16", "model.remat_policy=dots_no_batch", "train.grad_accum=2")
    mesh = make_mesh(MeshConfig(), devices=jax.devices()[:1])
    state = init_state(config, mesh)
    before = np.asarray(state.params["layers"]["q_proj"])
    state, m = make_train_step(config, mesh)(state, _batches(1)[0])
    assert bool(m["finite"]) and 4.0 < float(m["loss"]) < 12.0
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.opt_state) if x.ndim > 0)
    assert not np.array_equal(np.asarray(state.params["layers"]["q_proj"]), before)


def _loss_inputs(cfg, b=2, length=64, seed=0):
    tokens = jnp.asarray(np.random.default_rng(seed).integers(5, cfg.vocab_size, (b, length)), jnp.int32)
    noisy, masked, p_mask = forward_process(jax.random.key(seed), tokens, cfg.mask_token_id)
    valid = jnp.arange(length)[None, :] < jnp.array([[length], [length - 9]])
    return noisy, tokens, masked & valid, p_mask, valid


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_chunked_train_loss_equals_reference_formula(tiny_cfg, tiny_params, dtype):
    """The train step's loss (head in chunks of 16) vs `pretrain_loss` over the full float32 logits."""
    cfg = tiny_cfg.replace(dtype=dtype, loss_chunk_size=16)
    noisy, tokens, masked, p_mask, valid = _loss_inputs(cfg)
    chunked = lambda p: train_loss(p, noisy, tokens, masked, p_mask, valid, None, model=cfg,  # noqa: E731
                                   objective="pretrain")
    reference = lambda p: pretrain_loss(forward(p, cfg, noisy, valid), tokens, masked, p_mask, valid)  # noqa: E731
    (l1, g1), (l2, g2) = jax.value_and_grad(chunked)(tiny_params), jax.value_and_grad(reference)(tiny_params)
    tol = 1e-6 if dtype == "float32" else 1e-3
    assert float(l1) == pytest.approx(float(l2), rel=tol)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        a, b = np.asarray(a), np.asarray(b)
        scale = np.abs(b).max()
        # float32: rounding only; bf16: a few bf16 ulps (2^-8) of each gradient's scale.
        np.testing.assert_allclose(a, b, atol=(1e-5 if dtype == "float32" else 3e-2) * scale)


# Primitives whose outputs XLA materialises (elementwise ops, converts and broadcasts fuse into their consumers).
MATERIALISED = {"dot_general", "scan", "while", "reduce_sum", "reduce_max", "gather", "scatter-add", "concatenate",
                "transpose", "jit", "pjit", "custom_vjp_call"}


def _float32_buffers(jaxpr, out):
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in MATERIALISED:
            out.update(tuple(v.aval.shape) for v in eqn.outvars if getattr(v.aval, "dtype", None) == jnp.float32)
        for sub in jaxprs_in_params(eqn.params):
            _float32_buffers(sub, out)
    return out


def test_no_full_size_float32_logits_or_scores_in_the_train_loss(tiny_cfg, tiny_params):
    """bf16 compute: no matmul, reduction or loop yields float32 [B, L, V] logits or [B, N, L, L] scores."""
    cfg = tiny_cfg.replace(dtype="bfloat16", loss_chunk_size=16)
    b, length = 2, 64
    args = _loss_inputs(cfg, b, length)
    grad = jax.value_and_grad(lambda p: train_loss(p, *args, None, model=cfg, objective="pretrain"))
    shapes = _float32_buffers(jax.make_jaxpr(grad)(tiny_params).jaxpr, set())
    groups = cfg.n_heads // cfg.n_kv_heads
    assert (b, length, cfg.vocab_size) not in shapes                    # logits
    assert (b, cfg.n_kv_heads, groups, length, length) not in shapes    # attention scores / probabilities
    assert (b, 16, cfg.vocab_size) in shapes                            # one chunk's logits, as designed
    # The reference path (full logits) does have them: the check can fail.
    full = jax.value_and_grad(lambda p: pretrain_loss(forward(p, cfg, args[0], args[4]), *args[1:]))
    assert (b, length, cfg.vocab_size) in _float32_buffers(jax.make_jaxpr(full)(tiny_params).jaxpr, set())
