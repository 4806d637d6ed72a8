"""The shared denoising write with per-row settings: each row of a mixed batch gets what the
batch-wide (single-option) code `generate` compiles gives that row alone; and the release's
schedule and threshold rules on a worked example."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np

from llada_jax.config import REMASKING
from llada_jax.inference.denoise import RowOptions, select_threshold, select_topk, transfer

V, W = 64, 8


def test_per_row_settings_equal_each_row_alone(tiny_cfg):
    rng = np.random.default_rng(0)
    combos = list(itertools.product(REMASKING, (False, True), (False, True), (False, True), (False, True)))
    b = len(combos)
    logits = jnp.asarray(rng.standard_normal((b, W, V)) * 4, jnp.float32)
    window = np.full((b, W), tiny_cfg.mask_token_id, np.int32)
    window[:, :2] = rng.integers(7, V, (b, 2))  # two positions already written
    k_len = rng.integers(3, W + 1, b)           # the block's length within the window
    in_block = np.arange(W)[None] < k_len[:, None]
    count = rng.integers(1, 4, b).astype(np.int32)
    temperature = rng.uniform(0.5, 1.5, b)
    threshold = rng.uniform(0.05, 0.6, b).astype(np.float32)
    with jax.enable_x64(True):
        gumbel = jax.random.uniform(jax.random.key(1), (b, W, V), jnp.float64)
        rand = jax.random.uniform(jax.random.key(2), (b, W), jnp.float32)
        cols = list(zip(*combos))
        mixed = RowOptions(remasking=jnp.asarray([REMASKING.index(r) for r in cols[0]], jnp.int32),
                           sample=jnp.asarray(cols[1]), temperature=jnp.asarray(temperature, jnp.float64),
                           logits_eos_inf=jnp.asarray(cols[2]), confidence_eos_eot_inf=jnp.asarray(cols[3]),
                           use_threshold=jnp.asarray(cols[4]), threshold=jnp.asarray(threshold), count=count)
        got, chosen = jax.jit(lambda o: transfer(logits, window, in_block, o, tiny_cfg, gumbel, rand))(mixed)
        for i, (remasking, sample, eos, eot, thr) in enumerate(combos):
            if thr and remasking not in ("low_confidence", "margin"):
                continue  # not a valid setting (threshold needs a confidence in [0, 1])
            alone = RowOptions(remasking=remasking, sample=sample, temperature=jnp.float64(temperature[i]),
                               logits_eos_inf=eos, confidence_eos_eot_inf=eot, use_threshold=thr,
                               threshold=jnp.float32(threshold[i]), count=count[i:i + 1])
            want, want_chosen = transfer(logits[i:i + 1], window[i:i + 1], in_block[i:i + 1], alone, tiny_cfg,
                                         gumbel[i:i + 1] if sample else None, rand[i:i + 1])
            np.testing.assert_array_equal(np.asarray(got[i]), np.asarray(want[0]), err_msg=str(combos[i]))
            np.testing.assert_array_equal(np.asarray(chosen[i]), np.asarray(want_chosen[0]))
            assert not np.asarray(chosen[i])[~in_block[i]].any()  # nothing outside the block
            assert np.asarray(chosen[i])[:2].sum() == 0          # nothing written twice
            if not thr:
                assert np.asarray(chosen[i]).sum() == min(count[i], max(k_len[i] - 2, 0))


def test_selection_rules_worked_example():
    conf = jnp.asarray([[0.2, 0.9, 0.5, -jnp.inf, 0.5]])
    masked = jnp.asarray([[True, True, True, False, True]])
    # top-2: 0.9, then the first of the tied 0.5s
    np.testing.assert_array_equal(np.asarray(select_topk(conf, masked, jnp.asarray([2]))), [[0, 1, 1, 0, 0]])
    # threshold 0.5: both 0.5s and 0.9; threshold 0.95: still the single best
    np.testing.assert_array_equal(np.asarray(select_threshold(conf, masked, 0.5)), [[0, 1, 1, 0, 1]])
    np.testing.assert_array_equal(np.asarray(select_threshold(conf, masked, jnp.asarray([0.95]))), [[0, 1, 0, 0, 0]])
