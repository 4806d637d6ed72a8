"""The argument parser of every `llada-jax` command: a bad flag is one error line, exit status 2.

argparse prints the whole usage block before its error; with a dozen flags that buries the one
line that says what was wrong. Here the error line names the command, the argument and the
rule, and points at `--help` for the usage.
"""

from __future__ import annotations

import argparse
from typing import NoReturn


class OneLineParser(argparse.ArgumentParser):
    """`argparse.ArgumentParser` whose errors are one line (subparsers inherit the class)."""

    def error(self, message: str) -> NoReturn:
        line = " ".join(message.split())
        self.exit(2, f"{self.prog}: error: {line} (see {self.prog} --help)\n")


__all__ = ["OneLineParser"]
