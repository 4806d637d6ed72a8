"""lm-evaluation-harness (0.4.x) model `llada_jax`: a llada-jax checkpoint behind lm-eval's `LM` API.

- `loglikelihood`: the Monte Carlo estimate of `likelihood.log_likelihood_batch` (docs/semantics.md, Likelihood), with
  the release's pair encoding (trailing context spaces move to the continuation; BOS first).
  `is_greedy` is the release's check: unmask the continuation one token a step, most confident
  first (the sampler with steps = block = gen = continuation length); `check_greedy=False`
  skips it and reports False, as the release does when it is off.
- `generate_until`: the sampler with the model args' settings (default: the checkpoint config's
  `sample` section), cut at EOS / end-of-turn and at the first `until` stop sequence.
- `loglikelihood_rolling` (perplexity) is not defined for this model and raises.

lm-eval 0.4.x only knows the models listed in `lm_eval.models` (there is no plugin entry point),
so this module must be imported before lm-eval looks the name up. Command lines that work:

    llada-jax lm-eval --model llada_jax --model_args checkpoint=DIR,gen_length=64 --tasks ...
    python -m llada_jax.evaluation.lm_eval_adapter --model llada_jax --model_args checkpoint=DIR --tasks ...

and from Python: `import llada_jax.evaluation.lm_eval_adapter` then `lm_eval.simple_evaluate(model="llada_jax", ...)`.

`run_recipe` runs the rows of an evaluation recipe (`recipes.load_recipe`) one lm-eval task at a
time, each with its own few-shot count and model settings, on one loaded model.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import numpy as np

try:
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("llada_jax.evaluation.lm_eval_adapter needs lm-eval 0.4.x: pip install 'llada-jax[eval]'") from e

from llada_jax.config import SampleConfig
from llada_jax.config import SAMPLE_FIELDS
from llada_jax.evaluation.evaluate import decode_answer, encode_prompt, left_pad
from llada_jax.evaluation.recipes import RecipeRow, summary_lines, write_summary
from llada_jax.inference.likelihood import log_likelihood_batch
from llada_jax.inference.sampling import generate_with_stats




@register_model("llada_jax")
class LladaJaxLM(LM):
    """`--model_args checkpoint=DIR[,tokenizer=PATH][,gen_length=..,steps=..,block_length=..,remasking=..,
    threshold=..,cache=..,cfg_scale=..,temperature=..][,mc_num=128,ll_batch_size=16][,check_greedy=true]
    [,seed=0]`; lm-eval's `--batch_size` is the number of prompts (or likelihood pairs) per call.

    In Python, `params`, `model_config` and `tokenizer` objects may be passed instead of paths.
    """

    def __init__(self, checkpoint: str | None = None, tokenizer: Any = None, *, params: Any = None,
                 model_config: Any = None, mc_num: int = 128, ll_batch_size: int = 16, check_greedy: bool = True,
                 seed: int = 0, batch_size: Any = 16, max_batch_size: Any = None, device: Any = None,
                 **sample_args) -> None:
        super().__init__()
        unknown = sorted(set(sample_args) - set(SAMPLE_FIELDS))
        if unknown:
            raise ValueError(f"llada_jax model_args: unknown option(s) {', '.join(unknown)}; sampler options are "
                             f"{', '.join(SAMPLE_FIELDS)}")
        from llada_jax.io.model_source import load_model
        from llada_jax.evaluation.evaluate import checkpoint_sample, find_tokenizer
        from llada_jax.io.tokenizer import check_tokenizer_matches

        base = SampleConfig()
        if params is None:
            if checkpoint is None:
                raise ValueError("llada_jax model_args: checkpoint=DIR is required")
            base = checkpoint_sample(checkpoint)
            self.tokenizer = tokenizer if hasattr(tokenizer, "encode") else find_tokenizer(checkpoint, tokenizer)
            model_config, params = load_model(checkpoint)
        else:
            if model_config is None or not hasattr(tokenizer, "encode"):
                raise ValueError("llada_jax: with params, pass model_config and a tokenizer object too")
            self.tokenizer = tokenizer
        check_tokenizer_matches(self.tokenizer, model_config)
        self.cfg, self.params = model_config, params
        self.sample = base.replace(**sample_args) if sample_args else base
        self.mc_num, self.ll_batch_size = int(mc_num), int(ll_batch_size)
        self.check_greedy = check_greedy if isinstance(check_greedy, bool) else str(check_greedy).lower() == "true"
        self.key = jax.random.key(int(seed))
        self.batch_size = 16 if batch_size in (None, "auto") or str(batch_size).startswith("auto") else int(batch_size)
        if self.batch_size <= 0:
            raise ValueError(f"llada_jax: batch_size must be positive, got {batch_size}")

    # -- lm-eval interface ------------------------------------------------------------------

    @property
    def tokenizer_name(self) -> str:
        return f"llada_jax-{type(self.tokenizer).__name__}-{self.tokenizer.vocab_size}"

    def apply_chat_template(self, chat_history, add_generation_prompt: bool = True) -> str:
        from llada_jax.io.tokenizer import chat_template_text

        return chat_template_text(chat_history, add_generation_prompt)

    def _encode(self, text: str) -> list[int]:
        return encode_prompt(self.tokenizer, text, chat=False)

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """The release's split: trailing spaces of the context join the continuation; BOS first."""
        spaces = len(context) - len(context.rstrip())
        if spaces:
            continuation, context = context[-spaces:] + continuation, context[:-spaces]
        whole = self._encode(context + continuation)
        ctx = self._encode(context)
        cont = whole[len(ctx):]
        if not cont:
            raise ValueError(f"llada_jax: empty continuation after encoding {continuation!r}")
        return ctx, cont

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [self.encode_pair(*r.args) for r in requests]
        keys = jax.vmap(lambda i: jax.random.fold_in(self.key, i))(np.arange(len(pairs)))
        values = log_likelihood_batch(self.params, self.cfg, [p for p, _ in pairs], [a for _, a in pairs],
                                      mc_num=self.mc_num, batch_size=self.ll_batch_size,
                                      cfg_scale=self.sample.cfg_scale, keys=keys, pairs_per_call=self.batch_size)
        greedy = self.greedy_matches(pairs) if self.check_greedy else [False] * len(pairs)
        return [(float(v), bool(g)) for v, g in zip(values, greedy)]

    def greedy_matches(self, pairs) -> list[bool]:
        """Per pair: does one-token-a-step confident unmasking reproduce the continuation exactly?"""
        out = [False] * len(pairs)
        by_length: dict[int, list[int]] = {}
        for i, (_, cont) in enumerate(pairs):
            by_length.setdefault(len(cont), []).append(i)
        for length, idx in by_length.items():
            for start in range(0, len(idx), self.batch_size):
                chunk = idx[start:start + self.batch_size]
                padded = left_pad([pairs[i][0] for i in chunk], self.cfg.pad_token_id, multiple=32)
                ids, mask = padded.ids, padded.mask
                res = generate_with_stats(self.params, self.cfg, ids, mask, steps=length, gen_length=length,
                                          block_length=length, cfg_scale=self.sample.cfg_scale)
                got = np.asarray(res.tokens)[:, ids.shape[1]:]
                for row, i in enumerate(chunk):
                    out[i] = bool(np.array_equal(got[row], pairs[i][1]))
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        raise NotImplementedError("llada_jax: loglikelihood_rolling (perplexity) is not defined for a masked "
                                  "diffusion model; use loglikelihood or generate_until tasks")

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        s = self.sample
        stops = (self.cfg.eos_token_id, self.cfg.eot_token_id)
        results: list[str] = []
        for start in range(0, len(requests), self.batch_size):
            chunk = requests[start:start + self.batch_size]
            padded = left_pad([self._encode(r.args[0]) for r in chunk], self.cfg.pad_token_id, multiple=32)
            ids, mask = padded.ids, padded.mask
            res = generate_with_stats(self.params, self.cfg, ids, mask, key=jax.random.fold_in(self.key, start),
                                      **s.to_dict())
            tokens = np.asarray(res.tokens)[:, ids.shape[1]:]
            for row, r in zip(tokens, chunk):
                text = decode_answer(self.tokenizer, row, stops)
                until = r.args[1].get("until", []) if len(r.args) > 1 and r.args[1] else []
                for stop in [until] if isinstance(until, str) else until:
                    if stop and stop in text:
                        text = text.split(stop, 1)[0]
                results.append(text)
        return results


