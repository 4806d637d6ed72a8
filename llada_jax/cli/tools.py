"""`llada-jax` tool subcommands: convert-hf (HF LLaDA directory -> params export), train-tokenizer.

Thin: parse, call the library, print a summary. Registered in `cli.main` through `TOOL_SUBCOMMANDS`.
"""

from __future__ import annotations

import argparse


def _cmd_convert_hf(args: argparse.Namespace) -> int:
    from llada_jax.io.checkpoint import save_params
    from llada_jax.io.hf import load_hf_checkpoint

    cfg, params = load_hf_checkpoint(args.src, param_dtype=args.param_dtype)
    out = save_params(args.dst, cfg, params)
    print(f"converted {args.src} -> {out} ({cfg.num_params() / 1e9:.3f}B params, {cfg.param_dtype})")
    return 0


def _add_convert_hf(sub) -> None:
    p = sub.add_parser("convert-hf", help="convert a Hugging Face LLaDA directory to a llada-jax params export")
    p.add_argument("src", help="HF directory (config.json + *.safetensors; local or gs://...)")
    p.add_argument("dst", help="output directory (Orbax params + config.yaml; local or gs://...)")
    p.add_argument("--param-dtype", choices=("float32", "bfloat16", "float16"), default=None,
                   help="storage dtype (default: the checkpoint's torch_dtype)")
    p.set_defaults(func=_cmd_convert_hf)


def _cmd_train_tokenizer(args: argparse.Namespace) -> int:
    from llada_jax.data.sources import expand_files
    from llada_jax.io.tokenizer import load_tokenizer, train_tokenizer

    files = expand_files(args.input)
    out = train_tokenizer(files, args.output, args.vocab_size, model_type=args.model_type,
                          character_coverage=args.character_coverage)
    tok = load_tokenizer(out)
    print(f"trained {out} on {len(files)} file(s): vocab {tok.vocab_size}, bos {tok.bos_id}, eos/pad {tok.eos_id}, "
          f"mask {tok.mask_id}, eot {tok.eot_id}")
    return 0


def _add_train_tokenizer(sub) -> None:
    p = sub.add_parser("train-tokenizer", help="train a sentencepiece tokenizer with LLaDA's special tokens reserved")
    p.add_argument("--input", nargs="+", required=True,
                   help="text files, directories or globs, local or gs://... (one sentence a line)")
    p.add_argument("--vocab-size", type=int, required=True, help="vocabulary size (upper bound; >= 264)")
    p.add_argument("--output", required=True,
                   help="model prefix: writes PREFIX.model (and PREFIX.vocab when local); local or gs://...")
    p.add_argument("--model-type", choices=("bpe", "unigram"), default="bpe")
    p.add_argument("--character-coverage", type=float, default=1.0, metavar="FRACTION",
                   help="share of the corpus's characters that get their own piece, in (0, 1]; the rarest "
                        "others are spelled as bytes (lower it when the corpus has more distinct characters "
                        "than the vocabulary holds; default 1.0)")
    p.set_defaults(func=_cmd_train_tokenizer)


TOOL_SUBCOMMANDS = [_add_convert_hf, _add_train_tokenizer]
