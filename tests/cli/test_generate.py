"""`llada-jax generate`: answers equal the library sampler's, --show-steps shows the unmasking,
a prompt file runs batched, bad settings exit with a clear error."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from llada_jax.cli.main import main

SCALE = 4.0
ARGS = ["--gen-length", "16", "--steps", "16", "--block-length", "8"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_cfg, tiny_params):
    from llada_jax.io.checkpoint import save_params
    from llada_jax.io.tokenizer import load_tokenizer, train_tokenizer

    d = tmp_path_factory.mktemp("gen")
    rng = np.random.default_rng(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "far", "away", "and", "then", "slept", "42", "7"]
    (d / "corpus.txt").write_text("\n".join(" ".join(rng.choice(words, 12)) for _ in range(400)))
    tok_path = train_tokenizer([d / "corpus.txt"], d / "tok", 300)
    params = jax.tree.map(lambda a: a * SCALE, tiny_params)
    save_params(d / "ckpt", tiny_cfg, params)
    return d / "ckpt", tok_path, load_tokenizer(tok_path), params


def _run(capsys, *argv):
    code = main(["generate", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_answer_matches_library(exported, tiny_cfg, capsys):
    from llada_jax.evaluation.evaluate import decode_answer, encode_prompts
    from llada_jax.inference.sampling import generate

    ckpt, tok_path, tok, params = exported
    code, out, _ = _run(capsys, "--checkpoint", ckpt, "--tokenizer", tok_path, "--prompt", "the cat sat", *ARGS)
    assert code == 0
    enc = encode_prompts(tok, ["the cat sat"], chat=False, pad_id=tiny_cfg.pad_token_id)
    tokens = np.asarray(generate(params, tiny_cfg, enc.ids, enc.mask, steps=16, gen_length=16, block_length=8))
    ids = [i for i in tokens[0, enc.ids.shape[1]:] if i < tok.vocab_size]  # the model's vocab is larger
    want = decode_answer(tok, ids, (tiny_cfg.eos_token_id, tiny_cfg.eot_token_id))
    assert want
    assert out == want + "\n"


def test_show_steps(exported, capsys):
    ckpt, tok_path, _, _ = exported
    code, out, err = _run(capsys, "--checkpoint", ckpt, "--tokenizer", tok_path, "--prompt", "a dog ran",
                          "--show-steps", *ARGS)
    assert code == 0
    steps = [line for line in out.splitlines() if line.startswith("step ")]
    assert len(steps) == 16 and steps[0].startswith("step  1/16: ")
    marks = [line.split(": ", 1)[1].count("░") for line in steps]
    assert marks == list(range(15, -1, -1))  # one position unmasked per step
    assert out.splitlines()[-1].startswith("answer: ")
    assert '"model_calls": 16' in err


def test_prompt_file_runs_batched(exported, tmp_path, capsys):
    ckpt, tok_path, _, _ = exported
    f = tmp_path / "prompts.txt"
    f.write_text("the cat\n\na dog ran far away and then slept\n42\n")
    code, out, err = _run(capsys, "--checkpoint", ckpt, "--tokenizer", tok_path, "--prompt-file", f, "--chat",
                          "--threshold", "0.5", "--cache", "dual", "--batch-size", "2", *ARGS)
    assert code == 0
    headers = [line for line in out.splitlines() if line.startswith("### prompt ")]
    assert headers == ["### prompt 1: the cat", "### prompt 2: a dog ran far away and then slept", "### prompt 3: 42"]
    assert '"prompts": 3' in err


def test_bad_settings_exit_2(exported, capsys):
    ckpt, tok_path, _, _ = exported
    code, _, err = _run(capsys, "--checkpoint", ckpt, "--tokenizer", tok_path, "--prompt", "x",
                        "--gen-length", "16", "--block-length", "5")
    assert code == 2 and "not divisible by block_length" in err
    code, _, err = _run(capsys, "--checkpoint", ckpt, "--tokenizer", tok_path)
    assert code == 2 and "--prompt" in err


def test_newlines_show_as_a_mark():
    from llada_jax.cli.options import NEWLINE_MARK, trajectory_lines
    from llada_jax.config import ModelConfig

    class Tok:
        vocab_size = 20

        def decode(self, ids):
            return "".join({10: "x", 11: "\n"}[i] for i in ids)

    cfg = ModelConfig(vocab_size=32, bos_token_id=1, mask_token_id=3, eos_token_id=2, eot_token_id=4, pad_token_id=2)
    lines = trajectory_lines(np.array([[3, 3, 3], [10, 11, 3], [10, 11, 25]]), Tok(), cfg)
    assert lines == ["\u2591\u2591\u2591", f"x{NEWLINE_MARK}\u2591", f"x{NEWLINE_MARK}<25>"]


def test_run_folder_step_and_clean_stderr_without_jax_platforms(exported, tiny_cfg, tmp_path):
    """A training run folder at RUN@STEP is a --checkpoint; a missing step is a one-line error; and a
    command started without JAX_PLATFORMS (libtpu installed, no TPU) prints no TPU-probe warnings."""
    import os
    import subprocess
    import sys

    from llada_jax.config import MeshConfig, load_config
    from llada_jax.model.sharding import make_mesh
    from llada_jax.io.run_checkpoint import TrainCheckpointer
    from llada_jax.training.step import init_state

    from conftest import REPO

    ckpt, tok_path, _, params = exported
    config = load_config(REPO / "configs" / "tiny.yaml", ["train.warmup_steps=1", "train.decay_steps=1",
                                                          f"train.tokenizer={tok_path}", "sample.gen_length=8",
                                                          "sample.steps=8", "sample.block_length=8"])
    mesh = make_mesh(MeshConfig(), jax.devices()[:1])
    saver = TrainCheckpointer(tmp_path / "run", config, async_save=False)
    with jax.set_mesh(mesh):
        saver.save(3, init_state(config, mesh, params))
    saver.close()
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "XLA_FLAGS")}
    base = [sys.executable, "-m", "llada_jax.cli", "generate", "--prompt", "the cat", "--show-steps"]
    done = subprocess.run([*base, "--checkpoint", f"{tmp_path / 'run'}@3"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].startswith("step 1/8: ")  # the run's sample section, its tokenizer
    stderr = done.stderr.strip().splitlines()
    assert len(stderr) == 1 and stderr[0].startswith('{"prompts": 1'), done.stderr  # only the stats line
    done = subprocess.run([*base, "--checkpoint", f"{tmp_path / 'run'}@5"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip() == f"llada-jax generate: error: {tmp_path / 'run'}: no checkpoint step 5; steps saved: 3"
