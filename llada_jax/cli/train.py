"""`llada-jax` training subcommands: pretrain, sft, vrpo, grpo, export, compile-check, quickstart, plot.

Thin: parse, start multi-host if asked, call the library, print a summary. Registered in
`cli.main` through `TRAIN_SUBCOMMANDS`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# Exit status of a run stopped by repeated non-finite steps (the last good checkpoint is kept).
EXIT_DIVERGED = 3


def _add_distributed_flags(p) -> None:
    g = p.add_argument_group("multi-host (auto-detected on TPU pods and under SLURM)")
    g.add_argument("--coordinator", default=None, help="host:port of process 0, for an explicit multi-process start")
    g.add_argument("--num-processes", type=int, default=None)
    g.add_argument("--process-id", type=int, default=None)
    g.add_argument("--distributed", choices=("auto", "on", "off"), default="auto",
                   help="start jax.distributed: auto (SLURM, TPU env vars detected), on (e.g. on every worker of a "
                        "Cloud TPU pod), off")


def _cmd_train(args: argparse.Namespace, objective: str) -> int:
    from llada_jax.training import preemption

    preemption.install()  # before the slow imports and compiles: a SIGTERM from now on exits 0
    from llada_jax.config import load_config

    # A bad file or override is refused before JAX and the multi-host start.
    config = load_config(args.config, [*args.overrides, f"train.objective={objective}"])
    from llada_jax.training.distributed import initialize

    info = initialize(args.coordinator, args.num_processes, args.process_id, mode=args.distributed)
    import jax

    from llada_jax.training.loop import make_dataset, run_training
    from llada_jax.training.timing import format_summary

    lead = jax.process_index() == 0
    if lead:
        print(f"{objective}: {config.model.num_params() / 1e6:.1f}M params, {jax.device_count()} devices "
              f"({jax.devices()[0].device_kind}), {info['process_count']} process(es), "
              f"run dir {config.train.checkpoint_dir}", flush=True)
    dataset = make_dataset(config)
    eval_dataset = make_dataset(config, split="eval") if config.train.eval_every > 0 else None
    if preemption.requested():
        if lead:
            print(f"{objective}: stopped by SIGTERM before training started; nothing written", flush=True)
        return 0
    result = run_training(config, dataset, progress=not args.no_progress, eval_dataset=eval_dataset)
    if lead:
        resumed = f", resumed from step {result.resumed_from}" if result.resumed_from is not None else ""
        print(f"{objective} {result.status} at step {result.step}{resumed}; last loss "
              f"{result.last_metrics.get('loss', float('nan')):.4f}"
              + (f"; skipped non-finite steps {result.skipped_steps}" if result.skipped_steps else ""), flush=True)
        print(f"time: {format_summary(result.timing)}", flush=True)
    return EXIT_DIVERGED if result.status == "diverged" else 0


def _add_train_parser(sub, name: str, help_text: str) -> None:
    p = sub.add_parser(name, help=help_text)
    p.add_argument("--config", type=Path, required=True, help="YAML config (model/train/data/mesh sections)")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. train.steps=100")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs still go to metrics.jsonl)")
    _add_distributed_flags(p)
    p.set_defaults(func=lambda a: _cmd_train(a, name))


def _add_pretrain(sub) -> None:
    _add_train_parser(sub, "pretrain", "pretrain with the masked diffusion loss (resumes from the run's checkpoints)")


def _add_sft(sub) -> None:
    _add_train_parser(sub, "sft", "supervised fine-tuning on prompt/response rows (prompt never masked)")


def _add_vrpo(sub) -> None:
    _add_train_parser(sub, "vrpo", "preference optimisation (VRPO, LLaDA 1.5) on prompt/chosen/rejected rows, from "
                                   "train.init_from (also the frozen reference)")


def _add_grpo(sub) -> None:
    _add_train_parser(sub, "grpo", "reinforcement learning (diffu-GRPO, d1) on prompt/answer rows with a reward, from "
                                   "train.init_from (also the frozen reference)")


def _cmd_export(args: argparse.Namespace) -> int:
    from llada_jax.io.run_checkpoint import export_checkpoint

    out = export_checkpoint(args.run_dir, args.out, step=args.step, fmt=args.format, dtype=args.dtype)
    print(f"exported {args.run_dir} (step {args.step if args.step is not None else 'latest'}) -> {out} ({args.format})")
    return 0


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="export a training checkpoint's params (params-only or Hugging Face layout)")
    p.add_argument("run_dir", help="training run directory (train.checkpoint_dir; local or gs://...)")
    p.add_argument("out", help="output directory (local or gs://...)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--format", choices=("params", "hf"), default="params")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None, help="HF tensor dtype")
    p.set_defaults(func=_cmd_export)


def _cmd_compile_check(args: argparse.Namespace) -> int:
    from llada_jax.planning import compile_check as cc
    from llada_jax.config import load_config

    config = load_config(args.config, args.overrides)
    if args.search:
        policies = args.policies.split(",") if args.policies else None
        accums = _positive_ints("--grad-accum", args.grad_accum) if args.grad_accum else None
        result = cc.search_plans(config, args.topology, num_slices=args.num_slices, policies=policies,
                                 grad_accums=accums)
        print(json.dumps(result) if args.json else cc.format_search(result))
        return 0 if result["best"] is not None else 1
    report = cc.compile_check(config, args.topology, num_slices=args.num_slices)
    print(json.dumps(report) if args.json else cc.format_report(report))
    return 0 if report["fits"] is not False else 1


def _positive_ints(flag: str, text: str) -> list[int]:
    """A comma-separated list of positive integers given to `flag`."""
    try:
        values = [int(a) for a in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise ValueError(f"{flag} {text!r}: expected comma-separated positive integers, e.g. 1,2,4")
    return values


def _add_compile_check(sub) -> None:
    p = sub.add_parser("compile-check", help="AOT-compile the train step for a TPU topology on this host (needs libtpu)")
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--topology", required=True, help="e.g. v5p:4x4x4, v4:2x2x1, v5e:8x8, v6e:16x16")
    p.add_argument("--num-slices", type=int, default=1, help="slices joined over DCN (mesh.dcn_* sizes)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--search", action="store_true",
                   help="compile each remat policy x grad_accum split; mark the fastest plan that fits")
    p.add_argument("--policies", default=None, help="--search: comma-separated remat policies (default: all)")
    p.add_argument("--grad-accum", default=None,
                   help="--search: comma-separated microbatch splits (default: powers of two the mesh allows)")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides")
    p.set_defaults(func=_cmd_compile_check)


def _cmd_quickstart(args: argparse.Namespace) -> int:
    from llada_jax.cli.quickstart import run_quickstart

    run_quickstart(args.workdir, steps=args.steps, sft_steps=args.sft_steps, overrides=args.overrides,
                   log=lambda line: print(line, flush=True), progress=not args.no_progress)
    return 0


def _add_quickstart(sub) -> None:
    p = sub.add_parser("quickstart", help="tokenizer, tiny LLaDA pretrained on the bundled Python docs, SFT on "
                                          "copying and reversing digits, export, sampling")
    p.add_argument("--workdir", type=Path, default=Path("runs/quickstart"))
    p.add_argument("--steps", type=int, default=None, help="pretraining steps (default: configs/quickstart.yaml)")
    p.add_argument("--sft-steps", type=int, default=None, help="SFT steps (default: quickstart.SFT_SETTINGS)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides of configs/quickstart.yaml (both stages)")
    p.set_defaults(func=_cmd_quickstart)


def _cmd_verify(args: argparse.Namespace) -> int:
    from llada_jax.training.checkpointer import verify_run

    results = verify_run(args.run_dir)
    for step, problem in results:
        print(f"step {step}: ok" if problem is None else problem, flush=True)
    bad = [step for step, problem in results if problem is not None]
    print(f"{args.run_dir}: {len(results) - len(bad)} of {len(results)} checkpoint(s) verify"
          + (f"; failed: {', '.join(map(str, bad))}" if bad else ""), flush=True)
    return 1 if bad else 0


def _add_verify(sub) -> None:
    p = sub.add_parser("verify", help="check every checkpoint of a run against its fingerprints (exit 1 if one fails)")
    p.add_argument("run_dir", help="training run directory (train.checkpoint_dir; local or gs://...)")
    p.set_defaults(func=_cmd_verify)




def _cmd_plot(args: argparse.Namespace) -> int:
    from llada_jax.training.plot import plot_training_curves

    out = plot_training_curves(args.run_dir, args.out if args.out is not None else args.run_dir / "curves.png")
    print(f"wrote {out}")
    return 0


def _add_plot(sub) -> None:
    p = sub.add_parser("plot", help="plot a run's training curves (loss, lr, grad norm, tokens/s, MFU, eval) to a PNG")
    p.add_argument("run_dir", type=Path, help="training run directory (holds metrics.jsonl)")
    p.add_argument("--out", type=Path, default=None, help="PNG path (default: RUN_DIR/curves.png)")
    p.set_defaults(func=_cmd_plot)




TRAIN_SUBCOMMANDS = [_add_pretrain, _add_sft, _add_vrpo, _add_grpo, _add_export, _add_verify, _add_compile_check, _add_quickstart,
                     _add_plot]

