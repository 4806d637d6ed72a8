"""`llada-jax` evaluation subcommands: eval, sweep, likelihood, lm-eval.

Thin: parse, load the checkpoint, tokenizer and task, call `evaluate` / `sweep` /
`likelihood`, print. Registered in `cli.main` through `EVAL_SUBCOMMANDS`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from llada_jax.cli.options import add_model_flags, add_sampler_flags, base_sample, checkpoint_tokenizer, eval_mesh



def _add_task_flags(p) -> None:
    from llada_jax.evaluation.tasks import TASK_NAMES

    p.add_argument("--task", required=True, choices=TASK_NAMES, metavar="NAME", help=", ".join(TASK_NAMES))
    p.add_argument("--task-file", type=Path, default=None, help="JSON/JSONL file of the file tasks")
    p.add_argument("--scorer", choices=("exact", "numeric"), default=None, help="override the task's scorer")
    p.add_argument("--task-option", action="append", default=[], metavar="KEY=INT",
                   help="generator option of a synthetic task, e.g. min_len=4 (repeatable)")
    p.add_argument("--num-examples", type=int, default=64)
    p.add_argument("--seed", type=int, default=0, help="examples and sampling seed")
    p.add_argument("--batch-size", type=int, default=16, help="prompts per sampler call")
    p.add_argument("--no-chat", action="store_true", help="BOS + raw prompt instead of the chat template")


def _task(args):
    from llada_jax.evaluation.tasks import load_task

    options = {}
    for item in args.task_option:
        key, _, value = item.partition("=")
        try:
            options[key.strip()] = int(value)
        except ValueError:
            raise ValueError(f"--task-option {item!r}: expected KEY=INTEGER") from None
    return load_task(args.task, num_examples=args.num_examples, seed=args.seed, path=args.task_file,
                     scorer=args.scorer, **options)


def _load(args):
    """(task, tokenizer, cfg, params): the cheap checks first, the checkpoint last."""
    from llada_jax.training.model_source import load_model
    from llada_jax.io.tokenizer import check_tokenizer_matches

    task = _task(args)
    tokenizer = checkpoint_tokenizer(args)
    cfg, params = load_model(args.checkpoint)
    check_tokenizer_matches(tokenizer, cfg)
    return task, tokenizer, cfg, params


def _cmd_eval(args: argparse.Namespace) -> int:
    from llada_jax.evaluation.evaluate import evaluate

    sample = base_sample(args.checkpoint, args)
    task, tokenizer, cfg, params = _load(args)
    result = evaluate(params, cfg, tokenizer, task, sample, batch_size=args.batch_size, seed=args.seed,
                      chat=not args.no_chat, mesh=eval_mesh(args.mesh), mc_num=args.mc_num,
                      ll_batch_size=args.ll_batch_size)
    summary = {**result.summary(), "sample": sample.to_dict()}
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        with open(args.output, "w") as f:
            json.dump({**summary, "outputs": list(result.outputs)}, f, indent=1)
    print(json.dumps(summary))
    print(f"{task.name}: accuracy {result.accuracy:.3f} ({result.correct}/{result.num_examples}), "
          f"{result.model_calls:.1f} model calls/answer, {result.tokens_per_s:.1f} tokens/s, "
          f"{result.seconds:.2f} s (+{result.compile_seconds:.1f} s compile)")
    return 0


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="accuracy and speed of one sampler setting on a task")
    add_model_flags(p)
    _add_task_flags(p)
    add_sampler_flags(p)
    p.add_argument("--mc-num", type=int, default=128, help="choice tasks: Monte Carlo samples per choice")
    p.add_argument("--ll-batch-size", type=int, default=16, help="choice tasks: Monte Carlo minibatch")
    p.add_argument("--output", type=Path, default=None, help="write the summary and every output as JSON")
    p.set_defaults(func=_cmd_eval)


def _cmd_sweep(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from llada_jax.evaluation.sweep import CSV_NAME, PLOT_CALLS, PLOT_SPEED, TABLE_NAME, grid_cells, parse_grid, run_sweep

    grid = parse_grid(args.grid)          # bad keys / values fail here, before anything loads
    sample = base_sample(args.checkpoint, args)
    total = len(grid_cells(sample, grid))
    task, tokenizer, cfg, params = _load(args)
    bar = tqdm(total=total, desc=f"sweep {task.name}", unit="cell", disable=args.no_progress)

    def on_cell(row, index, count):
        bar.update(1)
        if row.get("status") == "ok":
            bar.set_postfix_str(f"acc {float(row['accuracy']):.2f}")

    rows = run_sweep(params, cfg, tokenizer, task, grid, args.out, base=sample, batch_size=args.batch_size,
                     seed=args.seed, chat=not args.no_chat, mesh=eval_mesh(args.mesh), on_cell=on_cell)
    bar.close()
    print((args.out / TABLE_NAME).read_text())
    ran = sum(r.get("compiled") in ("new", "reused") for r in rows)
    print(f"{len(rows)} cells ({ran} run now, {sum(r.get('status') == 'skipped' for r in rows)} skipped); "
          f"wrote {args.out / CSV_NAME}, {args.out / TABLE_NAME}, {args.out / PLOT_CALLS}, {args.out / PLOT_SPEED}")
    return 0


def _add_sweep(sub) -> None:
    p = sub.add_parser("sweep", help="run a grid of sampler settings on a task: CSV, Markdown table, plots")
    add_model_flags(p)
    _add_task_flags(p)
    add_sampler_flags(p)
    p.add_argument("--grid", nargs="+", required=True, metavar="NAME=V1,V2",
                   help="sampler options and values, e.g. steps=8,16 block_length=4,8 threshold=none,0.9")
    p.add_argument("--out", type=Path, required=True, help="output directory (re-runs skip finished cells)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_sweep)


def _cmd_likelihood(args: argparse.Namespace) -> int:
    import jax

    from llada_jax.training.model_source import load_model
    from llada_jax.evaluation.evaluate import encode_prompt
    from llada_jax.inference.likelihood import log_likelihood

    tokenizer = checkpoint_tokenizer(args)
    cfg, params = load_model(args.checkpoint)
    prompt = encode_prompt(tokenizer, args.prompt, chat=not args.no_chat)
    answer = list(tokenizer.encode(args.answer))
    if args.eos:
        answer.append(tokenizer.eos_id)
    ll = log_likelihood(params, cfg, prompt, answer, mc_num=args.mc_num, batch_size=args.batch_size,
                        cfg_scale=args.cfg_scale, key=jax.random.key(args.seed))
    print(json.dumps({"log_likelihood": ll, "answer_tokens": len(answer), "per_token": ll / len(answer)}))
    return 0


def _add_likelihood(sub) -> None:
    p = sub.add_parser("likelihood", help="Monte Carlo log-likelihood of an answer given a prompt")
    add_model_flags(p)
    p.add_argument("--prompt", required=True)
    p.add_argument("--answer", required=True)
    p.add_argument("--eos", action="store_true", help="append EOS to the answer")
    p.add_argument("--no-chat", action="store_true")
    p.add_argument("--mc-num", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--cfg-scale", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_likelihood)


def _cmd_lm_eval(args: argparse.Namespace) -> int:
    from llada_jax.evaluation.lm_eval_adapter import main

    return main(args.lm_eval_args)


def _add_lm_eval(sub) -> None:
    p = sub.add_parser("lm-eval", help="run lm-eval's CLI with the llada_jax model registered (needs the eval extra)",
                       add_help=False)
    p.add_argument("lm_eval_args", nargs=argparse.REMAINDER,
                   help="lm_eval arguments, e.g. --model llada_jax --model_args checkpoint=DIR --tasks ...")
    p.set_defaults(func=_cmd_lm_eval)


EVAL_SUBCOMMANDS = [_add_eval, _add_sweep, _add_likelihood, _add_lm_eval]

