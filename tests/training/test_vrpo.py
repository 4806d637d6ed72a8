"""VRPO: the loss and its gradients against NumPy, the variance reduction, the train step on meshes,
exact resume, the reference fingerprint, preference rows and the `vrpo` command."""

import functools
import json
import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llada_jax.config import ConfigError, MeshConfig, VrpoConfig, load_config
from llada_jax.io.checkpoint import save_params
from llada_jax.io.run_checkpoint import ReferenceMismatchError
from llada_jax.model.sharding import make_mesh, param_shardings
from llada_jax.model.transformer import init_params
from llada_jax.training.loop import run_training
from llada_jax.training.metrics import read_metrics
from llada_jax.training.step import init_state, make_train_step
from llada_jax.training.vrpo import elbo_noise, vrpo_loss, vrpo_parts

import numpy_reference as npr
from conftest import REPO, signal_on_line
from vrpo_worker import preference_batches, vrpo_config, worker_mesh

WORKER = REPO / "tests" / "vrpo_worker.py"
STEPS = 6
BETA = 0.5


# -- the loss against NumPy ------------------------------------------------------------------------------------------

def _np_elbos(w, cfg, tokens, noisy, masked, p_mask):
    """[B, R] mean over samples of -sum masked CE / p_mask, from the NumPy forward (float64)."""
    b, r, n, length = noisy.shape
    logits = npr.reference_logits(w, cfg, noisy.reshape(-1, length)).reshape(b, r, n, length, -1)
    top = logits.max(-1, keepdims=True)
    lse = np.log(np.exp(logits - top).sum(-1)) + top[..., 0]
    targets = np.broadcast_to(tokens[:, :, None, :], noisy.shape)
    ce = lse - np.take_along_axis(logits, targets[..., None], -1)[..., 0]
    return (-(np.where(masked, ce / p_mask[..., None], 0.0)).sum(-1)).mean(-1)


def _np_loss(policy_w, reference_w, cfg, tokens, noise, ref_noise, beta=BETA):
    pol = _np_elbos(policy_w, cfg, tokens, *noise)
    ref = _np_elbos(reference_w, cfg, tokens, *ref_noise)
    margin = beta * ((pol[:, 0] - ref[:, 0]) - (pol[:, 1] - ref[:, 1]))
    return np.mean(np.log1p(np.exp(-margin))), margin, pol


def _fixed_noise(rng, tokens, prompts, n, mask_id):
    b, r, length = tokens.shape
    p_mask = rng.uniform(0.2, 0.9, (b, r, n))
    answer = np.arange(length)[None, None, None, :] >= prompts[:, None, None, None]
    masked = (rng.random((b, r, n, length)) < p_mask[..., None]) & answer
    masked[..., -1] = True  # every sample masks at least one answer position
    noisy = np.where(masked, mask_id, np.broadcast_to(tokens[:, :, None, :], masked.shape)).astype(np.int32)
    return noisy, masked, p_mask


