"""diffu-GRPO: advantages, ratios, clipping and KL against NumPy; the one-step log-probabilities against
a direct forward; rewards and their failures; prompt rows; a SIGKILLed `llada-jax grpo` run resumed
bitwise; 1 and 8 devices equal."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llada_jax.config import ConfigError, MeshConfig, load_config
from llada_jax.data.prompts import build_prompt_rows
from llada_jax.data.sources import DataError
from llada_jax.model.sharding import make_mesh
from llada_jax.model.transformer import forward, init_params
from llada_jax.training import grpo
from llada_jax.training.metrics import read_metrics
from llada_jax.training.rewards import RewardError, compute_rewards, load_reward

from conftest import REPO

# ---------------------------------------------------------------------------------------------
# Pure parts against NumPy.


def np_advantages(rewards, g, scale):
    r = np.asarray(rewards, np.float64).reshape(-1, g)
    adv = r - r.mean(1, keepdims=True)
    if scale:
        adv = adv / (r.std(1, ddof=1, keepdims=True) + 1e-4)
    return adv.reshape(-1)


def test_group_advantages_and_zero_variance_share():
    rewards = np.array([1, 0, 0, 1, 2, 2, 2, 2, 0.5, 0, 1, 3], np.float32)
    for scale in (False, True):
        np.testing.assert_allclose(grpo.group_advantages(rewards, 4, scale=scale), np_advantages(rewards, 4, scale),
                                   rtol=1e-5, atol=1e-6)
    assert float(grpo.zero_variance_share(rewards, 4)) == pytest.approx(1 / 3)  # the [2, 2, 2, 2] group
    assert np.all(np.asarray(grpo.group_advantages(rewards, 4))[4:8] == 0)
    with pytest.raises(ValueError, match="groups of 5"):
        grpo.group_advantages(rewards, 5)


def np_objective(logps, old, ref, adv, mask, eps, beta):
    ratio = np.exp(logps - old)
    un, cl = ratio * adv[:, None], np.clip(ratio, 1 - eps, 1 + eps) * adv[:, None]
    kl = np.exp(ref - logps) - (ref - logps) - 1
    per_token = -np.minimum(un, cl) + beta * kl
    n = mask.sum()
    return (per_token * mask).sum() / n, (kl * mask).sum() / n, ((cl < un) * mask).sum() / n


def test_clipped_objective_and_kl_against_numpy():
    rng = np.random.default_rng(0)
    b, c = 6, 9
    logps = rng.normal(-2, 0.5, (b, c))
    old = logps + rng.normal(0, 0.3, (b, c))     # ratios well outside [0.8, 1.2] for some tokens
    ref = logps + rng.normal(0, 0.2, (b, c))
    adv = rng.normal(0, 1, b)
    mask = rng.random((b, c)) < 0.7
    loss, m = grpo.grpo_objective(*(jnp.asarray(x, jnp.float32) for x in (logps, old, ref, adv)), jnp.asarray(mask),
                                  clip_eps=0.2, beta=0.04)
    want_loss, want_kl, want_clip = np_objective(logps, old, ref, adv, mask, 0.2, 0.04)
    np.testing.assert_allclose(float(loss), want_loss, rtol=1e-5)
    np.testing.assert_allclose(float(m["kl"]), want_kl, rtol=1e-5)
    np.testing.assert_allclose(float(m["clip_fraction"]), want_clip, rtol=1e-6)
    assert 0 < want_clip < 1
    # Gradient w.r.t. the log-probabilities: r A on unclipped tokens, 0 on clipped ones, plus beta dKL.
    grad = jax.grad(lambda lp: grpo.grpo_objective(lp, jnp.asarray(old, jnp.float32), jnp.asarray(ref, jnp.float32),
                                                   jnp.asarray(adv, jnp.float32), jnp.asarray(mask),
                                                   clip_eps=0.2, beta=0.04)[0])(jnp.asarray(logps, jnp.float32))
    ratio = np.exp(logps - old)
    un, cl = ratio * adv[:, None], np.clip(ratio, 0.8, 1.2) * adv[:, None]
    want = (-np.where(un <= cl, un, 0.0) + 0.04 * (1 - np.exp(ref - logps))) * mask / mask.sum()
    np.testing.assert_allclose(np.asarray(grad), want, rtol=1e-4, atol=1e-7)
    # Equal log-probabilities: ratio 1, no KL, nothing clipped; the loss is -mean(A) over the tokens.
    loss, m = grpo.grpo_objective(*(jnp.asarray(x, jnp.float32) for x in (logps, logps, logps, adv)),
                                  jnp.asarray(mask), clip_eps=0.2, beta=0.04)
    assert float(m["kl"]) == 0 and float(m["clip_fraction"]) == 0 and float(m["ratio"]) == pytest.approx(1)
    np.testing.assert_allclose(float(loss), -(adv[:, None] * mask).sum() / mask.sum(), rtol=1e-5)


def test_completion_mask_ends_at_the_first_eos():
    eos = 2
    rows = np.array([[5, 6, 2, 2, 7], [5, 6, 7, 8, 9], [2, 5, 2, 6, 6]])
    want = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], bool)
    np.testing.assert_array_equal(grpo.completion_mask(rows, eos), want)


# ---------------------------------------------------------------------------------------------
# The one-step estimate.


def test_one_step_logps_equal_a_direct_forward(tiny_cfg, tiny_params):
    width, c, b = 6, 5, 4
    rng = np.random.default_rng(1)
    tokens = rng.integers(5, 512, (b, width + c)).astype(np.int32)
    lengths = np.array([6, 3, 1, 4], np.int32)
    for i, n in enumerate(lengths):
        tokens[i, : width - n] = tiny_cfg.pad_token_id  # left padding
    key = jax.random.key(7)
    got = grpo.completion_logps(tiny_params, tiny_cfg, tokens, lengths, key, prompt_width=width, p_mask=0.5)
    noisy = np.asarray(grpo.one_step_noise(key, tokens, lengths, width, p_mask=0.5, mask_id=tiny_cfg.mask_token_id))
    mask_id = tiny_cfg.mask_token_id
    real = np.arange(width)[None, :] >= width - lengths[:, None]
    assert np.all(noisy[:, width:] == mask_id)                        # the completion fully masked
    assert np.all(noisy[:, :width][~real] == tiny_cfg.pad_token_id)   # pads left alone
    kept = noisy[:, :width][real]
    assert np.all((kept == mask_id) | (kept == tokens[:, :width][real])) and 0 < np.sum(kept == mask_id) < kept.size
    valid = np.concatenate([real, np.ones((b, c), bool)], axis=1)
    logits = np.asarray(forward(tiny_params, tiny_cfg, noisy, attention_mask=valid), np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    want = np.take_along_axis(logp[:, width:], tokens[:, width:, None], axis=-1)[..., 0]
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)


def test_prompt_mask_rate_and_a_new_mask_per_key():
    tokens = np.full((64, 40), 9, np.int32)
    lengths = np.full(64, 32, np.int32)
    a = np.asarray(grpo.one_step_noise(jax.random.key(0), tokens, lengths, 32, p_mask=0.15, mask_id=3))
    b = np.asarray(grpo.one_step_noise(jax.random.key(1), tokens, lengths, 32, p_mask=0.15, mask_id=3))
    rate = np.mean(a[:, :32] == 3)
    assert abs(rate - 0.15) < 0.02, rate           # 2048 prompt tokens: std of the rate ~0.008
    assert np.mean(a[:, :32] != b[:, :32]) > 0.1   # another step's key, another mask
    assert np.all(grpo.one_step_noise(jax.random.key(0), tokens, lengths, 32, p_mask=0.0, mask_id=3)[:, :32] == 9)


# ---------------------------------------------------------------------------------------------
# Rewards and prompt rows.


def test_named_and_user_rewards_and_their_failures():
    prompts, answers = ["reverse: 1 2", "reverse: 3 4"], ["2 1", "4 3"]
    rows = ["p.jsonl: record 1", "p.jsonl: record 2"]
    np.testing.assert_array_equal(compute_rewards(load_reward("exact"), prompts, [" 2  1", "4 3 9"], answers, rows),
                                  [1, 0])
    np.testing.assert_array_equal(compute_rewards(load_reward("contains"), prompts, ["x 2 1", "4 3 9"], answers, rows),
                                  [1, 1])
    np.testing.assert_array_equal(compute_rewards(load_reward("numeric"), ["q", "q"], ["so 21", "#### 43"],
                                                  ["#### 21", "44"], rows), [1, 0])
    user = load_reward("grpo_rewards:answer_in_prompt")
    np.testing.assert_array_equal(compute_rewards(user, prompts, ["a", "b"], ["2 1", "9 3"], rows), [1, 0])
    with pytest.raises(RewardError) as e:
        compute_rewards(load_reward("grpo_rewards:boom"), prompts, ["a", "b"], answers, rows)
    msg = str(e.value)
    assert "grpo_rewards:boom" in msg and "ZeroDivisionError" in msg and "p.jsonl: record 1" in msg and "\n" not in msg
    for name, what in (("not_a_number", "'high'"), ("nan_reward", "nan")):
        with pytest.raises(RewardError, match=f"grpo_rewards:{name} returned {what}.*not a finite number.*record 1"):
            compute_rewards(load_reward(f"grpo_rewards:{name}"), prompts, ["a", "b"], answers, rows)
    with pytest.raises(ValueError, match="has no function 'missing'"):
        load_reward("grpo_rewards:missing")
    with pytest.raises(ValueError, match="neither a scorer"):
        load_reward("exactly")
    with pytest.raises(ConfigError, match="grpo.reward"):
        load_config(REPO / "configs" / "tiny.yaml", ["grpo.reward=exactly"])


class _Tok:
    """Characters as ids (for row encoding only)."""
    bos_id, eot_id, eos_id = 1, 4, 2

    def encode(self, text):
        return [5 + (ord(ch) % 50) for ch in text]


def test_prompt_rows_pad_left_and_bad_rows_name_file_and_row(tmp_path):
    data = load_config(REPO / "configs" / "tiny.yaml", ["data.chat_template=plain"]).data
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "ab", "answer": "x"}\n\n{"prompt": "abcdefghij", "answer": 7}\n'
                 '{"messages": [{"role": "user", "content": "cd"}], "answer": "y"}\n')
    rows = build_prompt_rows(data.replace(files=(str(f),)), _Tok(), 6, pad_id=2)
    assert len(rows) == 2 and rows.answers == ("x", "y") and rows.prompts == ("ab", "cd")   # the long one dropped
    np.testing.assert_array_equal(rows.ids[0], [2, 2, 2, 1, 5 + ord("a") % 50, 5 + ord("b") % 50])
    assert rows.lengths.tolist() == [3, 3] and rows.sources[1] == f"{f}: record 3"
    for line, rule in (('{"prompt": "ab", "answer": "  "}', "'answer' is empty"),
                       ('{"prompt": "ab"}', "missing 'answer'"), ('{"prompt": 3, "answer": "1"}', "not a string")):
        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"prompt": "ab", "answer": "x"}\n' + line + "\n")
        with pytest.raises(DataError, match=f"^{bad}:2: .*{rule}"):
            build_prompt_rows(data.replace(files=(str(bad),)), _Tok(), 6, pad_id=2)


# ---------------------------------------------------------------------------------------------
# Runs: `llada-jax grpo` killed and resumed bitwise, and 1 vs 8 devices.

STEPS = 6
OVERRIDES = ["train.steps=6", "train.warmup_steps=0", "train.decay_steps=0", "train.batch_size=8", "train.seq_len=40",
             "train.learning_rate=3e-3", "train.log_every=1", "train.checkpoint_every_steps=3", "train.max_to_keep=5",
             "train.tensorboard=false", "train.adam_eps=1e-3", "sample.gen_length=8", "sample.steps=8",
             "sample.block_length=8", "grpo.num_generations=4", "grpo.mu=2", "grpo.temperature=1.0",
             "grpo.beta=0.04", "grpo.reward=grpo_rewards:length_reward", "data.chat_template=plain"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_cfg):
    """A tokenizer, a params export to start from and prompt rows; the overrides naming them."""
    from _eval_helpers import save_checkpoint, train_task_tokenizer
    from llada_jax.evaluation.tasks import load_task

    d = tmp_path_factory.mktemp("grpo")
    tok_path, _ = train_task_tokenizer(d)
    save_checkpoint(d / "init", tiny_cfg, init_params(tiny_cfg, jax.random.key(3)), tok_path)
    with open(d / "prompts.jsonl", "w") as f:
        for e in load_task("reverse", num_examples=12, seed=3, min_len=2, max_len=4).examples:
            f.write(json.dumps({"prompt": e.prompt, "answer": e.references[0]}) + "\n")
    return d, [*OVERRIDES, f"train.init_from={d / 'init'}", f"train.tokenizer={tok_path}",
               f"data.files=[{d / 'prompts.jsonl'}]"]


def _config(overrides, run_dir):
    return load_config(REPO / "configs" / "tiny.yaml", [*overrides, f"train.checkpoint_dir={run_dir}",
                                                        "train.objective=grpo"])


def _run(overrides, run_dir, mesh=None):
    from llada_jax.training.loop import make_dataset, run_training

    config = _config(overrides, run_dir)
    result = run_training(config, make_dataset(config), mesh=mesh, progress=False)
    assert result.status == "done", result
    return result, {r["step"]: r for r in read_metrics(run_dir) if "loss" in r}


@pytest.fixture(scope="module")
def eight_devices(setup, tmp_path_factory):
    d, overrides = setup
    return _run(overrides, tmp_path_factory.mktemp("grpo_ref"))


def test_run_logs_the_grpo_metrics(eight_devices):
    _, logs = eight_devices
    assert sorted(logs) == list(range(1, STEPS + 1))
    for r in logs.values():
        for k in ("reward_mean", "reward_std", "zero_std_share", "kl", "clip_fraction", "time/rollout", "time/step"):
            assert k in r and np.isfinite(r[k]), (k, r)
    assert logs[1]["ratio"] == pytest.approx(1, abs=1e-5) and logs[1]["kl"] == 0  # the policy is the reference
    assert logs[2]["kl"] > 0 and any(r["reward_std"] > 0 for r in logs.values())
    assert any(r["grad_norm"] > 0 for r in logs.values())
    for s in (1, 3, 5):  # mu = 2: steps s and s + 1 learn from the rollout made at step s
        assert logs[s]["reward_mean"] == logs[s + 1]["reward_mean"]
        assert logs[s]["completion_length"] == logs[s + 1]["completion_length"]


def test_one_and_eight_devices_agree(setup, eight_devices, tmp_path):
    _, overrides = setup
    ref, ref_logs = eight_devices
    one, logs = _run(overrides, tmp_path / "one", mesh=make_mesh(MeshConfig(), jax.devices()[:1]))
    for s in range(1, STEPS + 1):
        for k in ("loss", "reward_mean", "kl", "clip_fraction"):
            np.testing.assert_allclose(logs[s][k], ref_logs[s][k], rtol=1e-4, atol=1e-5, err_msg=f"step {s} {k}")
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                 jax.device_get(one.state.params), jax.device_get(ref.state.params))


def test_cli_grpo_sigkilled_inside_a_rollout_batch_resumes_bitwise(setup, eight_devices, tmp_path):
    _, overrides = setup
    ref, ref_logs = eight_devices
    run_dir = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "llada_jax.cli", "grpo", "--config", str(REPO / "configs" / "tiny.yaml"),
           "--no-progress", *overrides, f"train.checkpoint_dir={run_dir}"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    start = time.monotonic()
    # Step 3 is the second inner step of the rollout made at step 2: its checkpoint holds that rollout.
    while not (run_dir / "3").is_dir():
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() - start < 300, "no step-3 checkpoint"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    result, logs = _run(overrides, run_dir)
    assert result.resumed_from == 3
    for s in range(1, STEPS + 1):
        for k in ("loss", "grad_norm", "reward_mean", "kl", "clip_fraction"):
            assert logs[s][k] == ref_logs[s][k], (s, k, logs[s][k], ref_logs[s][k])
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(result.state.params), jax.device_get(ref.state.params))


def test_cli_grpo_empty_answer_is_one_line(setup, tmp_path):
    _, overrides = setup
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "reverse: 1 2", "answer": "2 1"}\n{"prompt": "reverse: 3 4", "answer": ""}\n')
    cmd = [sys.executable, "-m", "llada_jax.cli", "grpo", "--config", str(REPO / "configs" / "tiny.yaml"),
           "--no-progress", *overrides, f"data.files=[{bad}]", f"train.checkpoint_dir={tmp_path / 'r'}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines() == [f"llada-jax grpo: error: {bad}:2: field 'answer' is empty"], done.stderr
