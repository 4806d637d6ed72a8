"""Validation during training: equals an independent NumPy computation, survives a resume, grid vs random t."""

import os
import signal

import jax
import numpy as np
import pytest

import llada_jax as lj
from llada_jax.training.loop import run_training
from llada_jax.training.metrics import read_metrics
from llada_jax.training.step import make_train_step
from llada_jax.training.validation import Validator, elbo_noise, eval_key, loss_noise

from train_worker import worker_config, worker_dataset, worker_mesh

STEPS = 6
EVAL = ["train.eval_every=2", "train.eval_batches=2"]


def _config(run_dir, steps=STEPS, *extra):
    config = worker_config(run_dir, steps)
    from llada_jax.config import config_from_dict

    return config_from_dict(config.to_dict(), [*EVAL, *extra])


def _eval_data():
    return worker_dataset(seed=1)  # other rows than the training data


def _evals(run_dir):
    return {r["step"]: r for r in read_metrics(run_dir) if "eval/loss" in r}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("validation")
    result = run_training(_config(run_dir), worker_dataset(), mesh=worker_mesh(), progress=False,
                          eval_dataset=_eval_data())
    assert result.status == "done"
    return run_dir, result


def _numpy_ce(logits, tokens):
    logits = np.asarray(logits, np.float64)
    m = logits.max(-1, keepdims=True)
    lse = (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))[..., 0]
    return lse - np.take_along_axis(logits, tokens[..., None], -1)[..., 0]


def _reference(params, cfg, batches, seed, total_rows, eps=1e-3, prompt_lengths=None):
    """eval/loss and eval/elbo_nats recomputed with the public forward and NumPy."""
    key = eval_key(seed)
    losses, elbo_sum, token_sum, counts_all = [], 0.0, 0.0, []
    for i, tokens in enumerate(batches):
        b, length = tokens.shape
        prompts = None if prompt_lengths is None else prompt_lengths[i]
        noisy, masked, p_mask = (np.asarray(x) for x in loss_noise(key, tokens, prompts, i, cfg.mask_token_id, eps))
        ce = _numpy_ce(lj.forward(params, cfg, noisy), tokens)
        if prompts is None:
            losses.append(np.sum(np.where(masked, ce / p_mask, 0.0)) / (b * length))
        else:
            answer = length - prompts
            losses.append(np.sum(np.where(masked, ce / p_mask / answer[:, None], 0.0)) / b)
        noisy, masked, counts, answer = (np.asarray(x) for x in elbo_noise(key, tokens, prompts, i, total_rows,
                                                                            cfg.mask_token_id))
        # the noise itself: exactly `counts` masked per row, never in the prompt, the rest untouched
        np.testing.assert_array_equal(masked.sum(1), counts)
        start = np.zeros(b, int) if prompts is None else prompts
        assert not any(masked[r, :start[r]].any() for r in range(b))
        np.testing.assert_array_equal(np.where(masked, tokens, noisy), tokens)
        ce = _numpy_ce(lj.forward(params, cfg, noisy), tokens)
        elbo_sum += np.sum(np.where(masked, ce, 0.0).sum(1) * answer / counts)
        token_sum += answer.sum()
        counts_all.append((counts, answer))
    return float(np.mean(losses)), elbo_sum / token_sum, counts_all


def test_validation_matches_independent_computation(run):
    run_dir, result = run
    evals = _evals(run_dir)
    assert sorted(evals) == [2, 4, 6]
    cfg = worker_config(run_dir, STEPS).model
    params = jax.device_get(result.state.params)
    it = iter(_eval_data())
    batches = [np.asarray(next(it)["tokens"]) for _ in range(2)]
    loss, elbo, counts = _reference(params, cfg, batches, seed=0, total_rows=16)
    assert evals[6]["eval/loss"] == pytest.approx(loss, rel=1e-5)
    assert evals[6]["eval/elbo_nats"] == pytest.approx(elbo, rel=1e-5)
    assert evals[6]["eval/ppl_bound"] == pytest.approx(np.exp(elbo), rel=1e-5)
    # the fixed grid: the 16 rows' mask counts are the midpoints of 16 equal strata of {1..16}
    got = np.sort(np.concatenate([c for c, _ in counts]))
    np.testing.assert_array_equal(got, np.floor((np.arange(16) + 0.5) / 16 * 16).astype(int) + 1)
    assert evals[2]["eval/loss"] != evals[6]["eval/loss"]  # params changed, so the numbers did
    # its own jitted step: the train step was compiled once, evaluations did not touch it
    assert make_train_step(_config(run_dir), worker_mesh()).jitted._cache_size() == 1


