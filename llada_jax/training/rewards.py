"""GRPO reward functions: a named scorer (`exact`, `contains`, `numeric`: the ones `eval` has) or a
user function `module:function(prompt, completion, answer) -> float`.

A named scorer gives 1.0 when the completion matches the answer, else 0.0. A reward that raises
or is not a finite number stops the run with one line naming the function and the row.
"""

from __future__ import annotations

import importlib
import math
import numbers
import os
import sys
from typing import Callable, Sequence

import numpy as np

from llada_jax.data.scoring import SCORER_FUNCTIONS

RewardFn = Callable[[str, str, str], float]


class RewardError(ValueError):
    """A reward function failed or returned something other than a finite number."""


def _scorer_reward(name: str) -> RewardFn:
    match = SCORER_FUNCTIONS[name]

    def reward(prompt: str, completion: str, answer: str) -> float:
        return 1.0 if match(completion, [answer]) else 0.0

    reward.__qualname__ = f"scorer {name}"
    return reward


def load_reward(spec: str) -> RewardFn:
    """The reward named `spec`: a scorer name, or `module:function` (importable from PYTHONPATH or the
    working directory)."""
    if spec in SCORER_FUNCTIONS:
        return _scorer_reward(spec)
    module, sep, attr = str(spec).partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"grpo.reward: '{spec}' is neither a scorer ({', '.join(SCORER_FUNCTIONS)}) nor "
                         f"'module:function'")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())  # a module beside the run, as with `python -m` (the console script lacks it)
    try:
        fn = getattr(importlib.import_module(module), attr)
    except ImportError as e:
        raise ValueError(f"grpo.reward: cannot import module '{module}' ({e})") from None
    except AttributeError:
        raise ValueError(f"grpo.reward: module '{module}' has no function '{attr}'") from None
    if not callable(fn):
        raise ValueError(f"grpo.reward: '{spec}' is not callable")
    return fn


def reward_name(fn: RewardFn) -> str:
    """`scorer NAME` or `module:function`, as the error lines name a reward."""
    name = getattr(fn, "__qualname__", repr(fn))
    return name if name.startswith("scorer ") else f"{getattr(fn, '__module__', '?')}:{name}"


def _clip(text: str, n: int = 60) -> str:
    return repr(text if len(text) <= n else text[:n] + "...")


def compute_rewards(fn: RewardFn, prompts: Sequence[str], completions: Sequence[str], answers: Sequence[str],
                    rows: Sequence[str]) -> np.ndarray:
    """float32 [N]: `fn(prompt, completion, answer)` per row; `rows` names each row's source (file:line)."""
    out = np.empty(len(completions), np.float32)
    for i, (p, c, a, where) in enumerate(zip(prompts, completions, answers, rows)):
        try:
            value = fn(p, c, a)
        except Exception as e:  # a user function may raise anything: name it and the input
            raise RewardError(f"reward {reward_name(fn)} raised {type(e).__name__}: {e} on row {where} "
                              f"(completion {_clip(c)})") from None
        if not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
            raise RewardError(f"reward {reward_name(fn)} returned {value!r} ({type(value).__name__}), not a finite "
                              f"number, on row {where} (completion {_clip(c)})")
        out[i] = float(value)
    return out
