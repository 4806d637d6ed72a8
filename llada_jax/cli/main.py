"""The `llada-jax` command: builds the parser from the command groups and dispatches.

Each group module (`tools`, `train`, `evaluate`, `generate`) lists its subcommand registrars,
each an `_add_<name>(subparsers)` that sets `func`. Errors the user can fix (bad config,
missing or damaged files, a checkpoint that does not verify) are printed as one line and exit
with status 2; so is a path that cannot be written (`FileExistsError`, `IsADirectoryError`,
`NotADirectoryError`, `PermissionError`); a bad flag too (`cli.parser.OneLineParser`).
"""

from __future__ import annotations

import argparse
import sys

from llada_jax.cli.evaluate import EVAL_SUBCOMMANDS
from llada_jax.cli.generate import GENERATE_SUBCOMMANDS
from llada_jax.cli.parser import OneLineParser
from llada_jax.cli.serve import SERVE_SUBCOMMANDS
from llada_jax.cli.tools import TOOL_SUBCOMMANDS
from llada_jax.cli.train import TRAIN_SUBCOMMANDS

# Subcommand registrars, in the order `--help` lists them.
SUBCOMMANDS = [*TOOL_SUBCOMMANDS, *TRAIN_SUBCOMMANDS, *EVAL_SUBCOMMANDS, *GENERATE_SUBCOMMANDS,
               *SERVE_SUBCOMMANDS]


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="llada-jax", description="LLaDA masked diffusion LM in JAX")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from llada_jax.config import ConfigError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ConfigError, FileNotFoundError, ValueError, KeyError, FileExistsError, IsADirectoryError,
            NotADirectoryError, PermissionError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        message = str(message).strip().splitlines()[0] if str(message).strip() else type(e).__name__
        print(f"llada-jax {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
