"""Worked example of post-training (issue 16): a small LLaDA that is weak at reversing digit strings
after a short SFT, then diffu-GRPO with the `exact` scorer and VRPO on pairs of (right answer, the
model's own wrong answer), each from the SFT model, scored on held-out prompts it never saw.

The task: `reverse 482135` -> `531284`, 6 digits by default (`--digits MIN MAX`), generated with a
fixed seed. Four disjoint prompt sets (no string in two of them): the held-out evaluation
prompts, GRPO prompt rows `{"prompt", "answer"}`, SFT rows and VRPO prompts (turned into
`{"prompt", "chosen", "rejected"}` pairs by sampling the SFT model on them and keeping its wrong
answers). Every phase is a `llada-jax` command (`sft`, `export`, `eval`, `grpo`, `vrpo`), on
configs/quickstart.yaml's model with a digit tokenizer; accuracy is exact match at temperature 0
with a 95% Wilson interval. It prints each phase's wall time and the before/after table, and
writes the same as JSON (`--json-out`). Re-running skips finished phases (delete the work
directory to start over).

The defaults are the settings of the README's measured run (README, Post-training, worked
example): there the SFT model scores 0.672, GRPO raises it to 0.793 and VRPO to 0.812. VRPO's
beta is 8: at the usual 0.1 its likelihood displacement on these near-miss pairs (a right answer
against the model's own, one digit off) lowers accuracy instead (0.129).

    python benchmarks/posttrain_example.py --workdir runs/posttrain_example
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "quickstart.yaml"
# One digit count by default: every prompt is then as many tokens long, so SFT rows (prompt + answer,
# EOS-padded to one length) and sampling (prompt + GEN_LENGTH) put the answer at the same positions.
# With 4-6 digits the shorter prompts had more answer positions in training than when sampled,
# and the SFT model stopped their answers early (4 digits: 1/93 right).
MIN_DIGITS, MAX_DIGITS = 6, 6
GEN_LENGTH = 8                      # answer slots: 6 digits + EOS, rounded up
# Prompts per set. The sets are drawn from one seeded stream of distinct strings, in this order.
SPLITS = {"heldout": 256, "grpo": 2048, "sft": 20000, "vrpo": 8192}
SEED = 16
# Settings of the model and sampler shared by every phase (the quickstart model, a digit vocabulary).
COMMON = ("model.vocab_size=384", "data.format=jsonl", "data.chat_template=plain", "train.tensorboard=false",
          f"sample.gen_length={GEN_LENGTH}", f"sample.steps={GEN_LENGTH}", f"sample.block_length={GEN_LENGTH}")


# ---------------------------------------------------------------------------------------------
# Data.

def reverse_example(digits: str) -> dict:
    """One prompt row: `{"prompt": "reverse 48213", "answer": "31284"}`."""
    return {"prompt": f"reverse {digits}", "answer": digits[::-1]}


def digit_splits(sizes: dict[str, int] = SPLITS, seed: int = SEED, min_digits: int = MIN_DIGITS,
                 max_digits: int = MAX_DIGITS) -> dict[str, list[dict]]:
    """Disjoint sets of reversal rows: distinct random digit strings (length uniform in
    min..max digits, PCG64 from `seed`) dealt out to the sets in the order of `sizes`."""
    total = sum(sizes.values())
    capacity = sum(10 ** n for n in range(min_digits, max_digits + 1))
    if total > capacity // 2:
        raise ValueError(f"digit_splits: {total} distinct strings asked of {capacity} possible; use fewer")
    rng = np.random.default_rng(seed)
    seen: dict[str, None] = {}
    while len(seen) < total:
        n = int(rng.integers(min_digits, max_digits + 1))
        seen.setdefault("".join(str(d) for d in rng.integers(0, 10, size=n)), None)
    strings = list(seen)
    out, start = {}, 0
    for name, size in sizes.items():
        out[name] = [reverse_example(s) for s in strings[start:start + size]]
        start += size
    return out


def preference_pairs(rows: Sequence[dict], outputs: Sequence[str]) -> list[dict]:
    """VRPO rows `{"prompt", "chosen", "rejected"}`: the right answer against the model's own answer,
    for the prompts the model got wrong (exact match after whitespace normalisation) with a
    non-empty answer."""
    from llada_jax.evaluation.tasks import exact_match

    if len(rows) != len(outputs):
        raise ValueError(f"preference_pairs: {len(outputs)} outputs for {len(rows)} prompts")
    return [{"prompt": r["prompt"], "chosen": r["answer"], "rejected": o.strip()}
            for r, o in zip(rows, outputs) if o.strip() and not exact_match(o, [r["answer"]])]


def write_jsonl(path: Path, rows: Sequence[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ---------------------------------------------------------------------------------------------
# Scores.

def wilson_interval(correct: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95% at the default z): unlike the normal
    approximation it stays inside [0, 1] and is not empty at 0 or n successes."""
    if n <= 0 or not 0 <= correct <= n:
        raise ValueError(f"wilson_interval: need 0 <= correct <= n and n > 0, got {correct}/{n}")
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def score_row(name: str, correct: int, n: int, seconds: float | None) -> dict:
    lo, hi = wilson_interval(correct, n)
    return {"model": name, "correct": correct, "n": n, "accuracy": correct / n, "ci95": [lo, hi],
            "seconds": None if seconds is None else round(seconds, 1)}


