"""`llada-jax` evaluation subcommands: eval, sweep, likelihood, lm-eval.

Thin: parse, load the checkpoint, tokenizer and task, call `evaluate` / `sweep` /
`likelihood` / `run_recipe`, print. Registered in `cli.main` through `EVAL_SUBCOMMANDS`.

Sampler settings of eval and sweep, each layer overriding the one before: the checkpoint's
`sample:` section, the task's own defaults (the release's reversal evaluation: 28/28/28),
`--preset RECIPE:ROW` (a recipe row's settings), then the flags.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from llada_jax.cli.parser import OneLineParser
from llada_jax.cli.options import add_model_flags, add_sampler_flags, checkpoint_tokenizer, eval_mesh, sample_flags


def _count(text: str) -> int | None:
    """--num-examples: a positive integer, or 'all' (None: every example of a task file)."""
    if text.strip().lower() == "all":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'all', got {text!r}") from None


def _add_task_flags(p) -> None:
    from llada_jax.evaluation.tasks import TASK_NAMES

    p.add_argument("--task", required=True, choices=TASK_NAMES, metavar="NAME", help=", ".join(TASK_NAMES))
    p.add_argument("--task-file", type=Path, default=None, help="JSON/JSONL file of the file tasks")
    p.add_argument("--scorer", choices=("exact", "numeric", "contains"), default=None,
                   help="override the task's scorer")
    p.add_argument("--task-option", action="append", default=[], metavar="KEY=INT",
                   help="generator option of a synthetic task, e.g. min_len=4 (repeatable)")
    p.add_argument("--num-examples", type=_count, default=64,
                   help="examples to draw (with --seed), or 'all' of a task file (default 64)")
    p.add_argument("--seed", type=int, default=0, help="examples and sampling seed")
    p.add_argument("--batch-size", type=int, default=16, help="prompts per sampler call")
    p.add_argument("--no-chat", action="store_true", help="BOS + raw prompt instead of the chat template")
    p.add_argument("--preset", metavar="RECIPE:ROW", default=None,
                   help="start from an evaluation recipe row's sampler settings, e.g. "
                        "configs/eval/llada-8b-instruct-opencompass.yaml:gsm8k (flags still override)")


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


def _settings(args, task) -> dict:
    """Sampler settings (not yet validated: a sweep's grid applies first): checkpoint < task < preset < flags."""
    from llada_jax.evaluation.evaluate import checkpoint_sample
    from llada_jax.evaluation.recipes import preset_settings

    settings = checkpoint_sample(args.checkpoint).to_dict()
    settings.update(task.sample_defaults)
    if args.preset:
        settings.update(preset_settings(args.preset))
    settings.update(sample_flags(args))
    return settings


def _load(args):
    """(tokenizer, cfg, params), after the cheap checks."""
    from llada_jax.io.model_source import load_model
    from llada_jax.io.tokenizer import check_tokenizer_matches

    tokenizer = checkpoint_tokenizer(args)
    cfg, params = load_model(args.checkpoint)
    check_tokenizer_matches(tokenizer, cfg)
    return tokenizer, cfg, params


def _cmd_eval(args: argparse.Namespace) -> int:
    from llada_jax.config import SampleConfig
    from llada_jax.evaluation.evaluate import evaluate
    from llada_jax.io.paths import as_path

    task = _task(args)
    sample = SampleConfig.from_dict(_settings(args, task))
    if args.output and as_path(args.output).is_dir():  # found now, not after the whole evaluation
        raise IsADirectoryError(f"--output {args.output} is a directory; expected the JSON file to write")
    tokenizer, cfg, params = _load(args)
    result = evaluate(params, cfg, tokenizer, task, sample, batch_size=args.batch_size, seed=args.seed,
                      chat=not args.no_chat, mesh=eval_mesh(args.mesh), mc_num=args.mc_num,
                      ll_batch_size=args.ll_batch_size)
    summary = {**result.summary(), "sample": sample.to_dict()}
    if args.output:
        from llada_jax.io.paths import write_text

        write_text(args.output, json.dumps({**summary, "outputs": list(result.outputs)}, indent=1))
    print(json.dumps(summary))
    print(f"{task.name}: accuracy {result.accuracy:.3f} ({result.correct}/{result.num_examples}), "
          f"{result.model_calls} model calls/answer, {result.tokens_per_s:.1f} tokens/s, "
          f"{result.seconds:.2f} s (+{result.compile_seconds:.1f} s compile)")
    return 0


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="accuracy and speed of one sampler setting on a task")
    add_model_flags(p)
    _add_task_flags(p)
    add_sampler_flags(p)
    p.add_argument("--mc-num", type=int, default=128, help="choice tasks: Monte Carlo samples per choice")
    p.add_argument("--ll-batch-size", type=int, default=16, help="choice tasks: Monte Carlo minibatch")
    p.add_argument("--output", default=None, help="write the summary and every output as JSON (a path or URL)")
    p.set_defaults(func=_cmd_eval)


