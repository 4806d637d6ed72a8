"""`llada-jax generate`: sample answers from a checkpoint, optionally showing every unmasking step.

Thin: parse, load the tokenizer and the checkpoint (a training run folder, a llada-jax export
or a HF LLaDA directory), encode (left-padded batch), call the sampler, print. Registered in
`cli.main` through `GENERATE_SUBCOMMANDS`. Model, tokenizer and sampler flags are
shared with the eval commands (`cli.options`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from llada_jax.cli.options import (NEWLINE_MARK, add_model_flags, add_sampler_flags, base_sample,
                                   checkpoint_tokenizer, eval_mesh, trajectory_lines)


def _read_prompts(args) -> list[str]:
    prompts = list(args.prompt or [])
    if args.prompt_file is not None:
        from llada_jax.io.paths import read_text

        lines = read_text(args.prompt_file, "prompt file").splitlines()
        prompts += [line.replace("\\n", "\n") for line in lines if line.strip()]
    if not prompts:
        raise ValueError("give --prompt TEXT or --prompt-file FILE (one prompt a line)")
    return prompts


def _cmd_generate(args: argparse.Namespace) -> int:
    import jax
    import numpy as np

    from llada_jax.io.model_source import load_model
    from llada_jax.evaluation.evaluate import decode_answer, encode_prompts, generate_answers, place_params
    from llada_jax.inference.sampling import generate_with_stats
    from llada_jax.io.tokenizer import check_tokenizer_matches

    texts = _read_prompts(args)
    sample = base_sample(args.checkpoint, args)
    tokenizer = checkpoint_tokenizer(args)
    cfg, params = load_model(args.checkpoint)
    check_tokenizer_matches(tokenizer, cfg)
    prompts = encode_prompts(tokenizer, texts, chat=args.chat, pad_id=cfg.pad_token_id)
    options = sample.to_dict()
    stops = (cfg.eos_token_id, cfg.eot_token_id)
    p = prompts.ids.shape[1]
    t0 = time.perf_counter()
    if args.show_steps:
        result = generate_with_stats(params, cfg, prompts.ids, prompts.mask, key=jax.random.key(args.seed),
                                     return_trajectory=True, **options)
        tokens, calls = np.asarray(result.tokens)[:, p:], int(result.model_calls)
        for row, text in enumerate(texts):
            if len(texts) > 1:
                print(f"### prompt {row + 1}: {text}")
            lines = trajectory_lines(result.trajectory[:, row, p:], tokenizer, cfg)
            width = len(str(len(lines)))
            for step, line in enumerate(lines):
                print(f"step {step + 1:>{width}}/{len(lines)}: {line}")
            print(f"answer: {decode_answer(tokenizer, tokens[row], stops)}")
    else:
        mesh = eval_mesh(args.mesh)
        run = generate_answers(place_params(params, cfg, mesh), cfg, prompts, sample, batch_size=args.batch_size,
                               seed=args.seed, mesh=mesh, warmup=False)
        tokens, calls = run.tokens, run.model_calls
        for row, text in enumerate(texts):
            answer = decode_answer(tokenizer, tokens[row], stops)
            print(f"### prompt {row + 1}: {text}\n{answer}" if len(texts) > 1 else answer)
    seconds = time.perf_counter() - t0
    stats = {"prompts": len(texts), "gen_length": sample.gen_length, "model_calls": calls,
             "seconds_incl_compile": round(seconds, 3), "sample": sample.to_dict()}
    print(json.dumps(stats), file=sys.stderr)
    return 0


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="sample answers by iterative unmasking (optionally showing each step)")
    add_model_flags(p)
    p.add_argument("--prompt", action="append", help="prompt text (repeat for a batch)")
    p.add_argument("--prompt-file", type=Path, default=None, help="one prompt a line, run as left-padded batches")
    p.add_argument("--chat", action="store_true", help="wrap each prompt in the chat template (Instruct models)")
    add_sampler_flags(p)
    p.add_argument("--seed", type=int, default=0, help="PRNG seed (temperature > 0, random remasking)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per sampler call")
    p.add_argument("--show-steps", action="store_true",
                   help=f"print the answer after every step, masked positions as \u2591, newlines as {NEWLINE_MARK}")
    p.set_defaults(func=_cmd_generate)


GENERATE_SUBCOMMANDS = [_add_generate]
