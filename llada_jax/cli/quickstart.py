"""The quickstart: tokenizer, a tiny LLaDA pretrained on the bundled Python docs, then taught to
copy and to reverse digit strings, an export, and the commands to go on with.

Everything lands under one work directory:

    corpus/            one text file per `pydoc_data.topics` topic (no download)
    tokenizer.model    sentencepiece, special ids as configs/quickstart.yaml expects
    run/               pretraining: Orbax checkpoints, config.yaml, metrics.jsonl, tb/ (TensorBoard),
                       curves.png (the training curves; also in sft/)
    sft.jsonl          `copy: 2 7 1 -> 2 7 1` and `reverse: 2 7 1 -> 1 7 2` rows
    sft/               the SFT stage, started from the pretraining run folder (`train.init_from`)
    export/            params-only export of the SFT model with its tokenizer (generate/eval/sweep)

Both stages go through the full pipeline (Grain, the sharded step on the available devices,
Orbax checkpoints, progress bar). Run it again and each stage resumes from its latest
checkpoint (or is skipped when complete). The end shows the model unmasking both directions of
a digit string it never saw, its accuracy on the held-out prompts that `llada-jax eval` uses,
and the commands that work on what it made. Lines meant for the user go to `log`.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"

# The SFT stage: configs/quickstart.yaml with these settings (then the user's overrides). Rows are
# BOS + prompt, then the answer + EOS (`plain` template: as `eval --no-chat` encodes a prompt),
# EOS-padded to exactly the prompt + sample.gen_length (`sft_row_length`): when every row has one
# length the model learns where the row ends, and sampling any other length shifts its answers.
SFT_SETTINGS = ("train.objective=sft", "train.steps=1200", "train.learning_rate=2e-3",
                "train.final_learning_rate=2e-4", "train.warmup_steps=20", "train.decay_steps=300",
                "train.checkpoint_every_steps=300", "train.log_every=50",
                "data.format=jsonl", "data.chat_template=plain",
                "sample.gen_length=8", "sample.steps=8", "sample.block_length=8")
DIGITS = 3                       # digits per string: a fixed length, learned in minutes
TASK_OPTIONS = {"min_len": DIGITS, "max_len": DIGITS}
TRAIN_ROWS = 5000                # per direction (the held-out evaluation prompts are left out)
EVAL_EXAMPLES, EVAL_SEED = 64, 0  # the defaults of `llada-jax eval`: the printed command sees the same prompts
DEMO_DIGITS = "2 7 1"


def unmasking_frames(lines: Sequence[str], frames: int = 6) -> list[str]:
    """A few of the per-step lines of `cli.options.trajectory_lines`, from all masked to the final text."""
    calls = len(lines)
    picks = sorted({0, *np.linspace(0, calls - 1, frames).round().astype(int).tolist()})
    return [f"step {c + 1:3d}/{calls}: {lines[c]}" for c in picks]


def fit_schedule(config_path, settings: Sequence[str], steps: int | None,
                 overrides: Sequence[str] = ()) -> tuple[list[str], str | None]:
    """`train.steps=N` plus, when N is below warmup + decay, both scaled down to fit (and a note).

    Warmup and decay set in `overrides` are kept (the config then names the key to change).
    """
    from llada_jax.config import load_config

    if steps is None:
        return [], None
    explicit = any(s.startswith(("train.warmup_steps=", "train.decay_steps=")) for s in overrides)
    train = load_config(config_path, [*settings, "train.steps=1000000000"]).train  # long enough to read the schedule
    warm, decay = train.warmup_steps, train.decay_steps
    if steps >= warm + decay or explicit:
        return [f"train.steps={steps}"], None
    new_warm = warm * steps // (warm + decay)
    new_decay = decay * steps // (warm + decay)
    note = (f"{steps} steps are fewer than warmup {warm} + decay {decay}: schedule scaled to warmup {new_warm}, "
            f"decay {new_decay} (set train.warmup_steps / train.decay_steps to choose)")
    return [f"train.steps={steps}", f"train.warmup_steps={new_warm}", f"train.decay_steps={new_decay}"], note


def write_digit_rows(path: Path, rows_per_direction: int = TRAIN_ROWS) -> Path:
    """SFT rows copying and reversing digit strings; the evaluation prompts and the demo are held out."""
    from llada_jax.evaluation.tasks import load_task

    held_out = {f"{name}: {DEMO_DIGITS}" for name in ("copy", "reverse")}
    held_out |= {e.prompt for name in ("copy", "reverse")
                 for e in load_task(name, num_examples=EVAL_EXAMPLES, seed=EVAL_SEED, **TASK_OPTIONS).examples}
    rows = [{"prompt": e.prompt, "response": e.references[0]}
            for name, seed in (("copy", 101), ("reverse", 102))
            for e in load_task(name, num_examples=rows_per_direction, seed=seed, **TASK_OPTIONS).examples
            if e.prompt not in held_out]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def sft_row_length(tokenizer, rows_path: Path, gen_length: int) -> int:
    """The SFT stage's `train.seq_len`: the longest encoded prompt (BOS + text, as sampling encodes
    it) plus the `gen_length` that sampling fills."""
    from llada_jax.evaluation.evaluate import encode_prompt

    prompts = {json.loads(line)["prompt"] for line in rows_path.read_text().splitlines()}
    return max(len(encode_prompt(tokenizer, p, chat=False)) for p in prompts) + gen_length


def next_commands(export: Path) -> list[str]:
    """The commands that go on from the quickstart's export (printed at the end, tested as printed)."""
    ckpt = shlex.quote(str(export))
    task = f"--no-chat --task-option min_len={DIGITS} --task-option max_len={DIGITS}"
    return [f"llada-jax generate --checkpoint {ckpt} --prompt {shlex.quote('reverse: 9 0 4')} --show-steps",
            f"llada-jax eval --checkpoint {ckpt} --task reverse {task}",
            f"llada-jax sweep --checkpoint {ckpt} --task reverse {task} --grid steps=1,2,4,8 "
            f"--out {shlex.quote(str(export.parent / 'sweep'))}"]