def test_vrpo_loss_and_gradients_match_numpy(tiny_cfg, tiny_params):
    rng = np.random.default_rng(0)
    b, length, n = 2, 12, 2
    prompts = np.array([3, 5], np.int32)
    tokens = rng.integers(5, tiny_cfg.vocab_size, (b, 2, length)).astype(np.int32)
    tokens[:, 1, :5] = tokens[:, 0, :5]  # one prompt per pair
    noise = _fixed_noise(rng, tokens, prompts, n, tiny_cfg.mask_token_id)
    ref_noise = _fixed_noise(rng, tokens, prompts, n, tiny_cfg.mask_token_id)
    reference = init_params(tiny_cfg, jax.random.key(7))
    settings = VrpoConfig(beta=BETA, n_samples=n)

    @jax.jit
    @functools.partial(jax.value_and_grad, argnums=(0, 1), has_aux=True)
    def loss_of(params, ref, ref_noise):  # antithetic: the reference scores the policy's own noise
        return vrpo_loss(params, ref, jnp.asarray(tokens), *(jnp.asarray(x) for x in noise), *ref_noise,
                         model=tiny_cfg, train=None, settings=settings)

    to_np = functools.partial(jax.tree.map, lambda x: np.asarray(x, np.float64))
    policy_np, reference_np = to_np(tiny_params), to_np(reference)
    w_ref = npr.hf_weights(reference_np, tiny_cfg)
    for independent in (True, False):
        scored = ref_noise if independent else noise
        (loss, metrics), (grads, ref_grads) = loss_of(tiny_params, reference, scored)
        expected, margin, pol = _np_loss(npr.hf_weights(policy_np, tiny_cfg), w_ref, tiny_cfg, tokens, noise, scored)
        assert abs(margin).max() > 0.05  # the check is not at the saturated or the trivial point
        np.testing.assert_allclose(float(loss), expected, rtol=2e-5)
        np.testing.assert_allclose(float(metrics["reward_margin"]), margin.mean(), rtol=1e-4, atol=1e-5)
        assert float(metrics["reward_accuracy"]) == np.mean(margin > 0)
        np.testing.assert_allclose([float(metrics["elbo_chosen"]), float(metrics["elbo_rejected"])],
                                   pol.mean(0), rtol=2e-5)

        # Gradients: <grad, v> against a central difference of the NumPy loss along v (float64).
        assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(ref_grads))  # the reference is frozen
        for seed in (1, 2):
            v = jax.tree.map(lambda x: np.random.default_rng(seed).standard_normal(x.shape), policy_np)
            eps = 1e-4
            ends = [_np_loss(npr.hf_weights(jax.tree.map(lambda p, d: p + s * eps * d, policy_np, v), tiny_cfg),
                             w_ref, tiny_cfg, tokens, noise, scored)[0]
                    for s in (1, -1)]
            numeric = (ends[0] - ends[1]) / (2 * eps)
            analytic = sum(float(np.sum(np.asarray(g, np.float64) * d))
                           for g, d in zip(jax.tree.leaves(grads), jax.tree.leaves(v)))
            np.testing.assert_allclose(analytic, numeric, rtol=2e-3)


def test_sft_weight_adds_the_chosen_sft_loss(tiny_cfg, tiny_params):
    """loss(sft_weight w) = DPO loss + w * mean(-ELBO(chosen) / answer length), ELBOs from NumPy."""
    rng = np.random.default_rng(5)
    b, length, n = 2, 12, 2
    prompts = np.array([3, 5], np.int32)
    tokens = rng.integers(5, tiny_cfg.vocab_size, (b, 2, length)).astype(np.int32)
    noise = _fixed_noise(rng, tokens, prompts, n, tiny_cfg.mask_token_id)
    reference = init_params(tiny_cfg, jax.random.key(7))
    args = (jnp.asarray(tokens), *(jnp.asarray(x) for x in noise), None, None, None,
            jnp.asarray(length - prompts, jnp.float32))
    plain, _ = vrpo_loss(tiny_params, reference, *args, model=tiny_cfg, train=None,
                         settings=VrpoConfig(beta=BETA, n_samples=n))
    weighted, metrics = vrpo_loss(tiny_params, reference, *args, model=tiny_cfg, train=None,
                                  settings=VrpoConfig(beta=BETA, n_samples=n, sft_weight=0.5))
    to_np = functools.partial(jax.tree.map, lambda x: np.asarray(x, np.float64))
    pol = _np_elbos(npr.hf_weights(to_np(tiny_params), tiny_cfg), tiny_cfg, tokens, *noise)
    nll = np.mean(-pol[:, 0] / (length - prompts))
    np.testing.assert_allclose(float(metrics["chosen_nll"]), nll, rtol=2e-5)
    np.testing.assert_allclose(float(weighted) - float(plain), 0.5 * nll, rtol=1e-4)
    with pytest.raises(ValueError, match="answer lengths"):
        vrpo_loss(tiny_params, reference, *args[:-1], model=tiny_cfg, train=None,
                  settings=VrpoConfig(beta=BETA, n_samples=n, sft_weight=0.5))


