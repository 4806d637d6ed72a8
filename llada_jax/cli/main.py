"""The `llada-jax` command: builds the parser from the command groups and dispatches.

Each group module (`tools`, `train`, `evaluate`, `generate`) lists its subcommand registrars,
each an `_add_<name>(subparsers)` that sets `func`. Errors the user can fix (bad config,
missing or damaged files, a checkpoint that does not verify) are printed as one line and exit
with status 2; so is a path that cannot be written (`FileExistsError`, `IsADirectoryError`,
`NotADirectoryError`, `PermissionError`).
"""

from __future__ import annotations

import argparse
import os
import sys

from llada_jax.cli.evaluate import EVAL_SUBCOMMANDS
from llada_jax.cli.generate import GENERATE_SUBCOMMANDS
from llada_jax.cli.tools import TOOL_SUBCOMMANDS
from llada_jax.cli.train import TRAIN_SUBCOMMANDS

# Subcommand registrars, in the order `--help` lists them.
SUBCOMMANDS = [*TOOL_SUBCOMMANDS, *TRAIN_SUBCOMMANDS, *EVAL_SUBCOMMANDS, *GENERATE_SUBCOMMANDS]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llada-jax", description="LLaDA masked diffusion LM in JAX")
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
        # Reads abandoned by the error (e.g. Orbax's pending array reads of a damaged checkpoint)
        # would print "Exception ignored in <coroutine>" tracebacks when collected: the one line
        # above already says what failed.
        sys.unraisablehook = lambda unraisable: None
        return 2


def run() -> None:
    """The program's entry point (`llada-jax`, `python -m llada_jax.cli`): `main`, then exit with its status.

    After a reported error (status 2) the interpreter's teardown writes nothing more to stderr:
    a failed Orbax read of a damaged checkpoint leaves tensorstore reads in flight, and when
    they complete into Orbax's already-closed event loop they print "Event loop is closed"
    tracebacks under the one line that says what failed. Only the program's exit path does this;
    `main` called in a process that goes on leaves stderr alone.
    """
    code = main()
    if code == 2:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stderr.fileno())
    sys.exit(code)


if __name__ == "__main__":
    run()