def _cmd_sweep(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from llada_jax.evaluation.sweep import (CSV_NAME, PLOT_CALLS, PLOT_SPEED, TABLE_NAME, count_cells, grid_cells,
                                            parse_grid, run_sweep)
    from llada_jax.io.paths import as_path, is_file, path_str

    grid = parse_grid(args.grid)          # bad keys / values fail here, before anything loads
    if is_file(args.out):
        raise NotADirectoryError(f"--out {path_str(as_path(args.out))} is a file; expected a directory")
    task = _task(args)
    settings = _settings(args, task)      # validated per cell, after the grid applies
    total = len(grid_cells(settings, grid))
    tokenizer, cfg, params = _load(args)
    bar = tqdm(total=total, desc=f"sweep {task.name}", unit="cell", disable=args.no_progress)

    def on_cell(row, index, count):
        bar.update(1)
        if row.get("status") == "ok":
            bar.set_postfix_str(f"acc {float(row['accuracy']):.2f}")

    rows = run_sweep(params, cfg, tokenizer, task, grid, args.out, base=settings, batch_size=args.batch_size,
                     seed=args.seed, chat=not args.no_chat, mesh=eval_mesh(args.mesh), on_cell=on_cell,
                     checkpoint=path_str(args.checkpoint))
    bar.close()
    out = as_path(args.out)
    print((out / TABLE_NAME).read_text())
    print(f"{len(rows)} cells: {count_cells(rows)}; "
          f"wrote {out / CSV_NAME}, {out / TABLE_NAME}, {out / PLOT_CALLS}, {out / PLOT_SPEED}")
    return 0


def _add_sweep(sub) -> None:
    p = sub.add_parser("sweep", help="run a grid of sampler settings on a task: CSV, Markdown table, plots")
    add_model_flags(p)
    _add_task_flags(p)
    add_sampler_flags(p)
    p.add_argument("--grid", nargs="+", required=True, metavar="NAME=V1,V2",
                   help="sampler options and values, e.g. steps=8,16 block_length=4,8 threshold=none,0.9")
    p.add_argument("--out", required=True, help="output directory, local or gs://... (re-runs skip finished cells)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_sweep)


def _cmd_likelihood(args: argparse.Namespace) -> int:
    import jax

    from llada_jax.io.model_source import load_model
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


LM_EVAL_USAGE = """llada-jax lm-eval: lm-evaluation-harness with the llada_jax model registered. Two forms:

  llada-jax lm-eval --recipe FILE --checkpoint DIR [--tasks ROW,ROW] [--out DIR] [--limit N] ...
      every row (or the rows named) of an evaluation recipe (configs/eval/*.yaml), each with its
      own few-shot count and model settings; writes OUT/<row>.json and OUT/summary.{csv,md}
  llada-jax lm-eval --model llada_jax --model_args checkpoint=DIR[,gen_length=N,...] --tasks ... [options]
      lm-eval's own command line (its `run` options are listed below)
"""


def _recipe_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="llada-jax lm-eval", add_help=False,
                                description="run an evaluation recipe through lm-eval, one task row at a time")
    p.add_argument("--recipe", type=Path, required=True, help="recipe YAML (configs/eval/*.yaml)")
    p.add_argument("--tasks", default=None, help="comma-separated rows of the recipe to run (default: all)")
    p.add_argument("--out", type=Path, default=Path("eval_results"), help="output directory (default: eval_results)")
    p.add_argument("--include_path", "--include-path", dest="include_path", type=Path, default=None,
                   help="a folder of extra lm-eval task YAMLs (local tasks)")
    p.add_argument("--limit", type=float, default=None,
                   help="examples per task, or a fraction below 1 (lm-eval's --limit; for a quick look)")
    p.add_argument("--batch_size", "--batch-size", dest="batch_size", type=int, default=16,
                   help="prompts (or likelihood pairs) per model call")
    p.add_argument("--seed", type=int, default=0)
    add_model_flags(p)
    return p


def _run_recipe(argv: list[str]) -> int:
    from llada_jax.evaluation.lm_eval_adapter import run_recipe
    from llada_jax.evaluation.recipes import SUMMARY_CSV, SUMMARY_MD, load_recipe
    from llada_jax.io.model_source import load_model
    from llada_jax.io.tokenizer import check_tokenizer_matches

    args = _recipe_parser().parse_args(argv)
    recipe = load_recipe(args.recipe)                  # a bad file or row name fails before the model loads
    rows = recipe.select([t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None)
    limit = None if args.limit is None else (int(args.limit) if args.limit >= 1 else args.limit)
    tokenizer = checkpoint_tokenizer(args)
    cfg, params = load_model(args.checkpoint)
    check_tokenizer_matches(tokenizer, cfg)

    def on_row(row, lines):
        shown = ", ".join(f"{x['metric']} {x['value']:.4f}" for x in lines)
        print(f"{row.name} ({row.task}): {shown} [{row.settings_text()}]", flush=True)

    run_recipe(rows, params, cfg, tokenizer, args.out, include_path=args.include_path, limit=limit,
               batch_size=args.batch_size, seed=args.seed, on_row=on_row)
    print((args.out / SUMMARY_MD).read_text())
    print(f"{len(rows)} task rows; wrote {args.out / SUMMARY_CSV}, {args.out / SUMMARY_MD} and one JSON per row")
    return 0


def _cmd_lm_eval(args: argparse.Namespace) -> int:
    argv = list(args.lm_eval_args)
    wants_help = "-h" in argv or "--help" in argv
    if any(a == "--recipe" or a.startswith("--recipe=") for a in argv):
        if wants_help:
            _recipe_parser().print_help()
            return 0
        return _run_recipe(argv)
    from llada_jax.evaluation.lm_eval_adapter import main

    if not argv or wants_help:
        print(LM_EVAL_USAGE)
        _recipe_parser().print_help()
        print("\nlm-eval's own options (the second form):\n", flush=True)
        try:
            return main(["run", "--help"])
        except SystemExit as e:
            return int(e.code or 0)
    return main(argv)


def _add_lm_eval(sub) -> None:
    # prefix_chars="+": argparse takes none of the arguments as this parser's options, so all of
    # them, lm-eval's flags and --help included, reach `_cmd_lm_eval` untouched.
    p = sub.add_parser("lm-eval", add_help=False, prefix_chars="+",
                       help="lm-eval with the llada_jax model registered, or an evaluation recipe "
                            "(needs the eval extra; `llada-jax lm-eval --help`)")
    p.add_argument("lm_eval_args", nargs=argparse.REMAINDER,
                   help="--recipe FILE --checkpoint DIR ..., or lm_eval's: --model llada_jax --model_args ...")
    p.set_defaults(func=_cmd_lm_eval)


EVAL_SUBCOMMANDS = [_add_eval, _add_sweep, _add_likelihood, _add_lm_eval]

