"""One sampling request as the scheduler takes it: the prompt ids and the sampler's settings.

A `SamplingRequest` is frozen and validated on construction by the same rules as
`inference.sampling.make_plan` (which itself runs `SampleConfig.validate`): bad values raise
`RequestError(field, message)`, a `ValueError` that names the field. `generate_kwargs()` gives
the keyword arguments of `lj.generate` for the same request alone, which the scheduler's answer
must equal token for token.

Seeds follow OpenAI: a request that needs randomness (temperature > 0 or random remasking)
and has no seed gets a fresh random one, recorded in `seed`, so the answer is reproducible
afterwards with `generate_kwargs()`.
"""

from __future__ import annotations

import dataclasses
import re
import secrets

import jax
import numpy as np

from llada_jax.config import ModelConfig, SampleConfig
from llada_jax.inference.sampling import Plan, make_plan

SEED_BITS = 31  # seeds drawn for requests without one: non-negative int32


class RequestError(ValueError):
    """A bad request value; `field` names it (e.g. 'max_tokens'), the message states the rule."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


# make_plan / SampleConfig error texts -> the request field they are about.
_FIELD_OF = {"gen_length": "max_tokens", "steps": "steps", "block_length": "block_length",
             "temperature": "temperature", "cfg_scale": "cfg_scale", "remasking": "remasking",
             "threshold": "threshold", "cache": "cache", "prompt": "prompt_ids"}


def _field_of(message: str) -> str:
    if "not divisible by block_length" in message:
        return "block_length"
    m = re.match(r"(?:generate|SampleConfig|sample)[.:]\s*(\w+)", message)
    if m and m.group(1) in _FIELD_OF:
        return _FIELD_OF[m.group(1)]
    for name, field in _FIELD_OF.items():
        if name in message:
            return field
    return "request"


@dataclasses.dataclass(frozen=True)
class SamplingRequest:
    """A prompt and its sampler settings (names as `lj.generate`, `max_tokens` = gen_length).

    Construct with `SamplingRequest.create(cfg, prompt_ids, ...)`, which validates against the
    model and fills a missing seed; the plain constructor does no checking.
    """

    prompt_ids: tuple[int, ...]
    max_tokens: int
    steps: int
    block_length: int
    remasking: str = "low_confidence"
    threshold: float | None = None
    cache: str | None = None
    cfg_scale: float = 0.0
    temperature: float = 0.0
    seed: int | None = None
    logits_eos_inf: bool = False
    confidence_eos_eot_inf: bool = False

    @classmethod
    def create(cls, cfg: ModelConfig, prompt_ids, *, max_tokens=None, steps=None, block_length=None,
               defaults: SampleConfig | None = None, **options) -> "SamplingRequest":
        """A validated request; settings not given come from `defaults` (the checkpoint's `sample:`)."""
        defaults = defaults or SampleConfig()
        try:
            ids = tuple(int(i) for i in prompt_ids)
        except (TypeError, ValueError):
            raise RequestError("prompt_ids", f"must be a sequence of integer token ids, got {prompt_ids!r}") from None
        unknown = set(options) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise RequestError(sorted(unknown)[0], "is not a sampling option")
        values = dict(max_tokens=defaults.gen_length if max_tokens is None else max_tokens,
                      steps=defaults.steps if steps is None else steps,
                      block_length=defaults.block_length if block_length is None else block_length)
        for name in ("remasking", "threshold", "cache", "cfg_scale", "temperature", "logits_eos_inf",
                     "confidence_eos_eot_inf"):
            values[name] = options.get(name, getattr(defaults, name))
        seed = options.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise RequestError("seed", f"must be an integer or null, got {seed!r}")
        for name in ("logits_eos_inf", "confidence_eos_eot_inf"):
            if not isinstance(values[name], (bool, np.bool_)):
                raise RequestError(name, f"must be a boolean, got {values[name]!r}")
        if isinstance(values["cache"], str) and values["cache"].strip().lower() in ("none", "null", "off"):
            values["cache"] = None
        request = cls(prompt_ids=ids, seed=None if seed is None else int(seed), **values)
        if request.seed is None:
            try:
                needs_key = request.needs_key
            except TypeError:  # a non-numeric temperature: make_plan names it below
                needs_key = False
            if needs_key:
                request = dataclasses.replace(request, seed=secrets.randbits(SEED_BITS))
        request.plan(cfg)  # raises RequestError
        return request

    @property
    def needs_key(self) -> bool:
        """Whether the sampler draws randomness for this request (a seed is then required)."""
        return self.temperature > 0 or self.remasking == "random"

    def plan(self, cfg: ModelConfig) -> Plan:
        """The sampler's static plan for this request alone (validation: `make_plan`'s rules)."""
        if not self.prompt_ids:
            raise RequestError("prompt_ids", "must hold at least one token")
        bad = [i for i in self.prompt_ids if not 0 <= i < cfg.vocab_size]
        if bad:
            raise RequestError("prompt_ids", f"id {bad[0]} is outside the vocabulary [0, {cfg.vocab_size})")
        if self.max_tokens is not None and isinstance(self.max_tokens, (int, np.integer)) and \
                not isinstance(self.max_tokens, bool) and len(self.prompt_ids) + self.max_tokens > cfg.max_seq_len:
            raise RequestError("max_tokens", f"prompt length {len(self.prompt_ids)} + max_tokens {self.max_tokens} = "
                                             f"{len(self.prompt_ids) + self.max_tokens} exceeds the model's "
                                             f"max_seq_len {cfg.max_seq_len}")
        try:
            return make_plan(cfg, (1, len(self.prompt_ids)), steps=self.steps, gen_length=self.max_tokens,
                             block_length=self.block_length, temperature=self.temperature,
                             cfg_scale=self.cfg_scale, remasking=self.remasking,
                             logits_eos_inf=self.logits_eos_inf, confidence_eos_eot_inf=self.confidence_eos_eot_inf,
                             threshold=self.threshold, cache=self.cache,
                             key=None if self.seed is None else jax.random.key(0))
        except ValueError as e:  # ConfigError is a ValueError
            message = str(e)
            if "temperature and cfg_scale" in message:  # one rule for both: name the one broken
                raise RequestError("cfg_scale" if self.temperature >= 0 else "temperature", message) from None
            raise RequestError(_field_of(message), message) from None

    def generate_kwargs(self) -> dict:
        """Keyword arguments of `lj.generate(params, cfg, prompt[None], **kwargs)` for this request alone."""
        return dict(steps=self.steps, gen_length=self.max_tokens, block_length=self.block_length,
                    temperature=self.temperature, cfg_scale=self.cfg_scale, remasking=self.remasking,
                    logits_eos_inf=self.logits_eos_inf, confidence_eos_eot_inf=self.confidence_eos_eot_inf,
                    threshold=self.threshold, cache=self.cache,
                    key=None if self.seed is None else jax.random.key(self.seed))

    def prompt_array(self) -> np.ndarray:
        """int32 [1, P]: the prompt as `lj.generate` takes it."""
        return np.asarray(self.prompt_ids, np.int32)[None]
