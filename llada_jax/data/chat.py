"""SFT examples: validate a JSONL row and turn it into prompt and response token ids.

A row is `{"prompt": str, "response": str}` (one user turn) or `{"messages": [{"role",
"content"}, ...]}` whose last message is the assistant's answer (the response) and whose
earlier messages form the prompt. Templates (`data.chat_template`):

- `llada` (default): the prompt is `tokenizer.chat_prompt(messages)` (BOS, LLaDA's headers,
  the assistant header); the response is the stripped answer followed by `<|eot_id|>`, as
  LLaDA-8B-Instruct writes it.
- `plain`: BOS + the prompt text (messages joined by blank lines); the response as given.
- a format string with `{role}` and `{content}`: BOS + each message formatted (content
  stripped) + `data.generation_prompt`; the response is the stripped answer +
  `data.response_suffix`.
"""

from __future__ import annotations

from typing import Any


def parse_sft_row(obj: Any, data_cfg) -> tuple[list[dict], str]:
    """(prompt messages, response text) of a JSON row, or ValueError saying what is wrong."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    pf, rf, mf = data_cfg.prompt_field, data_cfg.response_field, data_cfg.messages_field
    if mf in obj:
        msgs = obj[mf]
        if not isinstance(msgs, list) or len(msgs) < 2:
            raise ValueError(f"'{mf}' must be a list of at least 2 messages (prompt turns, then the answer)")
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise ValueError(f"'{mf}'[{i}] must be an object with string 'role' and 'content'")
        if msgs[-1]["role"] != "assistant":
            raise ValueError(f"the last message of '{mf}' must be the assistant's answer, got role "
                             f"'{msgs[-1]['role']}'")
        return [{"role": m["role"], "content": m["content"]} for m in msgs[:-1]], msgs[-1]["content"]
    if pf in obj and rf in obj:
        for k in (pf, rf):
            if not isinstance(obj[k], str):
                raise ValueError(f"field '{k}' is {type(obj[k]).__name__}, not a string")
        return [{"role": "user", "content": obj[pf]}], obj[rf]
    raise ValueError(f"expected '{pf}' and '{rf}' fields or a '{mf}' list (keys: {', '.join(list(obj)[:8])})")


def encode_sft_example(messages: list[dict], response: str, tokenizer, data_cfg) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids) under the configured chat template; the row adds EOS after them."""
    template = data_cfg.chat_template
    if template == "llada":
        return tokenizer.chat_prompt(messages), tokenizer.encode(response.strip()) + [tokenizer.eot_id]
    if template == "plain":
        prompt = "\n\n".join(m["content"] for m in messages)
        return [tokenizer.bos_id] + tokenizer.encode(prompt), tokenizer.encode(response)
    text = "".join(template.format(role=m["role"], content=m["content"].strip()) for m in messages)
    return ([tokenizer.bos_id] + tokenizer.encode(text + data_cfg.generation_prompt),
            tokenizer.encode(response.strip() + data_cfg.response_suffix))