def test_sft_validation_counts_answer_tokens_only(tiny_cfg, tiny_params, tmp_path):
    config = _config(tmp_path, STEPS, "train.objective=sft")
    mesh = worker_mesh()
    rng = np.random.default_rng(3)
    batches = [{"tokens": rng.integers(5, 512, (8, 16)).astype(np.int32),
                "prompt_lengths": rng.integers(1, 15, 8).astype(np.int32)} for _ in range(2)]
    validator = Validator(config, mesh, batches)
    got = validator(tiny_params)
    loss, elbo, counts = _reference(tiny_params, tiny_cfg, [b["tokens"] for b in batches], seed=0, total_rows=16,
                                    prompt_lengths=[b["prompt_lengths"] for b in batches])
    assert got["eval/loss"] == pytest.approx(loss, rel=1e-5)
    assert got["eval/elbo_nats"] == pytest.approx(elbo, rel=1e-5)
    for c, answer in counts:
        assert (c >= 1).all() and (c <= answer).all()


def test_validation_identical_after_resume(run, tmp_path):
    ref_dir, _ = run
    ref = _evals(ref_dir)

    def preempt_at_3(record):
        if record["step"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    first = run_training(_config(tmp_path), worker_dataset(), mesh=worker_mesh(), progress=False,
                         eval_dataset=_eval_data(), on_log=preempt_at_3)
    assert first.status == "preempted" and first.step < STEPS
    second = run_training(_config(tmp_path), worker_dataset(), mesh=worker_mesh(), progress=False,
                          eval_dataset=_eval_data())
    assert second.status == "done" and second.resumed_from == first.step
    got = _evals(tmp_path)
    assert sorted(got) == [2, 4, 6]
    for s in (2, 4, 6):
        for k in ("eval/loss", "eval/elbo_nats"):
            assert got[s][k] == pytest.approx(ref[s][k], rel=1e-6), (s, k)


def test_grid_elbo_spread_over_seeds_is_lower_than_random_t(run):
    run_dir, result = run
    validator = Validator(_config(run_dir), worker_mesh(), _eval_data())
    seeds = range(8)
    grid = [validator(result.state.params, seed=s)["eval/elbo_nats"] for s in seeds]
    rand = [validator(result.state.params, seed=s, grid=False)["eval/elbo_nats"] for s in seeds]
    ratio = np.std(rand) / np.std(grid)
    print(f"ELBO spread over 8 seeds: grid {np.std(grid):.4f}, random t {np.std(rand):.4f} nats ({ratio:.1f}x)")
    assert np.std(grid) < np.std(rand)
    assert abs(np.mean(grid) - np.mean(rand)) < 3 * np.std(rand)  # the same quantity, estimated two ways


def test_validation_is_the_same_on_one_and_eight_devices(tiny_params, tmp_path):
    from llada_jax.config import MeshConfig
    from llada_jax.model.sharding import make_mesh

    config = _config(tmp_path)
    one = Validator(config, make_mesh(MeshConfig(), jax.devices()[:1]), _eval_data())(tiny_params)
    eight = Validator(config, make_mesh(MeshConfig(data=2, fsdp=2, tensor=2)), _eval_data())(tiny_params)
    for k, v in one.items():
        assert eight[k] == pytest.approx(v, rel=2e-5), k


def test_config_fields_are_validated(tmp_path):
    from llada_jax.config import ConfigError

    for bad, match in ((["data.eval_fraction=0.1", "data.eval_files=[x.txt]"], "eval_files or eval_fraction"),
                       (["data.eval_fraction=1.0"], r"data.eval_fraction: must be in \[0, 1\)"),
                       (["train.profile_steps=[3,2]"], r"train.profile_steps: expected \[start, stop\]"),
                       (["train.eval_batches=0"], "eval_batches")):
        with pytest.raises(ConfigError, match=match):
            _config(tmp_path, STEPS, *bad)
    with pytest.raises(ValueError, match="train.eval_every=2 but no validation data"):
        run_training(_config(tmp_path / "run"), worker_dataset(), mesh=worker_mesh(), progress=False)
    assert not (tmp_path / "run").exists()  # refused before anything was written