# -- the noise and the variance reduction ------------------------------------------------------------------------------

def test_elbo_noise_allocations_never_mask_the_prompt(tiny_cfg):
    tokens = jnp.asarray(np.random.default_rng(0).integers(5, 512, (4, 2, 32)), jnp.int32)
    prompts = jnp.asarray([0, 3, 10, 31], jnp.int32)
    kw = dict(n_samples=6, mask_id=tiny_cfg.mask_token_id, eps=1e-3)
    for allocation in ("optimal", "one_timestep"):
        draw = jax.jit(functools.partial(elbo_noise, allocation=allocation, **kw))
        noisy, masked, p_mask = jax.device_get(draw(jax.random.key(0), tokens, prompts))
        assert noisy.shape == masked.shape == (4, 2, 6, 32) and p_mask.shape == (4, 2, 6)
        in_prompt = np.arange(32)[None, :] < np.asarray(prompts)[:, None]
        assert not masked[np.broadcast_to(in_prompt[:, None, None, :], masked.shape)].any()
        np.testing.assert_array_equal(noisy == tiny_cfg.mask_token_id, masked)
        distinct = len(np.unique(p_mask[0, 0]))
        assert distinct == (6 if allocation == "optimal" else 1)
        # the masks of one timestep differ between samples
        assert not (masked[1, 0, 0] == masked[1, 0, 1]).all()


@pytest.fixture(scope="module")
def close_pair(tiny_cfg, tiny_params):
    """A policy a small step away from the reference, as early in training, and a batch of pairs."""
    noise = init_params(tiny_cfg, jax.random.key(3))
    policy = jax.tree.map(lambda p, d: p + 0.1 * d, tiny_params, noise)
    rng = np.random.default_rng(1)
    batch = {"chosen": rng.integers(5, 512, (4, 24)).astype(np.int32),
             "rejected": rng.integers(5, 512, (4, 24)).astype(np.int32),
             "prompt_lengths": np.array([4, 6, 8, 10], np.int32)}
    return policy, tiny_params, batch


def _loss_spread(tiny_cfg, close_pair, seeds=32, **settings):
    policy, reference, batch = close_pair
    cfg = VrpoConfig(beta=BETA, n_samples=2, **settings)
    train = load_config(None).train

    @jax.jit
    def estimate(key):
        parts = vrpo_parts(key, batch, model=tiny_cfg, train=train, settings=cfg)
        loss, metrics = vrpo_loss(policy, reference, *parts, model=tiny_cfg, train=train, settings=cfg)
        return loss, metrics["elbo_chosen"]

    values = np.asarray([jax.device_get(estimate(jax.random.key(s))) for s in range(seeds)])
    return values.var(axis=0)


def test_antithetic_sampling_lowers_the_variance(tiny_cfg, close_pair, record_property):
    """At 32 fixed seeds: the loss estimate's variance with shared masks vs independent ones."""
    antithetic = _loss_spread(tiny_cfg, close_pair, antithetic=True)
    independent = _loss_spread(tiny_cfg, close_pair, antithetic=False)
    ratio = antithetic[0] / independent[0]
    record_property("antithetic_variance_ratio", float(ratio))
    print(f"VRPO loss variance, antithetic / independent masks: {ratio:.4f} "
          f"({antithetic[0]:.3g} / {independent[0]:.3g})")
    assert ratio < 0.2