def table(rows: Sequence[dict]) -> str:
    lines = ["| model | held-out exact match | 95% interval | phase time (s) |", "|---|---|---|---|"]
    for r in rows:
        lo, hi = r["ci95"]
        t = "" if r["seconds"] is None else f"{r['seconds']:.0f}"
        lines.append(f"| {r['model']} | {r['correct']}/{r['n']} = {r['accuracy']:.3f} | {lo:.3f}-{hi:.3f} | {t} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Phases (each a `llada-jax` command).

class Runner:
    """Runs `llada-jax` commands and keeps the wall time of each phase."""

    def __init__(self, workdir: Path):
        self.exe = str(Path(sys.executable).with_name("llada-jax"))
        self.workdir = workdir
        self.times: dict[str, float] = {}

    def __call__(self, phase: str, *args: str) -> None:
        cmd = [self.exe, *args]
        print("$ " + " ".join(cmd), flush=True)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True)
        self.times[phase] = self.times.get(phase, 0.0) + time.perf_counter() - t0

    def train(self, phase: str, command: str, run_dir: Path, export: Path, tokenizer: Path,
              settings: Sequence[str]) -> None:
        """A training command, then its export with the tokenizer beside it (skipped when exported)."""
        if (export / "config.yaml").is_file():
            return
        self(phase, command, "--config", str(CONFIG), "--no-progress", *COMMON, f"train.tokenizer={tokenizer}",
             f"train.checkpoint_dir={run_dir}", *settings)
        self(phase, "export", str(run_dir), str(export))
        shutil.copy(tokenizer, export / "tokenizer.model")

    def evaluate(self, phase: str, checkpoint: Path, task_file: Path, out: Path, batch_size: int) -> dict:
        """`llada-jax eval` of the jsonl task (exact match, temperature 0); the JSON it wrote."""
        if not out.is_file():
            self(phase, "eval", "--checkpoint", str(checkpoint), "--task", "jsonl", "--task-file", str(task_file),
                 "--num-examples", "all", "--no-chat", "--batch-size", str(batch_size), "--output", str(out))
        return json.loads(out.read_text())


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("runs/posttrain_example"))
    ap.add_argument("--digits", type=int, nargs=2, default=(MIN_DIGITS, MAX_DIGITS), metavar=("MIN", "MAX"),
                    help="digit string lengths (inclusive)")
    ap.add_argument("--sft-steps", type=int, default=200, help="a short SFT: the model is still weak")
    ap.add_argument("--sft-lr", type=float, default=2e-3)
    ap.add_argument("--grpo-steps", type=int, default=120)
    ap.add_argument("--grpo-prompts", type=int, default=32, help="prompts per rollout batch")
    ap.add_argument("--grpo-g", type=int, default=8, help="completions per prompt (grpo.num_generations)")
    ap.add_argument("--grpo-mu", type=int, default=2)
    ap.add_argument("--grpo-beta", type=float, default=0.01)
    ap.add_argument("--grpo-temperature", type=float, default=0.9)
    ap.add_argument("--grpo-scale", action=argparse.BooleanOptionalAction, default=True, help="grpo.scale_advantages")
    ap.add_argument("--grpo-lr", type=float, default=1e-4)
    ap.add_argument("--vrpo-steps", type=int, default=40, help="40 x 64 pairs: about one pass over them")
    ap.add_argument("--vrpo-batch", type=int, default=64, help="pairs per step")
    ap.add_argument("--vrpo-beta", type=float, default=8.0, help="vrpo.beta: large, so pairs already apart stop pulling")
    ap.add_argument("--vrpo-n", type=int, default=8, help="ELBO samples per response (vrpo.n_samples)")
    ap.add_argument("--vrpo-lr", type=float, default=5e-5)
    ap.add_argument("--vrpo-sft-weight", type=float, default=0.0, help="vrpo.sft_weight (0: VRPO alone)")
    ap.add_argument("--vrpo-coupled", action=argparse.BooleanOptionalAction, default=False,
                    help="vrpo.coupled: a pair's chosen and rejected answers share timesteps and masks")
    ap.add_argument("--eval-batch-size", type=int, default=256)
    ap.add_argument("--only", choices=("sft", "grpo", "vrpo", "all"), default="all",
                    help="stop after this phase (sft: the SFT model and its score)")
    ap.add_argument("--json-out", type=Path, default=None)
    args = ap.parse_args(argv)

    from llada_jax.cli.quickstart import sft_row_length
    from llada_jax.io.tokenizer import load_tokenizer, train_tokenizer

    wd = args.workdir.absolute()
    wd.mkdir(parents=True, exist_ok=True)
    run = Runner(wd)
    t0 = time.perf_counter()
    splits = digit_splits(min_digits=args.digits[0], max_digits=args.digits[1])
    files = {name: write_jsonl(wd / f"{name}.jsonl", rows) for name, rows in splits.items()}
    sft_rows = write_jsonl(wd / "sft_rows.jsonl", [{"prompt": r["prompt"], "response": r["answer"]}
                                                   for r in splits["sft"]])
    tok = wd / "tokenizer.model"
    if not tok.is_file():
        corpus = wd / "corpus.txt"
        corpus.write_text("".join(f"{r['prompt']}\n{r['answer']}\n" for r in splits["sft"]))
        train_tokenizer([corpus], tok.with_suffix(""), 300)
    tokenizer = load_tokenizer(tok)
    seq_len = sft_row_length(tokenizer, sft_rows, GEN_LENGTH)
    run.times["data"] = time.perf_counter() - t0

    sft_export = wd / "sft_export"
    steps = args.sft_steps
    run.train("sft", "sft", wd / "sft", sft_export, tok, [
        f"data.files=[{sft_rows}]", f"train.steps={steps}", f"train.seq_len={seq_len}",
        f"train.learning_rate={args.sft_lr}", f"train.final_learning_rate={args.sft_lr / 10}",
        f"train.warmup_steps={min(20, steps // 10)}", f"train.decay_steps={steps // 3}",
        f"train.checkpoint_every_steps={steps}", f"train.log_every={max(1, steps // 10)}"])
    before = run.evaluate("eval_sft", sft_export, files["heldout"], wd / "eval_sft.json", args.eval_batch_size)
    rows = [score_row("SFT (start)", before["correct"], before["num_examples"], run.times.get("sft"))]

    # Both objectives start from the SFT export, which is also their frozen reference.
    post = [f"train.init_from={sft_export}", f"train.seq_len={seq_len}", "train.weight_decay=0",
            "train.decay_steps=0", "train.checkpoint_every_steps=1000000"]
    if args.only in ("grpo", "all"):
        g = args.grpo_steps
        run.train("grpo", "grpo", wd / "grpo", wd / "grpo_export", tok, [
            *post, f"data.files=[{files['grpo']}]", f"train.steps={g}",
            f"train.batch_size={args.grpo_prompts * args.grpo_g}", f"grpo.num_generations={args.grpo_g}",
            f"grpo.mu={args.grpo_mu}", f"grpo.beta={args.grpo_beta}", f"grpo.temperature={args.grpo_temperature}",
            f"grpo.scale_advantages={str(args.grpo_scale).lower()}",
            f"train.learning_rate={args.grpo_lr}", f"train.final_learning_rate={args.grpo_lr}",
            f"train.warmup_steps={min(5, g // 10)}", f"train.log_every={max(1, g // 10)}"])
        after = run.evaluate("eval_grpo", wd / "grpo_export", files["heldout"], wd / "eval_grpo.json",
                             args.eval_batch_size)
        rows.append(score_row("GRPO (exact scorer)", after["correct"], after["num_examples"], run.times.get("grpo")))
    if args.only in ("vrpo", "all"):
        # Pairs: the SFT model's own answers (temperature 0) to the VRPO prompts, kept where wrong.
        sampled = run.evaluate("vrpo_pairs", sft_export, files["vrpo"], wd / "sample_vrpo.json",
                               args.eval_batch_size)
        pairs = write_jsonl(wd / "vrpo_pairs.jsonl", preference_pairs(splits["vrpo"], sampled["outputs"]))
        v = args.vrpo_steps
        run.train("vrpo", "vrpo", wd / "vrpo", wd / "vrpo_export", tok, [
            *post, f"data.files=[{pairs}]", f"train.steps={v}", f"train.batch_size={args.vrpo_batch}",
            f"vrpo.beta={args.vrpo_beta}", f"vrpo.n_samples={args.vrpo_n}", f"vrpo.sft_weight={args.vrpo_sft_weight}",
            f"vrpo.coupled={str(args.vrpo_coupled).lower()}",
            f"train.learning_rate={args.vrpo_lr}", f"train.final_learning_rate={args.vrpo_lr}",
            f"train.warmup_steps={min(5, v // 10)}", f"train.log_every={max(1, v // 10)}"])
        after = run.evaluate("eval_vrpo", wd / "vrpo_export", files["heldout"], wd / "eval_vrpo.json",
                             args.eval_batch_size)
        rows.append(score_row("VRPO (own wrong answers)", after["correct"], after["num_examples"],
                              run.times.get("vrpo")))
        rows[-1]["pairs"] = sum(1 for _ in pairs.open())

    print(table(rows))
    summary = {"machine": "2-core CPU box (see README)", "total_seconds": round(time.perf_counter() - t0, 1),
               "phase_seconds": {k: round(v, 1) for k, v in run.times.items()}, "results": rows,
               "splits": {k: len(v) for k, v in splits.items()},
               "settings": {k: v for k, v in vars(args).items() if k not in ("workdir", "json_out", "only")}}
    print(json.dumps(summary))
    if args.json_out:
        args.json_out.write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
