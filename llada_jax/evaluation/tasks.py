"""Task suites with exact answers and no downloads: prompts, references and a scorer.

Synthetic tasks are generated from a seed with NumPy's PCG64, so a seed gives the same
examples on every machine:

- `reverse`  "reverse: 3 1 4 1" -> "1 4 1 3"
- `copy`     "copy: 3 1 4 1" -> "3 1 4 1"
- `infill`   copy with gaps: "infill: 3 1 4 1 5 | 3 _ _ 1 5" -> "1 4" (the missing middle)
- `sort`     "sort: 5 3 9 1" -> "1 3 5 9"
- `addition` "123+456=" -> "579" (numeric scorer)

File tasks (`path` required):

- `poem-forward` / `poem-reverse`: the release's reversal evaluation (its `eval_reverse.py`).
  Its couplet file (`data/poem_data.json`, a JSON list of `{"first", "second", "source"}`)
  gives the release's prompts, `{first}的下一句是什么？ 直接输出句子即可。` -> second (forward)
  and `{second}的上一句是什么？ 直接输出句子即可。` -> first (reverse), scored as the release
  does (right when the reference line is contained in the output), with the release's sampler
  defaults (gen_length = steps = block_length = 28) in `Task.sample_defaults`. A file of poems
  (items that are lists of lines, or objects with a `lines` list) gives every pair of
  consecutive lines as "next line: {a}" -> b and "previous line: {b}" -> a, exact match.
- `choice`: JSONL of `{"prompt" | "question", "choices": [...], "answer": index | text}`,
  scored by the likelihood of each choice.
- `jsonl`: JSONL of `{"prompt", "answer" | "answers"}` free-form prompts, scored by exact match
  or, with `scorer="numeric"`, by the final number (GSM8K `#### 42` style).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from llada_jax.data.scoring import (SCORER_FUNCTIONS, contains_match, exact_match, extract_number,  # noqa: F401
                                     normalize, numeric_match)


@dataclasses.dataclass(frozen=True)
class Example:
    """One prompt with its accepted answers; `choices`/`label` for multiple choice."""

    prompt: str
    references: tuple[str, ...]
    choices: tuple[str, ...] = ()
    label: int | None = None


@dataclasses.dataclass(frozen=True)
class Task:
    """A named list of examples and how an output is scored."""

    name: str
    examples: tuple[Example, ...]
    scorer: str = "exact"
    # Sampler settings this task is run with unless the caller overrides them (the CLI's flags).
    sample_defaults: dict = dataclasses.field(default_factory=dict)

    @property
    def kind(self) -> str:
        """`choice` (scored by likelihood) or `generate` (scored on sampled text)."""
        return "choice" if self.scorer == "choice" else "generate"

    def score(self, output, example: Example) -> bool:
        """Is `output` right: generated text for `generate` tasks, a chosen index for `choice`."""
        if self.scorer == "choice":
            return int(output) == example.label
        return SCORER_FUNCTIONS[self.scorer](str(output), example.references)

    def correct(self, outputs: Sequence) -> int:
        """How many of `outputs` (one per example, in order) are right."""
        if len(outputs) != len(self.examples):
            raise ValueError(f"{self.name}: {len(outputs)} outputs for {len(self.examples)} examples")
        return sum(bool(self.score(o, e)) for o, e in zip(outputs, self.examples))

    def accuracy(self, outputs: Sequence) -> float:
        return self.correct(outputs) / len(outputs) if len(outputs) else 0.0


# ---------------------------------------------------------------------------------------------
# Synthetic generators: (rng, n, options) -> examples.

def _digits(rng: np.random.Generator, min_len: int, max_len: int) -> list[str]:
    return [str(d) for d in rng.integers(0, 10, size=int(rng.integers(min_len, max_len + 1)))]


def _digit_task(verb: str, transform: Callable[[list[str]], Sequence[str]]):
    """Generator of `"{verb}: d d d"` -> the digits after `transform` (reverse, copy, sort)."""
    def generate(rng, n, min_len=4, max_len=8):
        out = []
        for _ in range(n):
            s = _digits(rng, min_len, max_len)
            out.append(Example(f"{verb}: {' '.join(s)}", (" ".join(transform(s)),)))
        return out
    return generate


_gen_reverse = _digit_task("reverse", lambda s: s[::-1])
_gen_copy = _digit_task("copy", lambda s: s)
_gen_sort = _digit_task("sort", sorted)


def _gen_infill(rng, n, min_len=5, max_len=9):
    out = []
    for _ in range(n):
        s = _digits(rng, max(min_len, 3), max(max_len, 3))
        gap = int(rng.integers(1, len(s) - 1))          # 1 .. L-2 missing, one kept on each side
        start = int(rng.integers(1, len(s) - gap))       # 1 .. L-gap-1
        gapped = s[:start] + ["_"] * gap + s[start + gap:]
        out.append(Example(f"infill: {' '.join(s)} | {' '.join(gapped)}", (" ".join(s[start:start + gap]),)))
    return out


def _gen_addition(rng, n, digits=3):
    out = []
    hi = 10 ** int(digits)
    for _ in range(n):
        a, b = (int(v) for v in rng.integers(0, hi, size=2))
        out.append(Example(f"{a}+{b}=", (str(a + b),)))
    return out


SYNTHETIC: dict[str, tuple[Callable, str]] = {
    "reverse": (_gen_reverse, "exact"),
    "copy": (_gen_copy, "exact"),
    "infill": (_gen_infill, "exact"),
    "sort": (_gen_sort, "exact"),
    "addition": (_gen_addition, "numeric"),
}
FILE_TASKS = ("poem-forward", "poem-reverse", "choice", "jsonl")
TASK_NAMES = tuple(SYNTHETIC) + FILE_TASKS


# ---------------------------------------------------------------------------------------------
# File tasks.

def _read_jsonl(path: Path) -> list[dict]:
    records = []
    with open(path, "rb") as f:  # bytes: a line that is not UTF-8 is reported with its number
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number}: not valid JSON ({e.msg})") from None
            except UnicodeDecodeError:
                raise ValueError(f"{path}:{number}: not UTF-8 text") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
            records.append(record)
    if not records:
        raise ValueError(f"{path}: no records")
    return records


def _text_field(record: dict, names: Sequence[str], where: str) -> str:
    for name in names:
        if name in record:
            value = record[name]
            if not isinstance(value, str):
                raise ValueError(f"{where}: '{name}' must be a string, got {type(value).__name__}")
            return value
    raise ValueError(f"{where}: missing '{names[0]}'")


def _jsonl_examples(path: Path) -> list[Example]:
    out = []
    for i, r in enumerate(_read_jsonl(path), 1):
        where = f"{path}: record {i}"
        prompt = _text_field(r, ("prompt", "question"), where)
        if "answers" in r:
            refs = r["answers"]
            if not isinstance(refs, list) or not refs or not all(isinstance(x, str) for x in refs):
                raise ValueError(f"{where}: 'answers' must be a non-empty list of strings")
        else:
            refs = [_text_field(r, ("answer", "reference"), where)]
        out.append(Example(prompt, tuple(refs)))
    return out


def _choice_examples(path: Path) -> list[Example]:
    out = []
    for i, r in enumerate(_read_jsonl(path), 1):
        where = f"{path}: record {i}"
        prompt = _text_field(r, ("prompt", "question"), where)
        choices = r.get("choices")
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
            raise ValueError(f"{where}: 'choices' must be a list of at least two non-empty strings")
        answer = r.get("answer")
        if isinstance(answer, bool) or answer is None:
            raise ValueError(f"{where}: missing 'answer' (an index into choices or the right choice's text)")
        if isinstance(answer, str):
            if answer not in choices:
                raise ValueError(f"{where}: answer {answer!r} is not one of the choices")
            answer = choices.index(answer)
        if not isinstance(answer, int) or not 0 <= answer < len(choices):
            raise ValueError(f"{where}: answer index {answer!r} is outside [0, {len(choices)})")
        out.append(Example(prompt, (choices[answer],), tuple(choices), answer))
    return out


# The release's reversal prompts (eval_reverse.py): question suffixes and the extra instruction
# (" just output the sentence directly.") appended to every prompt, and its sampler defaults.
POEM_NEXT, POEM_PREVIOUS, POEM_INSTRUCTION = "的下一句是什么？", "的上一句是什么？", " 直接输出句子即可。"
POEM_SAMPLE_DEFAULTS = {"gen_length": 28, "steps": 28, "block_length": 28}


def _couplet_examples(path: Path, data: list, reverse: bool) -> list[Example]:
    out = []
    for i, item in enumerate(data):
        if not isinstance(item, dict) or not all(isinstance(item.get(k), str) and item[k].strip()
                                                 for k in ("first", "second")):
            raise ValueError(f"{path}: couplet {i} must be an object with non-empty 'first' and 'second' strings")
        first, second = item["first"], item["second"]
        if reverse:
            out.append(Example(second + POEM_PREVIOUS + POEM_INSTRUCTION, (first,)))
        else:
            out.append(Example(first + POEM_NEXT + POEM_INSTRUCTION, (second,)))
    return out


def _line_pair_examples(path: Path, data: list, reverse: bool) -> list[Example]:
    out = []
    for i, poem in enumerate(data):
        lines = poem.get("lines") if isinstance(poem, dict) else poem
        if not isinstance(lines, list) or len(lines) < 2 or not all(isinstance(x, str) and x.strip() for x in lines):
            raise ValueError(f"{path}: poem {i} must have at least two non-empty lines")
        for a, b in zip(lines, lines[1:]):
            a, b = a.strip(), b.strip()
            out.append(Example(f"previous line: {b}", (a,)) if reverse else Example(f"next line: {a}", (b,)))
    return out


def _poem_task(path: Path, reverse: bool) -> tuple[list[Example], str, dict]:
    """(examples, scorer, sampler defaults) of a couplet file (the release's) or a file of poems."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if isinstance(data, dict) and "poems" in data:
        data = data["poems"]
    if not isinstance(data, list) or not data:
        raise ValueError(f"{path}: expected a non-empty list of couplets ({{'first', 'second'}}) or of poems "
                         f"(lists of lines or objects with 'lines')")
    if isinstance(data[0], dict) and "first" in data[0]:
        return _couplet_examples(path, data, reverse), "contains", dict(POEM_SAMPLE_DEFAULTS)
    return _line_pair_examples(path, data, reverse), "exact", {}


def _subsample(examples: list[Example], n: int | None, seed: int) -> list[Example]:
    """The first n of a seeded permutation, in file order (all of them when n is None or larger)."""
    if n is None or n >= len(examples):
        return examples
    keep = np.sort(np.random.default_rng(seed).permutation(len(examples))[:n])
    return [examples[i] for i in keep]


def load_task(name: str, *, num_examples: int | None = 64, seed: int = 0, path: str | Path | None = None,
              scorer: str | None = None, **options) -> Task:
    """Build task `name` (see `TASK_NAMES`): `num_examples` examples drawn with `seed`.

    File tasks need `path`; `options` go to a synthetic generator (`min_len`, `max_len`,
    `digits`); `scorer` overrides the default (`exact`, `numeric` or `contains`) of a
    generation task.
    """
    if name not in TASK_NAMES:
        close = difflib.get_close_matches(name, TASK_NAMES, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ValueError(f"unknown task '{name}'{hint}; known: {', '.join(TASK_NAMES)}")
    if num_examples is not None and (not isinstance(num_examples, int) or num_examples <= 0):
        raise ValueError(f"num_examples: must be a positive integer, got {num_examples!r}")
    if scorer is not None and scorer not in SCORER_FUNCTIONS:
        raise ValueError(f"scorer: '{scorer}' is not one of {', '.join(SCORER_FUNCTIONS)}")
    if name in SYNTHETIC:
        if path is not None:
            raise ValueError(f"task '{name}' is generated; it takes no task file")
        generate, default_scorer = SYNTHETIC[name]
        try:
            examples = generate(np.random.default_rng(seed), num_examples or 64, **options)
        except TypeError as e:
            raise ValueError(f"task '{name}': bad option ({e})") from None
        return Task(name, tuple(examples), scorer or default_scorer)
    if options:
        raise ValueError(f"task '{name}' takes no options, got {', '.join(options)}")
    if path is None:
        raise ValueError(f"task '{name}' needs a task file (path / --task-file)")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"task file {path} does not exist")
    if name == "choice":
        if scorer is not None:
            raise ValueError("task 'choice' is scored by likelihood; it takes no scorer")
        return Task(name, tuple(_subsample(_choice_examples(path), num_examples, seed)), "choice")
    if name == "jsonl":
        examples, default_scorer, defaults = _jsonl_examples(path), "exact", {}
    else:
        examples, default_scorer, defaults = _poem_task(path, reverse=name == "poem-reverse")
    return Task(name, tuple(_subsample(examples, num_examples, seed)), scorer or default_scorer, defaults)