def test_coupled_pairs_share_noise_and_lower_the_variance_on_near_misses(tiny_cfg, close_pair, record_property):
    """`coupled`: a pair's chosen and rejected rows get the same timesteps and masks; on pairs whose
    answers differ in one token the loss estimate's variance falls (32 fixed seeds)."""
    tokens = jnp.asarray(np.random.default_rng(0).integers(5, 512, (3, 2, 16)), jnp.int32)
    prompts = jnp.asarray([2, 4, 6], jnp.int32)
    kw = dict(n_samples=4, allocation="optimal", mask_id=tiny_cfg.mask_token_id, eps=1e-3)
    _, masked, p_mask = jax.device_get(elbo_noise(jax.random.key(1), tokens, prompts, coupled=True, **kw))
    np.testing.assert_array_equal(masked[:, 0], masked[:, 1])
    np.testing.assert_array_equal(p_mask[:, 0], p_mask[:, 1])
    _, apart, _ = jax.device_get(elbo_noise(jax.random.key(1), tokens, prompts, coupled=False, **kw))
    assert not (apart[:, 0] == apart[:, 1]).all()

    policy, reference, batch = close_pair
    near_miss = dict(batch, rejected=batch["chosen"].copy())
    near_miss["rejected"][:, -3] = (near_miss["chosen"][:, -3] + 1) % 512  # one answer token differs
    coupled = _loss_spread(tiny_cfg, (policy, reference, near_miss), antithetic=True, coupled=True)
    apart = _loss_spread(tiny_cfg, (policy, reference, near_miss), antithetic=True, coupled=False)
    ratio = coupled[0] / apart[0]
    record_property("coupled_variance_ratio", float(ratio))
    print(f"VRPO loss variance on near-miss pairs, coupled / independent pairs: {ratio:.4f}")
    assert ratio < 0.5


def test_train_step_on_1_and_8_devices(tiny_cfg):
    # Adam's eps as in test_step: float-rounding noise in a near-zero gradient stays a small update
    config = vrpo_config("unused", 4, "unused", "vrpo.antithetic=true", "train.adam_eps=1e-3")
    reference = init_params(config.model, jax.random.key(5))
    batches = [next(iter(preference_batches()))] * 2

    def run(mesh, cfg):
        ref = jax.device_put(reference, param_shardings(cfg.model, mesh))
        state = init_state(cfg, mesh, jax.tree.map(jnp.copy, ref))
        step = make_train_step(cfg, mesh)
        logs = []
        for batch in batches:
            state, m = step(state, {k: np.asarray(v) for k, v in batch.items()}, ref)
            logs.append({k: float(v) for k, v in jax.device_get(m).items()})
        return logs, jax.tree.map(np.asarray, jax.device_get(state.params))

    one, one_params = run(make_mesh(MeshConfig(), jax.devices()[:1]), config)
    assert one[0]["loss"] == pytest.approx(np.log(2), abs=1e-5)  # policy = reference: margin 0
    assert one[1]["reward_margin"] > 0  # one step of preference optimisation separates the pairs
    # 8 devices with 2 microbatches: the same numbers (the objective's metrics averaged over microbatches)
    accum = config.replace(train=config.train.replace(grad_accum=2))
    many, many_params = run(make_mesh(MeshConfig(data=2, fsdp=2, tensor=2)), accum)
    for a, b in zip(one, many):
        for k in ("loss", "grad_norm", "reward_margin", "elbo_chosen", "elbo_rejected"):
            assert b[k] == pytest.approx(a[k], rel=2e-4, abs=2e-5), k
    # at step 1 every margin is 0 up to float rounding (policy = reference): its sign is noise
    assert many[1]["reward_accuracy"] == one[1]["reward_accuracy"]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5), many_params, one_params)


# -- the loop: exact resume and the reference fingerprint -------------------------------------------------------------

@pytest.fixture(scope="module")
def exports(tmp_path_factory, tiny_cfg):
    """Two params exports of the tiny model: the starting point (and reference) and another model."""
    root = tmp_path_factory.mktemp("vrpo_exports")
    return tuple(str(save_params(root / name, tiny_cfg, init_params(tiny_cfg, jax.random.key(seed))))
                 for name, seed in (("start", 0), ("other", 1)))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, exports):
    run_dir = tmp_path_factory.mktemp("vrpo_run")
    result = run_training(vrpo_config(run_dir, STEPS, exports[0]), preference_batches(), mesh=worker_mesh(),
                          progress=False)
    assert result.status == "done" and result.resumed_from is None
    logs = {r["step"]: r for r in read_metrics(run_dir) if "loss" in r}
    return run_dir, logs, jax.tree.map(np.asarray, jax.device_get(result.state.params))


