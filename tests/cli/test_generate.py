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
