"""The OpenAI wire format: request bodies -> `SamplingRequest`s, answers -> response objects.

`parse_request(kind, body, model)` checks a `/v1/completions` or `/v1/chat/completions` body
field by field and returns a `ParsedRequest` (one `SamplingRequest` per prompt and choice), or
raises `ApiError` (400, OpenAI's error JSON naming the field and the rule).

Fields: `model`, `prompt` (a string, a list of strings, a list of token ids or a list of such
lists; strings get BOS, as `generate` encodes them) or `messages` (LLaDA's chat template),
`max_tokens` (the answer length), `temperature`, `seed`, `stop`, `n`, `stream`,
`stream_options` (`include_usage`, and `denoising`: a chunk per model call with the partially
unmasked answer), and the sampler's own options `steps`, `block_length`, `remasking`,
`threshold`, `cache`, `cfg_scale`, `logits_eos_inf`, `confidence_eos_eot_inf`. What a request
leaves out comes from the checkpoint's `sample:` section; when `max_tokens` differs from its
`gen_length`, the default `block_length` is the largest divisor of `max_tokens` not above the
section's, and the default `steps` keeps the section's steps per token (a multiple of the
number of blocks). Choice `i` of a request with a `seed` samples with `seed + i`.

Answers: the text is the tokens before the first EOS / end-of-turn (`decode_answer`), cut at
the first `stop` string. `ChoiceText` follows one choice through its frames and says which
text is final: a prefix of the answer is final once all its positions are unmasked.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
import uuid
from typing import Any, Mapping, Sequence

import numpy as np

from llada_jax.config import ModelConfig, SampleConfig
from llada_jax.evaluation.evaluate import encode_prompt
from llada_jax.io.tokenizer import decode_answer
from llada_jax.inference.sampling import format_trajectory, trajectory_specials
from llada_jax.serving.requests import RequestError, SamplingRequest

KINDS = ("completion", "chat")
SAMPLER_FIELDS = ("steps", "block_length", "remasking", "threshold", "cache", "cfg_scale", "logits_eos_inf",
                  "confidence_eos_eot_inf")
COMMON_FIELDS = ("model", "max_tokens", "temperature", "seed", "stop", "n", "stream", "stream_options",
                 *SAMPLER_FIELDS)
FIELDS = {"completion": ("prompt", *COMMON_FIELDS), "chat": ("messages", "max_completion_tokens", *COMMON_FIELDS)}
# OpenAI fields taken when they ask for what the sampler does anyway, refused otherwise.
NEUTRAL = {"top_p": (1, 1.0, None), "frequency_penalty": (0, 0.0, None), "presence_penalty": (0, 0.0, None),
           "logprobs": (None, False, 0), "top_logprobs": (None, 0), "echo": (None, False), "best_of": (None, 1),
           "logit_bias": (None,), "suffix": (None, ""), "tools": (None,), "tool_choice": (None, "none"),
           "response_format": (None,)}
IGNORED = ("user", "metadata", "store", "service_tier")  # no effect on the answer
STREAM_OPTIONS = ("include_usage", "denoising")


class ApiError(Exception):
    """An OpenAI-style error: HTTP `status`, the message, the offending field (`param`), a `code` and
    any response headers."""

    def __init__(self, message: str, *, param: str | None = None, status: int = 400, code: str | None = None,
                 type: str = "invalid_request_error", headers: dict | None = None):
        super().__init__(message)
        self.message, self.param, self.status, self.code, self.type = message, param, status, code, type
        self.headers = headers  # e.g. Retry-After of a 429

    def body(self) -> dict:
        return error_body(self.message, param=self.param, code=self.code, type=self.type)


def error_body(message: str, *, param: str | None = None, code: str | None = None,
               type: str = "invalid_request_error") -> dict:
    """`{"error": {"message", "type", "param", "code"}}`, as OpenAI writes errors."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


@dataclasses.dataclass(frozen=True)
class ServedModel:
    """What the server serves: its name, model config, tokenizer and the checkpoint's sampler defaults."""

    name: str
    cfg: ModelConfig
    tokenizer: Any
    sample: SampleConfig

    @property
    def stop_ids(self) -> tuple[int, int]:
        return (self.cfg.eos_token_id, self.cfg.eot_token_id)