def run_recipe(rows: Sequence[RecipeRow], params: Any, cfg: Any, tokenizer: Any, out_dir: str | Path, *,
               include_path: str | Path | None = None, limit: int | float | None = None, batch_size: int = 16,
               seed: int = 0, on_row: Callable[[RecipeRow, list[dict]], None] | None = None) -> list[dict]:
    """Run each row's lm-eval task with the row's settings; write `<row>.json` (lm-eval's results)
    per row and `summary.csv` / `summary.md` (rewritten after every row); return the summary lines."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import handle_non_serializable

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manager = TaskManager(include_path=str(include_path) if include_path is not None else None)
    lines: list[dict] = []
    for row in rows:
        lm = LladaJaxLM(params=params, model_config=cfg, tokenizer=tokenizer, seed=seed, batch_size=batch_size,
                        **row.model_args())
        t0 = time.perf_counter()
        try:
            results = simple_evaluate(model=lm, tasks=[row.task], num_fewshot=row.num_fewshot, limit=limit,
                                      task_manager=manager, apply_chat_template=row.apply_chat_template,
                                      confirm_run_unsafe_code=row.confirm_run_unsafe_code, log_samples=False,
                                      random_seed=seed)
        except ConnectionError as e:   # the task's dataset is not cached and the Hub cannot be reached
            raise ValueError(f"row '{row.name}' (lm-eval task {row.task}): {e}") from e
        seconds = time.perf_counter() - t0
        if results is None:
            raise RuntimeError(f"lm-eval returned no results for row '{row.name}'")
        row_lines = summary_lines(row, results, seconds)
        results = {**results, "llada_jax_recipe_row": {"name": row.name, "settings": row.settings_text(),
                                                       "model_args": row.model_args(), "seconds": seconds}}
        (out_dir / f"{row.name}.json").write_text(json.dumps(results, indent=1, default=handle_non_serializable))
        lines += row_lines
        write_summary(lines, out_dir)
        if on_row is not None:
            on_row(row, row_lines)
    return lines


def main(argv: list[str] | None = None) -> int:
    """lm-eval's command line with `llada_jax` registered (arguments as for `lm_eval`)."""
    from lm_eval.__main__ import cli_evaluate

    saved = sys.argv
    sys.argv = ["lm_eval", *(sys.argv[1:] if argv is None else argv)]
    try:
        cli_evaluate()
    finally:
        sys.argv = saved
    return 0


if __name__ == "__main__":
    sys.exit(main())
