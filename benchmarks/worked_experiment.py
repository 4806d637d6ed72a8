"""Worked experiment: SFT a small LLaDA on digit copying and reversal (the two directions of one
sequence), then sweep the sampling schedules on held-out reversal prompts.

Every stage is a `llada-jax` command (train-tokenizer, sft, export, eval, sweep), so the script
is also an end-to-end check of the CLI. It prints each stage's wall time as JSON and the sweep
table at the end. Re-running resumes: finished stages (tokenizer, training, export, sweep cells)
are skipped.

    python benchmarks/worked_experiment.py --workdir runs/worked --steps 1500
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from llada_jax.evaluation.tasks import load_task

EVAL_SEED, EVAL_EXAMPLES = 0, 64
TASK_OPTIONS = dict(min_len=4, max_len=5)


def run(cmd: list[str]) -> float:
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


def write_data(workdir: Path, n_train: int) -> Path:
    """SFT rows of both directions; prompts of the evaluation examples are left out."""
    held_out = {e.prompt for name in ("copy", "reverse")
                for e in load_task(name, num_examples=EVAL_EXAMPLES, seed=EVAL_SEED, **TASK_OPTIONS).examples}
    rows = []
    for name, seed in (("copy", 101), ("reverse", 102)):
        for e in load_task(name, num_examples=n_train, seed=seed, **TASK_OPTIONS).examples:
            if e.prompt not in held_out:
                rows.append({"prompt": e.prompt, "response": e.references[0]})
    path = workdir / "sft.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # The chat template's role names too, so they get their own pieces.
    (workdir / "corpus.txt").write_text("".join(f"user\nassistant\n{r['prompt']}\n{r['response']}\n" for r in rows))
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("runs/worked_experiment"))
    ap.add_argument("--steps", type=int, default=1500, help="SFT steps")
    ap.add_argument("--train-examples", type=int, default=20000, help="per direction")
    ap.add_argument("--grid", nargs="+", default=["steps=4,8,16", "block_length=4,16",
                                                   "remasking=low_confidence,random"])
    ap.add_argument("--min-len", type=int, default=4, help="digits per sequence, at least")
    ap.add_argument("--max-len", type=int, default=5, help="digits per sequence, at most")
    ap.add_argument("--learning-rate", type=float, default=2e-3)
    ap.add_argument("--init-from", type=Path, default=None, help="continue from this export (same tokenizer)")
    ap.add_argument("--tokenizer", type=Path, default=None, help="reuse this sentencepiece model")
    ap.add_argument("--docs", type=Path, default=None, help="copy the sweep table and plots here")
    args = ap.parse_args()
    exe = str(Path(sys.executable).with_name("llada-jax"))
    wd = args.workdir.absolute()
    wd.mkdir(parents=True, exist_ok=True)
    TASK_OPTIONS.update(min_len=args.min_len, max_len=args.max_len)
    task_flags = [f"--task-option=min_len={args.min_len}", f"--task-option=max_len={args.max_len}"]
    times = {}

    data = write_data(wd, args.train_examples)
    tok = wd / "tok.model"
    if args.tokenizer is not None and not tok.is_file():
        shutil.copy(args.tokenizer, tok)
    if not tok.is_file():
        times["tokenizer_s"] = run([exe, "train-tokenizer", "--input", str(wd / "corpus.txt"), "--vocab-size", "300",
                                    "--output", str(wd / "tok")])
    config = {
        "model": {"vocab_size": 512, "d_model": 128, "n_layers": 4, "n_heads": 4, "n_kv_heads": 4,
                  "mlp_hidden_size": 384, "rope_theta": 10000.0, "max_seq_len": 64, "mask_token_id": 3,
                  "bos_token_id": 1, "eos_token_id": 2, "eot_token_id": 4, "pad_token_id": 2, "dtype": "float32"},
        "train": {"objective": "sft", "steps": args.steps, "batch_size": 64, "seq_len": 48,
                  "learning_rate": args.learning_rate, "final_learning_rate": args.learning_rate / 10, "warmup_steps": min(50, args.steps // 10),
                  "decay_steps": args.steps // 3, "weight_decay": 0.01, "tokenizer": str(tok),
                  "checkpoint_dir": str(wd / "run"), "checkpoint_every_steps": 500, "log_every": 50,
                  "tensorboard": False, "init_from": str(args.init_from.absolute()) if args.init_from else None},
        "data": {"files": [str(data)], "format": "jsonl"},
        "sample": {"gen_length": 16, "steps": 16, "block_length": 16},
        "mesh": {"data": 1, "fsdp": -1, "tensor": 1},
    }
    cfg_path = wd / "sft.yaml"
    cfg_path.write_text(yaml.safe_dump(config, sort_keys=False))
    export = wd / "export"
    if not (export / "config.yaml").is_file():
        times["sft_s"] = run([exe, "sft", "--config", str(cfg_path), "--no-progress"])
        times["export_s"] = run([exe, "export", str(wd / "run"), str(export)])
        shutil.copy(tok, export / "tokenizer.model")

    for name in ("copy", "reverse"):
        times[f"eval_{name}_s"] = run([exe, "eval", "--checkpoint", str(export), "--task", name, "--num-examples",
                                       str(EVAL_EXAMPLES), "--seed", str(EVAL_SEED), "--batch-size", "64",
                                       "--output", str(wd / f"eval_{name}.json"), *task_flags])
    times["sweep_s"] = run([exe, "sweep", "--checkpoint", str(export), "--task", "reverse", "--num-examples",
                            str(EVAL_EXAMPLES), "--seed", str(EVAL_SEED), "--batch-size", "64", "--no-progress",
                            "--out", str(wd / "sweep"), *task_flags, "--grid", *args.grid])
    if args.docs:
        args.docs.mkdir(parents=True, exist_ok=True)
        for f in ("results.md", "accuracy_vs_model_calls.png", "accuracy_vs_tokens_per_s.png"):
            shutil.copy(wd / "sweep" / f, args.docs / f"worked_{f}")
    print(json.dumps({"machine": "see README", **{k: round(v, 1) for k, v in times.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