@dataclasses.dataclass(frozen=True)
class ParsedRequest:
    """A checked request: `requests[i]` is choice `i` (prompt `i // n`, sample `i % n`)."""

    kind: str                                # "completion" | "chat"
    model: str
    requests: tuple[SamplingRequest, ...]
    n: int
    stream: bool
    include_usage: bool
    denoising: bool
    stop: tuple[str, ...]

    @property
    def prompt_tokens(self) -> int:
        """Prompt tokens of the request (each prompt counted once, as OpenAI's usage does)."""
        return sum(len(r.prompt_ids) for r in self.requests[:: self.n])


# ----------------------------------------------------------------------------------------------
# Field checks


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _integer(body, name, *, minimum: int | None = 1):
    v = body.get(name)
    if v is None:
        return None
    if not _is_int(v):
        raise ApiError(f"{name}: must be an integer, got {v!r}", param=name, code="invalid_type")
    if minimum is not None and v < minimum:
        raise ApiError(f"{name}: must be {'a positive integer' if minimum == 1 else f'>= {minimum}'}, got {v}",
                       param=name, code="invalid_value")
    return v


def _number(body, name, *, nullable=False):
    v = body.get(name)
    if v is None:
        return None
    if not _is_number(v):
        raise ApiError(f"{name}: must be a finite number{' or null' if nullable else ''}, got {v!r}", param=name,
                       code="invalid_type")
    return float(v)


def _typed(body, name, types, what):
    v = body.get(name)
    if v is not None and not isinstance(v, types):
        raise ApiError(f"{name}: must be {what}, got {v!r}", param=name, code="invalid_type")
    return v


def _check_fields(kind: str, body: Mapping) -> None:
    known = FIELDS[kind]
    for name, value in body.items():
        if name in known or name in IGNORED:
            continue
        if name in NEUTRAL:
            if value not in NEUTRAL[name] and not (value == {} or value == [] or value == {"type": "text"}):
                raise ApiError(f"{name}: not supported by this server (LLaDA's sampler); leave it out",
                               param=name, code="unsupported_parameter")
            continue
        other = "prompt" if kind == "chat" else "messages"
        hint = f"; /v1/{'completions' if kind == 'chat' else 'chat/completions'} takes '{name}'" if name == other \
            else ""
        raise ApiError(f"{name}: unknown field{hint}", param=name, code="unknown_parameter")


def _stop_strings(body) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise ApiError(f"stop: must be a non-empty string or a list of them, got {body.get('stop')!r}", param="stop",
                       code="invalid_type")
    return tuple(stop)


def _stream_options(body, stream: bool) -> tuple[bool, bool]:
    options = body.get("stream_options")
    if options is None:
        return False, False
    if not stream:
        raise ApiError("stream_options: only allowed when stream is true", param="stream_options",
                       code="invalid_value")
    if not isinstance(options, dict):
        raise ApiError(f"stream_options: must be an object, got {options!r}", param="stream_options",
                       code="invalid_type")
    for key, value in options.items():
        if key not in STREAM_OPTIONS:
            raise ApiError(f"stream_options.{key}: unknown option (known: {', '.join(STREAM_OPTIONS)})",
                           param=f"stream_options.{key}", code="unknown_parameter")
        if not isinstance(value, bool):
            raise ApiError(f"stream_options.{key}: must be a boolean, got {value!r}", param=f"stream_options.{key}",
                           code="invalid_type")
    return bool(options.get("include_usage", False)), bool(options.get("denoising", False))


def _completion_prompts(body, served: ServedModel) -> list[list[int]]:
    prompt = body.get("prompt")
    if prompt is None:
        raise ApiError("prompt: required", param="prompt", code="missing_required_parameter")
    rule = "a string, a list of strings, a list of token ids or a list of token-id lists"
    if isinstance(prompt, str):
        prompt = [prompt]
    elif isinstance(prompt, list) and prompt and all(_is_int(i) for i in prompt):
        prompt = [prompt]
    if not isinstance(prompt, list) or not prompt:
        raise ApiError(f"prompt: must be {rule}, got {body.get('prompt')!r}", param="prompt", code="invalid_type")
    rows = []
    for i, p in enumerate(prompt):
        if isinstance(p, str):
            rows.append(encode_prompt(served.tokenizer, p, chat=False))
        elif isinstance(p, list) and p and all(_is_int(t) for t in p):
            rows.append(list(p))
        else:
            raise ApiError(f"prompt[{i}]: must be a string or a non-empty list of token ids, got {p!r}",
                           param="prompt", code="invalid_type")
    return rows