def test_sigkill_mid_run_resumes_bitwise(uninterrupted, exports, tmp_path):
    _, ref_logs, ref_params = uninterrupted
    assert {"reward_margin", "reward_accuracy", "elbo_chosen", "elbo_rejected"} <= set(ref_logs[1])
    run_dir = tmp_path / "run"
    cmd = [sys.executable, str(WORKER), str(run_dir), str(STEPS), exports[0], "0.3"]
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    p1 = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = signal_on_line(p1, "STEP 4", signal.SIGKILL)  # mid-run: steps 5 and 6 are still to come
    p1.wait(timeout=60)
    assert lines and lines[-1].startswith("STEP 4"), "".join(lines)
    assert not (run_dir / str(STEPS)).exists()
    done = subprocess.run(cmd[:-1], env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    status, step, resumed = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT")][0].split()[1:]
    assert status == "done" and int(step) == STEPS and int(resumed) in (2, 4), done.stdout
    logs = {r["step"]: r for r in read_metrics(run_dir) if "loss" in r}
    for s in range(1, STEPS + 1):
        for k in ("loss", "grad_norm", "reward_margin", "reward_accuracy", "elbo_chosen", "elbo_rejected"):
            assert logs[s][k] == ref_logs[s][k], (s, k)
    from llada_jax.io.run_checkpoint import TrainCheckpointer

    ckpt = TrainCheckpointer(run_dir, vrpo_config(run_dir, STEPS, exports[0]))
    params = ckpt.restore_params(STEPS, jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), ref_params))
    ckpt.close()
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), params, ref_params)
    record = json.loads((run_dir / str(STEPS) / "reference" / "metadata").read_text())
    assert record["source"] == exports[0] and len(record["fingerprint"]) == 64
    assert not (run_dir / str(STEPS) / "reference" / "params").exists()  # recorded, not saved


def test_resume_against_another_reference_is_refused(uninterrupted, exports):
    run_dir = uninterrupted[0]
    config = vrpo_config(run_dir, STEPS + 2, exports[1])
    with pytest.raises(ReferenceMismatchError) as e:
        run_training(config, preference_batches(), mesh=worker_mesh(), progress=False)
    message = str(e.value)
    assert len(message.splitlines()) == 1 and exports[0] in message and exports[1] in message, message
    assert f"step {STEPS} was trained against reference" in message


def test_post_training_needs_a_starting_model():
    with pytest.raises(ConfigError, match="train.init_from: objective vrpo needs the starting model"):
        load_config(REPO / "configs" / "tiny.yaml", ["train.objective=vrpo"])
    with pytest.raises(ConfigError, match="vrpo.allocation: 'fixed' is not one of optimal, one_timestep"):
        load_config(REPO / "configs" / "tiny.yaml", ["vrpo.allocation=fixed"])
    with pytest.raises(ConfigError, match="vrpo.n_samples"):
        load_config(REPO / "configs" / "tiny.yaml", ["vrpo.n_samples=0"])


# -- preference rows and the command ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tok_path(tmp_path_factory):
    from llada_jax.data import default_corpus_topics
    from llada_jax.io.tokenizer import train_tokenizer

    d = tmp_path_factory.mktemp("vrpo_tok")
    (d / "t.txt").write_text("\n".join(default_corpus_topics().values())[:60000])
    return train_tokenizer([d / "t.txt"], d / "tok", 400)


