"""The standing bad-input sweep over the whole CLI (issue 19).

Every case runs `python -m llada_jax.cli ...` in a subprocess and must exit with status 2, print
no traceback, and print exactly one line on stderr that names the input and what is wrong. A
case marked `pure` must write nothing: its outputs point into a fresh work folder (also its
working directory), which must still be empty afterwards; the shared fixtures must be unchanged
after the whole sweep. The cases run in a small thread pool from one module-scoped fixture.

Add a case for every new command or flag: one row of `CASES`.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from conftest import REPO

WORKERS = 3
CASE_TIMEOUT_S = 120
RECIPE = REPO / "configs" / "eval" / "llada-8b-base-lm-eval.yaml"
WIDE = "".join(chr(c) for c in range(0x4E00, 0x4E00 + 400))  # a corpus of 400 distinct characters


@dataclasses.dataclass(frozen=True)
class Case:
    """One bad input: `argv` and `expect` are templates over the fixture names (see `names`)."""

    id: str
    argv: str
    expect: str
    pure: bool = True    # nothing may be written


# Templates: {F} fixtures, {W} the case's own (empty) work folder, {C} configs/tiny.yaml,
# {T} a 300-piece tokenizer, {E} a params export holding it, {H} a HF directory, {R} a 2-step run,
# {TRAIN} a tiny pretrain command line writing into {W}, {GEN} the model and sampler flags of generate,
# {GRPO} rows long enough for a grpo rollout.
TRAIN = ("--config {C} --no-progress train.steps=2 train.warmup_steps=1 train.decay_steps=1 train.batch_size=8 "
         "train.seq_len=16 train.tensorboard=false train.checkpoint_dir={W}/run train.tokenizer={T} "
         "data.files=[{F}/corpus.txt]")
GEN = "--checkpoint {E} --prompt hi --gen-length 16 --steps 16 --block-length 8"
GRPO = "train.seq_len=64 sample.gen_length=16 sample.steps=16 sample.block_length=16"

CASES = [
    # train-tokenizer
    Case("tt-input-missing", "train-tokenizer --input {F}/nope.txt --vocab-size 300 --output {W}/tok",
         "data file {F}/nope.txt does not exist"),
    Case("tt-input-empty", "train-tokenizer --input {F}/empty.txt --vocab-size 300 --output {W}/tok",
         "no text to train on in {F}/empty.txt"),
    Case("tt-more-chars-than-vocab", "train-tokenizer --input {F}/wide.txt --vocab-size 300 --output {W}/tok",
         "vocab_size 300 is too small for {F}/wide.txt: its characters at character_coverage 1 need a vocabulary "
         "of at least {WIDE_NEEDS}; raise the vocabulary size, or lower the character coverage (character_coverage, "
         "--character-coverage"),
    Case("tt-vocab-below-bytes", "train-tokenizer --input {F}/corpus.txt --vocab-size 100 --output {W}/tok",
         "vocab_size 100 is too small; byte fallback needs >= 264"),
    Case("tt-vocab-not-int", "train-tokenizer --input {F}/corpus.txt --vocab-size abc --output {W}/tok",
         "argument --vocab-size: invalid int value: 'abc'"),
    Case("tt-coverage-range", "train-tokenizer --input {F}/corpus.txt --vocab-size 300 --output {W}/tok "
         "--character-coverage 1.5", "character_coverage 1.5 is outside (0, 1]"),
    Case("tt-model-type", "train-tokenizer --input {F}/corpus.txt --vocab-size 300 --output {W}/tok "
         "--model-type wordpiece", "argument --model-type: invalid choice: 'wordpiece'"),
    Case("tt-output-under-a-file", "train-tokenizer --input {F}/corpus.txt --vocab-size 300 "
         "--output {F}/corpus.txt/tok", "File exists: '{F}/corpus.txt'"),
    # pretrain / sft: config files and overrides
    Case("pt-config-missing", "pretrain --config {F}/nope.yaml", "config file {F}/nope.yaml does not exist"),
    Case("pt-config-binary", "pretrain --config {F}/binary.yaml", "{F}/binary.yaml: not a YAML config"),
    Case("pt-config-malformed", "pretrain --config {F}/bad.yaml", "{F}/bad.yaml: line 4, column 6: invalid YAML"),
    Case("pt-steps-not-int", "pretrain {TRAIN} train.steps=abc", "train.steps: expected an integer, got 'abc'"),
    Case("pt-steps-zero", "pretrain {TRAIN} train.steps=0", "train.steps: must be positive, got 0"),
    Case("pt-unknown-key", "pretrain {TRAIN} train.stesp=2", "train: unknown key 'stesp' (did you mean 'steps'?)"),
    Case("pt-override-no-value", "pretrain {TRAIN} train.steps", "override 'train.steps': expected section.key=value"),
    Case("pt-unknown-section", "pretrain {TRAIN} trian.steps=2", "unknown section 'trian' (did you mean 'train'?)"),
    Case("pt-heads-do-not-divide", "pretrain {TRAIN} model.d_model=95", "model.d_model: 95 is not divisible by n_heads=4"),
    Case("pt-bool-not-bool", "pretrain {TRAIN} train.tensorboard=maybe", "train.tensorboard: expected true/false"),
    Case("pt-mesh-too-big", "pretrain {TRAIN} mesh.data=3 mesh.fsdp=1", "mesh: data=3 x fsdp=1 x tensor=1 = 3 devices"),
    # pretrain / sft: data, tokenizer, checkpoints
    Case("pt-data-missing", "pretrain {TRAIN} data.files=[{F}/nope.txt]", "data file {F}/nope.txt does not exist"),
    Case("pt-data-empty", "pretrain {TRAIN} data.files=[{F}/empty.txt]", "no documents in data.files"),
    Case("pt-tokenizer-binary", "pretrain {TRAIN} train.tokenizer={F}/binary.model",
         "{F}/binary.model: not a sentencepiece model"),
    Case("pt-tokenizer-too-big", "pretrain {TRAIN} train.tokenizer={F}/big.model",
         "vocab_size: tokenizer has 600 tokens, model only 512"),
    Case("pt-checkpoint-dir-is-file", "pretrain {TRAIN} train.checkpoint_dir={F}/corpus.txt",
         "train.checkpoint_dir {F}/corpus.txt is a file"),
    Case("pt-init-from-missing", "pretrain {TRAIN} train.init_from={F}/nope", "checkpoint {F}/nope does not exist"),
    Case("pt-init-from-other-shape", "pretrain {TRAIN} train.init_from={E} model.d_model=64",
         "train.init_from {E}: model.d_model: checkpoint 96, config 64"),
    Case("pt-resume-other-shape", "pretrain {TRAIN} train.checkpoint_dir={R} model.d_model=64",
         "{R} step 2 does not match this config: model.d_model: checkpoint 96, config 64"),
    Case("sft-text-data", "sft {TRAIN}", "{F}/corpus.txt: SFT data must be JSONL or Parquet"),
    Case("sft-malformed-jsonl", "sft {TRAIN} data.files=[{F}/bad.jsonl]", "{F}/bad.jsonl:2: invalid JSON"),
    # export / verify / plot
    Case("ex-run-missing", "export {F}/nope {W}/out", "{F}/nope: no config.yaml"),
    Case("ex-run-config-malformed", "export {F}/badrun {W}/out", "{F}/badrun/config.yaml: line 2"),
    Case("ex-run-config-unknown-key", "export {F}/typorun {W}/out", "{F}/typorun/config.yaml: model: unknown key 'd_modle'"),
    Case("ex-step-missing", "export {R} {W}/out --step 99", "{R}: no checkpoint at step 99 (steps: 1, 2)"),
    Case("ex-step-not-int", "export {R} {W}/out --step two", "argument --step: invalid int value: 'two'"),
    Case("ex-out-is-file", "export {R} {F}/corpus.txt", "File exists: '{F}/corpus.txt'"),
    Case("vf-run-missing", "verify {F}/nope", "run directory {F}/nope does not exist"),
    Case("vf-run-is-file", "verify {F}/corpus.txt", "run directory {F}/corpus.txt is a file, not a directory"),
    Case("vf-no-checkpoints", "verify {F}/emptydir", "{F}/emptydir: no checkpoints to verify"),
    Case("pl-metrics-malformed", "plot {F}/badmetrics --out {W}/c.png", "{F}/badmetrics/metrics.jsonl:2: invalid JSON"),
    Case("pl-no-metrics", "plot {F}/emptydir --out {W}/c.png", "{F}/emptydir/metrics.jsonl: no training records"),
    Case("pl-out-is-dir", "plot {R} --out {W}", "{W} is a directory; expected the PNG file to write"),
    # generate: checkpoints and tokenizers
    Case("gen-checkpoint-missing", "generate {GEN} --checkpoint {F}/nope", "checkpoint {F}/nope does not exist"),
    Case("gen-checkpoint-is-file", "generate {GEN} --checkpoint {F}/corpus.txt",
         "checkpoint {F}/corpus.txt is a file, not a directory"),
    Case("gen-checkpoint-empty-dir", "generate {GEN} --checkpoint {F}/emptydir", "{F}/emptydir: not a model checkpoint"),
    Case("gen-checkpoint-other-shape", "generate {GEN} --checkpoint {F}/badexport",
         "{F}/badexport: parameters do not match the model config"),
    Case("gen-run-step-missing", "generate {GEN} --checkpoint {R}@7 --tokenizer {T}", "{R}: no checkpoint step 7"),
    Case("gen-hf-truncated", "generate {GEN} --checkpoint {F}/hf_truncated --tokenizer {T}",
         "{F}/hf_truncated/model.safetensors: truncated"),
    Case("gen-tokenizer-binary", "generate {GEN} --tokenizer {F}/binary.model", "{F}/binary.model: not a sentencepiece model"),
    Case("gen-tokenizer-too-big", "generate {GEN} --tokenizer {F}/big.model",
         "tokenizer does not match the model config: vocab_size: tokenizer has 600 tokens, model only 512"),
    Case("gen-tokenizer-unknown-type", "generate {GEN} --tokenizer {F}/corpus.txt",
         "{F}/corpus.txt: unknown tokenizer type"),
    # generate: sampler settings and prompts
    Case("gen-block-does-not-divide", "generate {GEN} --block-length 5", "gen_length: 16 is not divisible by block_length=5"),
    Case("gen-steps-zero", "generate {GEN} --steps 0", "steps: must be positive, got 0"),
    Case("gen-threshold-range", "generate {GEN} --threshold 1.5", "threshold: 1.5 is outside (0, 1]"),
    Case("gen-threshold-not-number", "generate {GEN} --threshold high", "threshold: expected a number, got 'high'"),
    Case("gen-remasking-choice", "generate {GEN} --remasking greedy", "argument --remasking: invalid choice: 'greedy'"),
    Case("gen-longer-than-model", "generate {GEN} --gen-length 512 --block-length 512",
         "gen_length 512 = 520 exceeds the model's max_seq_len 256"),
    Case("gen-prompt-file-binary", "generate {GEN} --prompt-file {F}/binary.txt",
         "prompt file {F}/binary.txt: not UTF-8 text"),
    Case("gen-prompt-file-is-dir", "generate {GEN} --prompt-file {F}/emptydir",
         "prompt file {F}/emptydir is a directory, not a file"),
    Case("gen-no-prompt", "generate --checkpoint {E}", "give --prompt TEXT or --prompt-file FILE"),
    # eval / sweep / likelihood
    Case("ev-task-unknown", "eval --checkpoint {E} --task nosuch", "argument --task: invalid choice: 'nosuch'"),
    Case("ev-task-file-missing", "eval --checkpoint {E} --task jsonl --task-file {F}/nope.jsonl",
         "task file {F}/nope.jsonl does not exist"),
    Case("ev-task-file-malformed", "eval --checkpoint {E} --task jsonl --task-file {F}/badtask.jsonl",
         "{F}/badtask.jsonl:1: not valid JSON"),
    Case("ev-task-file-binary", "eval --checkpoint {E} --task jsonl --task-file {F}/binary.txt",
         "{F}/binary.txt:1: not UTF-8 text"),
    Case("ev-num-examples-zero", "eval --checkpoint {E} --task reverse --num-examples 0",
         "num_examples: must be a positive integer, got 0"),
    Case("ev-task-option-form", "eval --checkpoint {E} --task reverse --task-option min_len",
         "--task-option 'min_len': expected KEY=INTEGER"),
    Case("ev-preset-row-unknown", "eval --checkpoint {E} --task reverse --preset {RECIPE}:nosuch",
         "{RECIPE}: no task row 'nosuch'"),
    Case("ev-output-is-dir", "eval --checkpoint {E} --task reverse --output {W}",
         "--output {W} is a directory; expected the JSON file to write"),
    Case("sw-grid-key", "sweep --checkpoint {E} --task reverse --grid stpes=4,8 --out {W}/sw",
         "grid key 'stpes' is not a sampler option (did you mean 'steps'?)"),
    Case("sw-grid-value", "sweep --checkpoint {E} --task reverse --grid steps=4,x --out {W}/sw",
         "grid steps: expected an integer, got 'x'"),
    Case("sw-out-is-file", "sweep --checkpoint {E} --task reverse --grid steps=8 --out {F}/corpus.txt",
         "--out {F}/corpus.txt is a file; expected a directory"),
    Case("ll-mc-num-not-multiple", "likelihood --checkpoint {E} --prompt a --answer b --mc-num 10 --batch-size 4",
         "mc_num: must be a positive multiple of batch_size=4, got 10"),
    Case("ll-cfg-negative", "likelihood --checkpoint {E} --prompt a --answer b --cfg-scale -1",
         "cfg_scale: must be >= 0, got -1.0"),
    Case("ll-empty-answer", "likelihood --checkpoint {E} --prompt a --answer ''", "answer: is empty"),
    # lm-eval recipes
    Case("le-recipe-missing", "lm-eval --recipe {F}/nope.yaml --checkpoint {E} --out {W}/le",
         "recipe file {F}/nope.yaml does not exist"),
    Case("le-recipe-malformed", "lm-eval --recipe {F}/bad.yaml --checkpoint {E} --out {W}/le",
         "{F}/bad.yaml: not valid YAML"),
    Case("le-recipe-binary", "lm-eval --recipe {F}/binary.yaml --checkpoint {E} --out {W}/le",
         "recipe file {F}/binary.yaml: not UTF-8 text"),
    Case("le-row-unknown", "lm-eval --recipe {RECIPE} --checkpoint {E} --tasks nosuch --out {W}/le",
         "{RECIPE}: no task row 'nosuch'"),
    Case("le-no-checkpoint", "lm-eval --recipe {RECIPE}", "the following arguments are required: --checkpoint"),
    # compile-check (all refused before libtpu starts)
    Case("cc-topology-chip", "compile-check --config {C} --topology v9x:4x4", "unknown chip 'v9x'"),
    Case("cc-topology-form", "compile-check --config {C} --topology v5e", "topology 'v5e': expected <chip>:<shape>"),
    Case("cc-num-slices-zero", "compile-check --config {C} --topology v5e:2x2 --num-slices 0",
         "num_slices: must be a positive integer"),
    Case("cc-policy-unknown", "compile-check --config {C} --topology v5e:2x2 --search --policies bogus",
         "--policies: unknown remat policy 'bogus'"),
    Case("cc-grad-accum-not-int", "compile-check --config {C} --topology v5e:2x2 --search --grad-accum x",
         "--grad-accum 'x': expected comma-separated positive integers"),
    # convert-hf
    Case("hf-src-missing", "convert-hf {F}/nope {W}/out", "{F}/nope: no config.json"),
    Case("hf-config-malformed", "convert-hf {F}/hf_badjson {W}/out", "{F}/hf_badjson/config.json: not valid JSON"),
    Case("hf-no-weights", "convert-hf {F}/hf_noshard {W}/out",
         "{F}/hf_noshard: neither model.safetensors.index.json nor model.safetensors found"),
    Case("hf-truncated", "convert-hf {F}/hf_truncated {W}/out", "{F}/hf_truncated/model.safetensors: truncated"),
    Case("hf-damaged-header", "convert-hf {F}/hf_damaged {W}/out",
         "{F}/hf_damaged/model.safetensors: damaged safetensors header"),
    Case("hf-dst-is-file", "convert-hf {H} {F}/corpus.txt", "File exists: '{F}/corpus.txt'"),
    # serve (refused before the server starts)
    Case("sv-checkpoint-missing", "serve --checkpoint {F}/nope --port 0", "checkpoint {F}/nope does not exist"),
    Case("sv-port-not-int", "serve --checkpoint {E} --port abc", "argument --port: invalid int value: 'abc'"),
    Case("sv-port-range", "serve --checkpoint {E} --port 70000", "--port: 70000 is not in 0..65535"),
    Case("sv-max-batch", "serve --checkpoint {E} --port 0 --max-batch 0", "--max-batch: 0 must be >= 2"),
    Case("sv-chunk-ms", "serve --checkpoint {E} --port 0 --chunk-ms -1", "--chunk-ms: -1 must be >= 0"),
    Case("sv-request-timeout", "serve --checkpoint {E} --port 0 --request-timeout 0", "--request-timeout: 0"),
    Case("sv-tokenizer-too-big", "serve --checkpoint {E} --tokenizer {F}/big.model --port 0",
         "vocab_size: tokenizer has 600 tokens, model only 512"),
    Case("sv-sample-section-refused", "serve --checkpoint {F}/badsample --port 0",
         "{F}/badsample/config.yaml: sample.gen_length: 16 is not divisible by block_length=5"),
    # vrpo / grpo
    Case("vr-no-init-from", "vrpo {TRAIN} data.files=[{F}/pref.jsonl]", "train.init_from: objective vrpo needs the starting model"),
    Case("vr-text-data", "vrpo {TRAIN} train.init_from={E}", "{F}/corpus.txt: preference data must be JSONL or Parquet"),
    Case("vr-rows-without-pairs", "vrpo {TRAIN} train.init_from={E} data.files=[{F}/prompts.jsonl]",
         "{F}/prompts.jsonl:1: no 'chosen' field"),
    Case("vr-allocation-choice", "vrpo {TRAIN} train.init_from={E} data.files=[{F}/pref.jsonl] vrpo.allocation=bogus",
         "vrpo.allocation: 'bogus' is not one of"),
    Case("vr-init-from-other-shape", "vrpo {TRAIN} train.seq_len=64 train.init_from={E} data.files=[{F}/pref.jsonl] "
         "model.d_model=64", "train.init_from {E}: model.d_model: checkpoint 96, config 64"),
    Case("gr-no-init-from", "grpo {TRAIN} data.files=[{F}/prompts.jsonl]", "train.init_from: objective grpo needs the starting model"),
    Case("gr-reward-unknown", "grpo {TRAIN} train.init_from={E} data.files=[{F}/prompts.jsonl] grpo.reward=bogus",
         "grpo.reward: 'bogus' is not one of"),
    Case("gr-one-generation", "grpo {TRAIN} train.init_from={E} data.files=[{F}/prompts.jsonl] grpo.num_generations=1",
         "grpo.num_generations: group-normalised advantages need at least 2, got 1"),
    Case("gr-reward-module-missing", "grpo {TRAIN} {GRPO} train.init_from={E} data.files=[{F}/prompts.jsonl] "
         "grpo.reward=nosuchmod:f", "grpo.reward: cannot import module 'nosuchmod'"),
    Case("gr-rows-without-answer", "grpo {TRAIN} {GRPO} train.init_from={E} data.files=[{F}/questions.jsonl]",
         "{F}/questions.jsonl:1: missing 'answer'"),
    Case("gr-completion-longer-than-rows", "grpo {TRAIN} train.init_from={E} data.files=[{F}/prompts.jsonl]",
         "train.seq_len=16 leaves no room for a prompt before sample.gen_length=128 completion tokens"),
]


def _subprocess_env() -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", PYTHONUNBUFFERED="1")
    env.pop("TPU_ACCELERATOR_TYPE", None)
    return env


def _cli(argv, cwd: Path, timeout: float = CASE_TIMEOUT_S) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llada_jax.cli", *argv], capture_output=True, text=True,
                          env=_subprocess_env(), cwd=cwd, timeout=timeout)


def _snapshot(root: Path) -> dict:
    """Every path under `root` with its size and modification time (what a write would change)."""
    return {str(p.relative_to(root)): (p.is_dir(), p.stat().st_size if p.is_file() else 0, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


def _build_fixtures(root: Path, tiny_cfg, tiny_params) -> dict:
    """The shared inputs, good and bad; returns the template names."""
    import numpy as np

    from llada_jax.io.tokenizer import train_tokenizer

    rng = np.random.default_rng(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "far", "away", "and", "then", "slept", "42", "7"]
    (root / "corpus.txt").write_text("\n".join(" ".join(rng.choice(words, 12)) for _ in range(400)))
    tok = train_tokenizer([root / "corpus.txt"], root / "tok", 300)
    names = {"F": str(root), "C": str(REPO / "configs" / "tiny.yaml"), "T": str(tok), "E": str(root / "export"),
             "H": str(root / "hf"), "R": str(root / "run"), "RECIPE": str(RECIPE),
             # sentencepiece needs a piece per character (coverage 1.0) beside 256 bytes and the 7 reserved ones
             "WIDE_NEEDS": str(len(WIDE) + 256 + 7)}
    # The run folder (2 steps, both checkpointed) trains while the rest is built.
    run = subprocess.Popen(
        [sys.executable, "-m", "llada_jax.cli", "pretrain",
         *TRAIN.replace("{W}/run", "{R}").format(**names, W="").split(), "train.checkpoint_every_steps=1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_subprocess_env(), cwd=root)
    try:
        _write_inputs(root, tiny_cfg, tiny_params, tok)
        out, _ = run.communicate(timeout=300)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 0 and (root / "run" / "2").is_dir(), out
    return names


def _write_inputs(root: Path, tiny_cfg, tiny_params, tok) -> None:
    """Everything but the run folder: corpora, bad files, exports, HF directories."""
    import numpy as np

    from llada_jax.data import default_corpus_text
    from llada_jax.io.checkpoint import save_params
    from llada_jax.io.hf import save_hf_checkpoint
    from llada_jax.io.tokenizer import train_tokenizer

    (root / "docs.txt").write_text(default_corpus_text()[:60000])
    train_tokenizer([root / "docs.txt"], root / "big", 600)
    (root / "wide.txt").write_text("\n".join(WIDE[i:i + 40] for i in range(0, len(WIDE), 40)) * 3)
    (root / "empty.txt").write_text("")
    binary = bytes(np.random.default_rng(1).integers(128, 256, 2000, dtype=np.uint8))  # never valid UTF-8 at byte 0
    for name in ("binary.txt", "binary.yaml", "binary.model"):
        (root / name).write_bytes(binary)
    (root / "bad.yaml").write_text("model:\n  d_model: 64\n  n_layers: [1\ntrain: {}\n")
    (root / "bad.jsonl").write_text('{"prompt": "a", "response": "b"}\n{"prompt": "a", \n')
    (root / "badtask.jsonl").write_text('{"prompt": "a"\n')
    (root / "pref.jsonl").write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n')
    (root / "prompts.jsonl").write_text('{"prompt": "a", "answer": "b"}\n')
    (root / "questions.jsonl").write_text('{"question": "a"}\n')
    (root / "emptydir").mkdir()
    for name, text in (("badrun", "model: {d_model: 96\n"), ("typorun", "model: {d_modle: 96}\n")):
        (root / name).mkdir()
        (root / name / "config.yaml").write_text(text)
    (root / "badmetrics").mkdir()
    (root / "badmetrics" / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": \n')
    save_params(root / "export", tiny_cfg, tiny_params)
    shutil.copy(tok, root / "export" / "tokenizer.model")
    shutil.copytree(root / "export", root / "badexport")  # its config says d_model 64, its params are 96 wide
    text = (root / "badexport" / "config.yaml").read_text()
    assert "d_model: 96" in text
    (root / "badexport" / "config.yaml").write_text(text.replace("d_model: 96", "d_model: 64"))
    shutil.copytree(root / "export", root / "badsample")  # its sample section is one the sampler refuses
    config = yaml.safe_load(text)
    config["sample"].update(gen_length=16, steps=16, block_length=5)
    (root / "badsample" / "config.yaml").write_text(yaml.safe_dump(config))
    save_hf_checkpoint(root / "hf", tiny_cfg, tiny_params)
    shard = (root / "hf" / "model.safetensors").read_bytes()
    for name, weights in (("hf_truncated", shard[: len(shard) // 2]),
                          ("hf_damaged", (100).to_bytes(8, "little") + b"{garbage" + bytes(200)),
                          ("hf_badjson", shard), ("hf_noshard", None)):
        (root / name).mkdir()
        shutil.copy(root / "hf" / "config.json", root / name / "config.json")
        if weights is not None:
            (root / name / "model.safetensors").write_bytes(weights)
    (root / "hf_badjson" / "config.json").write_text('{"d_model": 96,')


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, tiny_cfg, tiny_params):
    """Run every case once (in parallel); {case id: (case, returncode, stderr, written)} and timings."""
    fixtures = tmp_path_factory.mktemp("fixtures")
    work = tmp_path_factory.mktemp("work")
    names = _build_fixtures(fixtures, tiny_cfg, tiny_params)
    before = _snapshot(fixtures)

    def run(case: Case):
        w = work / case.id
        w.mkdir()
        values = {**names, "W": str(w)}
        template = case.argv.replace("{TRAIN}", TRAIN).replace("{GEN}", GEN).replace("{GRPO}", GRPO)
        argv = [token.format(**values) for token in shlex.split(template)]
        t0 = time.perf_counter()
        result = _cli(argv, cwd=w)
        written = sorted(str(p.relative_to(w)) for p in w.rglob("*"))
        return case.id, (case, result.returncode, result.stderr, written, time.perf_counter() - t0,
                         case.expect.format(**values))

    t0 = time.perf_counter()
    with ThreadPoolExecutor(WORKERS) as pool:
        results = dict(pool.map(run, CASES))
    wall = time.perf_counter() - t0
    slowest = sorted(results.items(), key=lambda kv: -kv[1][4])[:5]
    print(f"\nbad-input sweep: {len(CASES)} cases in {wall:.1f} s with {WORKERS} workers; slowest: "
          + ", ".join(f"{k} {v[4]:.1f} s" for k, v in slowest))
    return {"results": results, "fixtures": fixtures, "before": before}


def test_case_ids_are_unique():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 40


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(sweep, case):
    _, code, err, written, _, expect = sweep["results"][case.id]
    lines = err.strip().splitlines()
    assert "Traceback" not in err, err
    assert code == 2, err
    assert len(lines) == 1, err
    command = case.argv.split()[0]
    assert lines[0].startswith(f"llada-jax {command}: error: "), lines[0]
    assert expect in lines[0], lines[0]
    if case.pure:
        assert written == [], f"{case.id} wrote {written}"


def test_fixtures_unchanged(sweep):
    """No case wrote into, or changed, the shared inputs (a refused run folder, a config, a file)."""
    assert _snapshot(sweep["fixtures"]) == sweep["before"]