def _message_text(i: int, content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" and
                                         isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    raise ApiError(f"messages[{i}].content: must be a string or a list of text parts, got {content!r}",
                   param=f"messages[{i}].content", code="invalid_type")


def _chat_prompt(body, served: ServedModel) -> list[list[int]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(f"messages: must be a non-empty list of {{'role', 'content'}} objects, got {messages!r}",
                       param="messages", code="invalid_type" if messages is not None else
                       "missing_required_parameter")
    turns = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not m["role"]:
            raise ApiError(f"messages[{i}]: must be an object with a string 'role', got {m!r}",
                           param=f"messages[{i}]", code="invalid_type")
        turns.append({"role": m["role"], "content": _message_text(i, m.get("content"))})
    return [list(served.tokenizer.chat_prompt(turns))]


def default_schedule(sample: SampleConfig, max_tokens, block_length, steps) -> tuple[Any, Any]:
    """(block_length, steps) for an answer of `max_tokens`, filling what the request left out
    from the checkpoint's `sample:` section (see the module doc)."""
    if not _is_int(max_tokens) or max_tokens < 1:
        return block_length, steps
    if block_length is None:
        block_length = max(d for d in range(1, min(sample.block_length, max_tokens) + 1) if max_tokens % d == 0)
    if steps is None and _is_int(block_length) and block_length > 0 and max_tokens % block_length == 0:
        blocks = max_tokens // block_length
        per_token = sample.steps / sample.gen_length
        steps = max(1, round(max_tokens * per_token / blocks)) * blocks
    return block_length, steps


def api_message(e: RequestError) -> tuple[str, str]:
    """The request error in the API's names (`max_tokens`, `prompt`) and its field."""
    message = e.message.replace("generate.", "").replace("generate: ", "").replace("SampleConfig.", "")
    message = message.replace("gen_length", "max_tokens").replace("prompt_ids", "prompt")
    field = {"prompt_ids": "prompt"}.get(e.field, e.field)
    if not re.match(r"\w+: ", message):
        message = f"{field}: {message}"
    return message, field


def parse_request(kind: str, body: Any, served: ServedModel) -> ParsedRequest:
    """Check a completions (`kind="completion"`) or chat body; `ApiError` for the first bad field."""
    if kind not in KINDS:
        raise ValueError(f"kind: '{kind}' is not one of {', '.join(KINDS)}")
    if not isinstance(body, dict):
        raise ApiError("the request body must be a JSON object", code="invalid_json")
    _check_fields(kind, body)
    model = _typed(body, "model", str, "a string")
    if model is not None and model != served.name:
        raise ApiError(f"model: '{model}' is not served here (this server serves '{served.name}')", param="model",
                       status=404, code="model_not_found")
    prompts = _completion_prompts(body, served) if kind == "completion" else _chat_prompt(body, served)
    max_tokens = _integer(body, "max_tokens")
    if kind == "chat" and max_tokens is None:
        max_tokens = _integer(body, "max_completion_tokens")
    n = _integer(body, "n") or 1
    seed = _integer(body, "seed", minimum=None)
    stream = bool(_typed(body, "stream", bool, "a boolean"))
    include_usage, denoising = _stream_options(body, stream)
    stop = _stop_strings(body)
    options = {}
    for name in ("temperature", "cfg_scale"):
        options[name] = _number(body, name)
    if "threshold" in body:
        options["threshold"] = _number(body, "threshold", nullable=True)
    for name in ("remasking", "cache"):
        options[name] = _typed(body, name, str, "a string" + (" or null" if name == "cache" else ""))
    for name in ("logits_eos_inf", "confidence_eos_eot_inf"):
        options[name] = _typed(body, name, bool, "a boolean")
    if options["temperature"] is not None and options["temperature"] < 0:
        raise ApiError(f"temperature: must be >= 0, got {body['temperature']}", param="temperature",
                       code="invalid_value")
    steps, block_length = _integer(body, "steps"), _integer(body, "block_length")
    max_tokens = served.sample.gen_length if max_tokens is None else max_tokens
    block_length, steps = default_schedule(served.sample, max_tokens, block_length, steps)
    given = {k: v for k, v in options.items() if v is not None or (k in ("threshold", "cache") and k in body)}
    requests = []
    try:
        for prompt in prompts:
            for j in range(n):
                requests.append(SamplingRequest.create(
                    served.cfg, prompt, max_tokens=max_tokens, steps=steps, block_length=block_length,
                    defaults=served.sample, seed=None if seed is None else seed + j, **given))
    except RequestError as e:
        message, field = api_message(e)
        raise ApiError(message, param=field, code="invalid_value") from None
    return ParsedRequest(kind, served.name, tuple(requests), n, stream, include_usage, denoising, stop)


# ----------------------------------------------------------------------------------------------
# Answers


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """`text` before the earliest stop string, and whether one was found."""
    cuts = [i for i in (text.find(s) for s in stop) if i >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


def _held_back(text: str, stop: Sequence[str]) -> int:
    """How many trailing characters of `text` could start a stop string (not final yet)."""
    hold = 0
    for s in stop:
        for k in range(min(len(s) - 1, len(text)), hold, -1):
            if text.endswith(s[:k]):
                hold = k
                break
    return hold


class ChoiceText:
    """One choice's answer as its frames come: the text that is final so far, what to send next.

    `update(tokens, done)` takes a frame's answer tokens (mask id where masked) and returns the
    new final text (a delta); `finish_reason` is set once the answer is complete: "stop" (EOS /
    end-of-turn or a stop string), "length" (all `max_tokens` positions used).
    """

    def __init__(self, served: ServedModel, stop: Sequence[str] = ()):
        self.served = served
        self.stop = tuple(stop)
        self.text = ""            # sent so far
        self.finish_reason: str | None = None
        self.completion_tokens = 0
        self._final_tokens = -1   # length of the unmasked prefix last decoded

    def update(self, tokens, done: bool) -> str:
        if self.finish_reason is not None:
            return ""
        tokens = np.asarray(tokens)
        mask_id = self.served.cfg.mask_token_id
        masked = np.flatnonzero(tokens == mask_id)
        prefix = tokens[: masked[0]] if masked.size else tokens
        if not done and prefix.size == self._final_tokens:  # written tokens never change: nothing new is final
            return ""
        self._final_tokens = prefix.size
        ends = np.flatnonzero(np.isin(prefix, self.served.stop_ids))
        complete = done or bool(ends.size)
        text, hit_stop = cut_at_stop(decode_answer(self.served.tokenizer, prefix, self.served.stop_ids), self.stop)
        if hit_stop or complete:
            self.finish_reason = "stop" if hit_stop or ends.size else "length"
            self.completion_tokens = int(ends[0]) if ends.size else int(prefix.size)
            final = text
        else:
            final = text[: len(text) - _held_back(text, self.stop)].rstrip("\ufffd")  # no half characters
        if not final.startswith(self.text):  # a decoding that changed earlier text: keep what was sent
            return ""
        delta, self.text = final[len(self.text):], final
        return delta


def denoising_text(tokens, served: ServedModel) -> str:
    """A frame's answer with masked positions as ░ and EOS / end-of-turn by name."""
    tokens = np.asarray(tokens)
    specials = trajectory_specials(tokens, served.tokenizer.vocab_size, served.cfg)
    return format_trajectory(tokens[None], served.tokenizer.decode, served.cfg.mask_token_id, specials=specials)[0]


def new_id(kind: str) -> str:
    return f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def response_object(parsed: ParsedRequest, rid: str, created: int, choices: Sequence[ChoiceText]) -> dict:
    """The non-streamed `text_completion` / `chat.completion` object."""
    out = []
    for i, c in enumerate(choices):
        if parsed.kind == "chat":
            out.append({"index": i, "message": {"role": "assistant", "content": c.text},
                        "finish_reason": c.finish_reason, "logprobs": None})
        else:
            out.append({"index": i, "text": c.text, "finish_reason": c.finish_reason, "logprobs": None})
    return {"id": rid, "object": "chat.completion" if parsed.kind == "chat" else "text_completion",
            "created": created, "model": parsed.model, "choices": out,
            "usage": usage(parsed.prompt_tokens, sum(c.completion_tokens for c in choices))}


def chunk_object(parsed: ParsedRequest, rid: str, created: int, index: int | None = None, *, text: str | None = None,
                 finish_reason: str | None = None, role: bool = False, denoising: dict | None = None,
                 usage_of: dict | None = None) -> dict:
    """One streamed chunk: a choice's text delta (and finish reason, or denoising frame), or the usage."""
    kind = "chat.completion.chunk" if parsed.kind == "chat" else "text_completion"
    chunk = {"id": rid, "object": kind, "created": created, "model": parsed.model}
    if usage_of is not None:
        return {**chunk, "choices": [], "usage": usage_of}
    if parsed.kind == "chat":
        delta = {"role": "assistant"} if role else {}
        if text is not None:
            delta["content"] = text
        choice = {"index": index, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
    else:
        choice = {"index": index, "text": text or "", "finish_reason": finish_reason, "logprobs": None}
    if denoising is not None:
        choice["denoising"] = denoising
    return {**chunk, "choices": [choice]}


def created_now() -> int:
    return int(time.time())