def _rows_file(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


PAIRS = [{"prompt": "reverse 123", "chosen": "321", "rejected": "312"},
         {"chosen": [{"role": "user", "content": "reverse 45"}, {"role": "assistant", "content": "54"}],
          "rejected": [{"role": "user", "content": "reverse 45"}, {"role": "assistant", "content": "45"}]},
         {"prompt": [{"role": "user", "content": "reverse 67"}], "chosen": [{"role": "assistant", "content": "76"}],
          "rejected": [{"role": "assistant", "content": "67"}]}]


def test_preference_rows_through_the_chat_template(tmp_path, tok_path):
    from llada_jax.config import DataConfig
    from llada_jax.data import make_preference_dataset
    from llada_jax.io.tokenizer import load_tokenizer

    tok = load_tokenizer(tok_path)
    data = DataConfig.from_dict({"files": [str(_rows_file(tmp_path / "p.jsonl", PAIRS))], "shuffle": False})
    batch = next(iter(make_preference_dataset(data, tok, 48, 3, seed=0)))
    assert batch["chosen"].shape == batch["rejected"].shape == (3, 48) and batch["prompt_lengths"].shape == (3,)
    for i, (digits, good, bad) in enumerate((("123", "321", "312"), ("45", "54", "45"), ("67", "76", "67"))):
        prompt = tok.chat_prompt([{"role": "user", "content": f"reverse {digits}"}])
        assert batch["prompt_lengths"][i] == len(prompt)
        for field, answer in (("chosen", good), ("rejected", bad)):
            row = prompt + tok.encode(answer) + [tok.eot_id, tok.eos_id]
            np.testing.assert_array_equal(batch[field][i], row + [tok.eos_id] * (48 - len(row)))


@pytest.mark.parametrize("row, reason", [
    ({"prompt": "p", "chosen": "a"}, "no 'rejected' field"),
    ({"prompt": "p", "chosen": "a", "rejected": "  "}, "field 'rejected' is an empty answer"),
    ({"prompt": "p", "chosen": "a", "rejected": 3}, "field 'rejected' is int, but 'chosen' is a string"),
    ({"prompt": 5, "chosen": "a", "rejected": "b"}, "field 'prompt' is int"),
    ({"chosen": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "a"}],
      "rejected": [{"role": "user", "content": "y"}, {"role": "assistant", "content": "b"}]},
     "must share every message but the last"),
    ({"chosen": [{"role": "user", "content": "x"}, {"role": "user", "content": "a"}],
      "rejected": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "b"}]},
     "the last message of 'chosen' must be the assistant's answer"),
], ids=["no-rejected", "empty", "wrong-type", "prompt-type", "prompts-differ", "not-assistant"])
def test_bad_preference_rows_name_file_and_line(tmp_path, tok_path, row, reason):
    from llada_jax.config import DataConfig
    from llada_jax.data import DataError, build_preference_rows
    from llada_jax.io.tokenizer import load_tokenizer

    f = _rows_file(tmp_path / "bad.jsonl", [PAIRS[0], row])
    with pytest.raises(DataError) as e:
        build_preference_rows(DataConfig.from_dict({"files": [str(f)]}), load_tokenizer(tok_path), 48)
    assert str(e.value).startswith(f"{f}:2: ") and reason in str(e.value), str(e.value)
    assert len(str(e.value).splitlines()) == 1


