"""Scorers of a generated answer against its references: exact, numeric (GSM8K style), contains.

Plain string functions shared by evaluation (task accuracy) and training (GRPO rewards), so
they live below both. `SCORER_FUNCTIONS` maps each scorer's name to `(output, references) -> bool`.
"""

from __future__ import annotations

import re
from typing import Callable, Sequence


def normalize(text: str) -> str:
    """Strip and collapse whitespace."""
    return " ".join(str(text).split())


def exact_match(output: str, references: Sequence[str]) -> bool:
    """Output equals one reference after whitespace normalization."""
    out = normalize(output)
    return any(out == normalize(r) for r in references)


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def extract_number(text: str) -> float | None:
    """The answer number of a text: after the last `####` if any, else the last number in it."""
    text = str(text)
    if "####" in text:
        found = _NUMBER.findall(text.rsplit("####", 1)[1])[:1]
    else:
        found = _NUMBER.findall(text)[-1:]
    if not found:
        return None
    try:
        return float(found[0].replace(",", ""))
    except ValueError:
        return None


def numeric_match(output: str, references: Sequence[str]) -> bool:
    """The output's answer number equals a reference's (GSM8K style)."""
    got = extract_number(output)
    if got is None:
        return False
    wanted = (extract_number(r) for r in references)
    return any(w is not None and abs(got - w) < 1e-9 for w in wanted)


def contains_match(output: str, references: Sequence[str]) -> bool:
    """A reference occurs in the output (the release's reversal scoring: `answer in out`)."""
    return any(r in str(output) for r in references)


SCORER_FUNCTIONS: dict[str, Callable[[str, Sequence[str]], bool]] = {
    "exact": exact_match, "numeric": numeric_match, "contains": contains_match}
