"""Evaluate a model on a task: accuracy and the speed figures of one sampler setting.

Prompts are encoded once (LLaDA chat template by default) and left-padded to one length, and
the last batch is filled with copies of a real row, so every batch of a task has one shape
and the sampler compiles once per setting. Batch `i` samples with `fold_in(key(seed), i)`,
so every setting sees the same examples and seeds. Generation tasks are scored on the text
before the first EOS / end-of-turn; `choice` tasks pick the choice with the highest Monte
Carlo log-likelihood (`likelihood.log_likelihood_batch`).

Speed: `seconds` is the wall time of the timed pass (after one untimed warm-up batch that
compiles, unless `warmup=False`), `tokens_per_s` counts `gen_length` tokens per answer, and
`model_calls` is the number of forward passes per answer, an integer (a batch's rows share them;
with a threshold, batches differ and it is the mean rounded to the nearest integer;
`model_calls_total` counts every forward pass of the timed run).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Any, Sequence

import jax
import numpy as np

from llada_jax.config import ModelConfig, SampleConfig
from llada_jax.inference.likelihood import log_likelihood_batch
from llada_jax.inference.sampling import generate_with_stats
from llada_jax.io.tokenizer import decode_answer
from llada_jax.evaluation.tasks import Task


@dataclasses.dataclass(frozen=True)
class EncodedPrompts:
    """Left-padded prompt ids [N, P] and their attention mask (true on real tokens)."""

    ids: np.ndarray
    mask: np.ndarray


@dataclasses.dataclass(frozen=True)
class GenerationRun:
    """Generated ids [N, G] of one sampler setting and how long they took."""

    tokens: np.ndarray
    model_calls: int             # per answer (batch mean, rounded)
    seconds: float
    compile_seconds: float
    model_calls_total: int = 0   # every batch's forward passes


@dataclasses.dataclass(frozen=True)
class EvalResult:
    """Accuracy and speed of one setting on one task."""

    task: str
    num_examples: int
    correct: int
    accuracy: float
    model_calls: int
    tokens_per_s: float
    seconds: float
    compile_seconds: float
    outputs: tuple
    model_calls_total: int = 0

    def summary(self) -> dict:
        """Everything but the outputs, as plain numbers."""
        d = dataclasses.asdict(self)
        d.pop("outputs")
        return d


def checkpoint_sample(checkpoint) -> SampleConfig:
    """The sampler settings saved with a training run or a params export; the defaults for a HF directory."""
    from llada_jax.io.model_source import source_sample

    return source_sample(checkpoint)


def find_tokenizer(checkpoint, tokenizer=None):
    """`tokenizer` if given, else one in the checkpoint directory, else its config's `train.tokenizer`."""
    from llada_jax.io.model_source import source_tokenizer

    return source_tokenizer(checkpoint, tokenizer)


def encode_prompt(tokenizer, text: str, chat: bool = True) -> list[int]:
    """A user turn in LLaDA's chat template (`chat`), else BOS + the raw text."""
    if chat:
        return list(tokenizer.chat_prompt([{"role": "user", "content": text}]))
    return [tokenizer.bos_id] + list(tokenizer.encode(text))


def encode_prompts(tokenizer, texts: Sequence[str], *, chat: bool = True, pad_id: int,
                   multiple: int = 8) -> EncodedPrompts:
    """Encode and left-pad to the longest prompt rounded up to `multiple` (fewer distinct shapes)."""
    if not len(texts):
        raise ValueError("encode_prompts: no prompts")
    return left_pad([encode_prompt(tokenizer, t, chat) for t in texts], pad_id, multiple)