def test_bad_parquet_preference_row_names_the_row(tmp_path, tok_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from llada_jax.config import DataConfig
    from llada_jax.data import DataError, build_preference_rows
    from llada_jax.io.tokenizer import load_tokenizer

    f = tmp_path / "p.parquet"
    pq.write_table(pa.table({"prompt": ["a", "b"], "chosen": ["x", "y"], "rejected": ["z", ""]}), f)
    with pytest.raises(DataError, match=r"p.parquet: row 1: field 'rejected' is an empty answer"):
        build_preference_rows(DataConfig.from_dict({"files": [str(f)]}), load_tokenizer(tok_path), 48)


def test_vrpo_command(tmp_path, tok_path, exports):
    pairs = _rows_file(tmp_path / "pairs.jsonl", PAIRS * 8)
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "llada_jax.cli", "vrpo", "--config", str(REPO / "configs" / "tiny.yaml"),
           "--no-progress", f"train.init_from={exports[0]}", f"train.tokenizer={tok_path}",
           f"data.files=[{pairs}]", "data.eval_fraction=0.25", "train.eval_every=2", "train.eval_batches=1",
           "train.steps=2", "train.warmup_steps=0", "train.decay_steps=0", "train.batch_size=8",
           "train.seq_len=32", "train.log_every=1", "train.tensorboard=false", "vrpo.n_samples=2",
           f"train.checkpoint_dir={run_dir}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "vrpo done at step 2" in done.stdout, done.stdout
    records = read_metrics(run_dir)
    train = [r for r in records if "reward_accuracy" in r]
    evals = [r for r in records if "eval/reward_accuracy" in r]
    assert [r["step"] for r in train] == [1, 2] and [r["step"] for r in evals] == [2]
    assert train[0]["loss"] == pytest.approx(np.log(2), abs=1e-4)  # the policy starts as the reference
    assert {"eval/loss", "eval/reward_margin", "eval/elbo_chosen", "eval/elbo_rejected"} <= set(evals[0])
    assert (run_dir / "2" / "reference" / "metadata").is_file()



def test_vrpo_command_bad_row_is_one_line(tmp_path, tok_path, exports, capsys):
    from llada_jax.cli.main import main

    bad = _rows_file(tmp_path / "bad.jsonl", [PAIRS[0], {"prompt": "p", "chosen": "a"}])
    code = main(["vrpo", "--config", str(REPO / "configs" / "tiny.yaml"), "--no-progress",
                 f"train.init_from={exports[0]}", f"train.tokenizer={tok_path}", f"data.files=[{bad}]",
                 f"train.checkpoint_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.endswith(f"{bad}:2: no 'rejected' field: a preference row needs 'chosen' and "
                                      f"'rejected' (and 'prompt' unless they are message lists sharing the "
                                      f"prompt) (keys: prompt, chosen)"), err
    assert len(err.splitlines()) == 1, err
    assert not (tmp_path / "run").exists()  # nothing written


def test_compile_check_covers_the_vrpo_step(exports):
    """The tiny VRPO step (policy + frozen reference) AOT-compiled for v4:2x2x1: it fits, its FLOPs count
    2n trained and 2n reference sequences a pair, and its arguments hold the reference beside the state."""
    pytest.importorskip("libtpu", reason="the 'tpu' extra (libtpu) compiles for TPU topologies")
    base = [sys.executable, "-m", "llada_jax.cli", "compile-check", "--config", str(REPO / "configs" / "tiny.yaml"),
            "--topology", "v4:2x2x1", "--json", "train.steps=10", "train.warmup_steps=1", "train.decay_steps=1",
            "train.batch_size=4", "train.seq_len=64", "mesh.fsdp=4", "model.remat_policy=full"]
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "XLA_FLAGS")}
    reports = {}
    for objective in ("sft", "vrpo"):
        done = subprocess.run([*base, f"train.objective={objective}", f"train.init_from={exports[0]}",
                               "vrpo.n_samples=2"], capture_output=True, text=True, timeout=600, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        reports[objective] = json.loads(done.stdout.strip().splitlines()[-1])
    vrpo, sft = reports["vrpo"], reports["sft"]
    assert vrpo["fits"] is True
    # 2 responses x 2 samples per pair, each trained (x3 with the backward) and scored by the reference (x1)
    assert vrpo["flops_per_chip"]["model"] == pytest.approx(sft["flops_per_chip"]["model"] * 4 * (3 + 1) / 3)
    # The arguments gain the reference: one more params-shaped tree beside the state's three (params and
    # Adam's two moments; a TPU layout pads the tiny dims, so compare in the plan's own bytes), and the
    # rejected rows.
    extra = vrpo["memory_per_chip"]["arguments"] - sft["memory_per_chip"]["arguments"]
    assert extra == pytest.approx(sft["memory_per_chip"]["arguments"] / 3, rel=0.01)