def _train_stage(config, tokenizer, name: str, log, progress: bool):
    from llada_jax.training.loop import make_dataset, run_training
    from llada_jax.training.metrics import read_metrics

    result = run_training(config, make_dataset(config, tokenizer), progress=progress)
    if result.resumed_from is not None:
        log(f"{name}: resumed from step {result.resumed_from}")
    records = [r for r in read_metrics(config.train.checkpoint_dir) if "loss" in r and "skipped" not in r]
    losses = [r["loss"] for r in records]
    if losses:
        speed = np.median([r["tokens_per_s"] for r in records if "tokens_per_s" in r] or [np.nan])
        log(f"{name}: loss first logged {losses[0]:.3f}, last {losses[-1]:.3f}; median {speed:,.0f} tokens/s")
    return result, losses


def run_quickstart(workdir: str | Path = "runs/quickstart", *, steps: int | None = None,
                   sft_steps: int | None = None, overrides: Sequence[str] = (),
                   config_path: str | Path = DEFAULT_CONFIG, log: Callable[[str], None] = lambda s: None,
                   progress: bool = True) -> dict:
    """Pretrain, SFT (each resumed if begun), export and show the model at work; returns a summary dict."""
    import shutil
    import time

    import jax

    from llada_jax.cli.options import trajectory_lines
    from llada_jax.config import load_config
    from llada_jax.data import write_default_corpus
    from llada_jax.evaluation.evaluate import encode_prompts, evaluate
    from llada_jax.evaluation.tasks import load_task
    from llada_jax.inference.sampling import generate_with_stats
    from llada_jax.io.tokenizer import load_tokenizer, train_tokenizer
    from llada_jax.io.run_checkpoint import export_checkpoint
    from llada_jax.training.plot import plot_training_curves

    start = time.perf_counter()
    workdir = Path(workdir).absolute()
    tok_path, run_dir, sft_dir, export = (workdir / "tokenizer.model", workdir / "run", workdir / "sft",
                                          workdir / "export")
    common = [f"train.tokenizer={tok_path}"]
    pre = [*common, f"train.checkpoint_dir={run_dir}", f"data.files=[{workdir / 'corpus'}]", *overrides]
    sft = [*common, *SFT_SETTINGS, f"train.checkpoint_dir={sft_dir}", f"train.init_from={run_dir}",
           f"data.files=[{workdir / 'sft.jsonl'}]", *overrides]
    notes = []
    for settings, n, stage in ((pre, steps, "pretraining"), (sft, sft_steps, "SFT")):
        extra, note = fit_schedule(config_path, settings, n, overrides)
        settings += extra
        notes += [f"{stage}: {note}"] if note else []
    pre_config, sft_config = load_config(config_path, pre), load_config(config_path, sft)
    for note in notes:
        log(note)

    corpus = write_default_corpus(workdir / "corpus")
    log(f"corpus: {len(corpus)} documents of the Python docs in {workdir / 'corpus'}")
    if not tok_path.is_file():
        log(f"training a sentencepiece tokenizer ({pre_config.model.vocab_size} pieces)...")
        train_tokenizer(corpus, tok_path.with_suffix(""), pre_config.model.vocab_size)
    tokenizer = load_tokenizer(tok_path)
    train = pre_config.train
    log(f"model: {pre_config.model.num_params() / 1e6:.2f}M params on {jax.device_count()} "
        f"{jax.devices()[0].platform} device(s)")
    log(f"1. pretraining: {train.steps} steps of {train.batch_size} x {train.seq_len} tokens of the docs; "
        f"run folder {run_dir}")
    pre_result, pre_losses = _train_stage(pre_config, tokenizer, "pretraining", log, progress)

    seq_len = sft_row_length(tokenizer, write_digit_rows(workdir / "sft.jsonl"), sft_config.sample.gen_length)
    sft_config = sft_config.replace(train=sft_config.train.replace(seq_len=seq_len))
    train = sft_config.train
    log(f"2. SFT from the pretraining run: {train.steps} steps of {train.batch_size} rows of {train.seq_len} tokens, "
        f"'copy: {DEMO_DIGITS}' -> "
        f"'{DEMO_DIGITS}' and 'reverse: {DEMO_DIGITS}' -> '{' '.join(reversed(DEMO_DIGITS.split()))}' "
        f"({DIGITS} digits; the evaluation strings held out); run folder {sft_dir}")
    sft_result, sft_losses = _train_stage(sft_config, tokenizer, "SFT", log, progress)

    export_checkpoint(sft_dir, export)
    shutil.copy(tok_path, export / "tokenizer.model")
    log(f"3. exported the SFT model with its tokenizer to {export}")
    curves = [plot_training_curves(d, d / "curves.png") for d in (run_dir, sft_dir)]
    log(f"   training curves: {curves[0]} and {curves[1]} (`llada-jax plot RUN_DIR` draws them for any run)")

    params, cfg, sample = jax.device_get(sft_result.state.params), sft_config.model, sft_config.sample
    prompts = [f"copy: {DEMO_DIGITS}", f"reverse: {DEMO_DIGITS}"]
    enc = encode_prompts(tokenizer, prompts, chat=False, pad_id=cfg.pad_token_id)
    shown = generate_with_stats(params, cfg, enc.ids, enc.mask, return_trajectory=True, **sample.to_dict())
    p = enc.ids.shape[1]
    log(f"4. sampling {sample.gen_length} tokens in {sample.steps} steps (░ still masked) for two prompts "
        f"not in the training data:")
    for row, text in enumerate(prompts):
        log(f"  {text}")
        for line in unmasking_frames(trajectory_lines(shown.trajectory[:, row, p:], tokenizer, cfg), frames=5):
            log("    " + line)
    accuracy = {}
    for name in ("copy", "reverse"):
        task = load_task(name, num_examples=EVAL_EXAMPLES, seed=EVAL_SEED, **TASK_OPTIONS)
        result = evaluate(params, cfg, tokenizer, task, sample, batch_size=EVAL_EXAMPLES, chat=False, warmup=False)
        accuracy[name] = result.accuracy
        log(f"  held-out {name}: {result.correct}/{result.num_examples} right (e.g. {task.examples[0].prompt!r} -> "
            f"{result.outputs[0]!r})")
    log(f"done in {time.perf_counter() - start:.0f} s")
    commands = next_commands(export)
    log("next (the export is also a --checkpoint for likelihood, lm-eval and train.init_from; so is each run "
        "folder, e.g. --checkpoint " + shlex.quote(f"{sft_dir}@{sft_result.step}") + "):")
    for command in commands:
        log("  " + command)
    return {"status": (pre_result.status, sft_result.status), "step": pre_result.step, "sft_step": sft_result.step,
            "resumed_from": pre_result.resumed_from, "sft_resumed_from": sft_result.resumed_from,
            "losses": pre_losses, "sft_losses": sft_losses, "accuracy": accuracy, "run_dir": str(run_dir),
            "sft_dir": str(sft_dir), "export": str(export), "curves": [str(c) for c in curves],
            "next_commands": commands}