def left_pad(rows: Sequence[Sequence[int]], pad_id: int, multiple: int = 8) -> EncodedPrompts:
    """Token rows left-padded with `pad_id` to the longest rounded up to `multiple`, with the mask of real tokens."""
    length = -(-max(len(r) for r in rows) // multiple) * multiple
    ids = np.full((len(rows), length), pad_id, np.int32)
    mask = np.zeros((len(rows), length), bool)
    for i, r in enumerate(rows):
        ids[i, length - len(r):] = r
        mask[i, length - len(r):] = True
    return EncodedPrompts(ids, mask)


def place_params(params: Any, cfg: ModelConfig, mesh=None):
    """Params on `mesh` by the logical axis rules (unchanged without a mesh)."""
    if mesh is None:
        return params
    from llada_jax.model.sharding import param_shardings

    return jax.device_put(params, param_shardings(cfg, mesh))


def _batches(n: int, batch_size: int):
    for start in range(0, n, batch_size):
        yield start, min(start + batch_size, n)


def _fill(x: np.ndarray, batch_size: int) -> np.ndarray:
    """Pad a short last batch with copies of its first row (outputs dropped)."""
    if x.shape[0] == batch_size:
        return x
    return np.concatenate([x, np.repeat(x[:1], batch_size - x.shape[0], axis=0)])


def generate_answers(params: Any, cfg: ModelConfig, prompts: EncodedPrompts, sample: SampleConfig, *,
                     batch_size: int, seed: int = 0, mesh=None, warmup: bool = True) -> GenerationRun:
    """Run the sampler over all prompts in fixed-shape batches; ids after the prompt, [N, G]."""
    n = prompts.ids.shape[0]
    if batch_size <= 0:
        raise ValueError(f"batch_size: must be positive, got {batch_size}")
    batch_size = min(batch_size, n)
    sharding = None
    if mesh is not None:
        from llada_jax.model.sharding import batch_divisor, batch_sharding

        div = batch_divisor(mesh)
        batch_size = -(-batch_size // div) * div
        sharding = batch_sharding(mesh)
    options = sample.to_dict()
    base_key = jax.random.key(seed)

    def run(i, start, stop):
        ids, mask = _fill(prompts.ids[start:stop], batch_size), _fill(prompts.mask[start:stop], batch_size)
        if sharding is not None:
            ids, mask = jax.device_put(ids, sharding), jax.device_put(mask, sharding)
        ctx = jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext()
        with ctx:
            out = generate_with_stats(params, cfg, ids, mask, key=jax.random.fold_in(base_key, i), **options)
            tokens = np.asarray(out.tokens)
        return tokens[: stop - start, prompts.ids.shape[1]:], int(out.model_calls)

    spans = list(_batches(n, batch_size))
    warm_seconds = 0.0
    if warmup:
        t0 = time.perf_counter()
        run(0, *spans[0])
        warm_seconds = time.perf_counter() - t0
    outputs, calls, first = [], [], 0.0
    t0 = time.perf_counter()
    for i, (start, stop) in enumerate(spans):
        t1 = time.perf_counter()
        tokens, c = run(i, start, stop)
        if i == 0:
            first = time.perf_counter() - t1
        outputs.append(tokens)
        calls.append(c)
    seconds = time.perf_counter() - t0
    compile_seconds = max(warm_seconds - first, 0.0) if warmup else 0.0
    return GenerationRun(np.concatenate(outputs), int(round(float(np.mean(calls)))), seconds, compile_seconds,
                         int(sum(calls)))


def score_generation(task: Task, tokenizer, cfg: ModelConfig, run: GenerationRun, gen_length: int) -> EvalResult:
    """Decode, score and attach the speed figures of a generation run."""
    stops = (cfg.eos_token_id, cfg.eot_token_id)
    outputs = tuple(decode_answer(tokenizer, row, stops) for row in run.tokens)
    correct = task.correct(outputs)
    n = len(outputs)
    return EvalResult(task.name, n, int(correct), correct / n, int(run.model_calls),
                      n * gen_length / run.seconds if run.seconds > 0 else float("inf"),
                      run.seconds, run.compile_seconds, outputs, int(run.model_calls_total))


def evaluate_choice(params: Any, cfg: ModelConfig, tokenizer, task: Task, *, chat: bool = True, mc_num: int = 128,
                    batch_size: int = 16, cfg_scale: float = 0.0, seed: int = 0,
                    pairs_per_call: int = 16) -> EvalResult:
    """Multiple choice: the answer is the choice with the highest log-likelihood estimate."""
    if task.kind != "choice":
        raise ValueError(f"task '{task.name}' is not a multiple-choice task")
    prompts, answers, owner = [], [], []
    for i, ex in enumerate(task.examples):
        p = encode_prompt(tokenizer, ex.prompt, chat)
        for c in ex.choices:
            prompts.append(p)
            answers.append(list(tokenizer.encode(c)))
            owner.append(i)
    keys = jax.random.split(jax.random.key(seed), len(prompts))
    t0 = time.perf_counter()
    scores = log_likelihood_batch(params, cfg, prompts, answers, mc_num=mc_num, batch_size=batch_size,
                                  cfg_scale=cfg_scale, keys=keys, pairs_per_call=pairs_per_call)
    seconds = time.perf_counter() - t0
    owner = np.asarray(owner)
    picks = tuple(int(np.argmax(scores[owner == i])) for i in range(len(task.examples)))
    correct = task.correct(picks)
    n = len(picks)
    tokens = sum(len(a) for a in answers)
    minibatches = (mc_num // batch_size) * len(answers)      # forward passes of `batch_size` rows each
    return EvalResult(task.name, n, int(correct), correct / n, int(round(minibatches / n)),
                      tokens / seconds, seconds, 0.0, picks, int(minibatches))


def evaluate(params: Any, cfg: ModelConfig, tokenizer, task: Task, sample: SampleConfig, *, batch_size: int = 16,
             seed: int = 0, chat: bool = True, mesh=None, warmup: bool = True, mc_num: int = 128,
             ll_batch_size: int = 16) -> EvalResult:
    """Accuracy and speed of `sample` (generation tasks) or of likelihood ranking (choice tasks)."""
    if task.kind == "choice":
        return evaluate_choice(params, cfg, tokenizer, task, chat=chat, mc_num=mc_num, batch_size=ll_batch_size,
                               cfg_scale=sample.cfg_scale, seed=seed)
    prompts = encode_prompts(tokenizer, [e.prompt for e in task.examples], chat=chat, pad_id=cfg.pad_token_id)
    run = generate_answers(place_params(params, cfg, mesh), cfg, prompts, sample, batch_size=batch_size, seed=seed,
                           mesh=mesh, warmup=warmup)
    return score_generation(task, tokenizer, cfg, run, sample.gen_length)
