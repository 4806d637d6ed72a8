"""The OpenAI wire format without a server: bodies -> SamplingRequests (defaults, seeds, n, prompt
forms), the schedule defaults for another answer length, and streamed text that is final left to
right and cut at stop strings."""

from __future__ import annotations

import numpy as np
import pytest

from llada_jax.config import SampleConfig
from llada_jax.serving.openai_api import (ApiError, ChoiceText, ServedModel, cut_at_stop, default_schedule,
                                          denoising_text, parse_request)


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_cfg):
    from llada_jax.io.tokenizer import load_tokenizer, train_tokenizer

    d = tmp_path_factory.mktemp("api")
    rng = np.random.default_rng(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "far", "away", "and", "then", "slept", "42"]
    (d / "corpus.txt").write_text("\n".join(" ".join(rng.choice(words, 12)) for _ in range(300)))
    tok = load_tokenizer(train_tokenizer([d / "corpus.txt"], d / "tok", 300))
    return ServedModel("tiny", tiny_cfg, tok, SampleConfig(gen_length=32, steps=16, block_length=8))


def test_default_schedule_follows_the_checkpoint():
    sample = SampleConfig(gen_length=128, steps=128, block_length=32)
    assert default_schedule(sample, 128, None, None) == (32, 128)
    assert default_schedule(sample, 48, None, None) == (24, 48)    # largest divisor of 48 not above 32
    assert default_schedule(sample, 16, None, None) == (16, 16)
    assert default_schedule(sample, 64, 8, None) == (8, 64)
    half = SampleConfig(gen_length=64, steps=32, block_length=32)
    assert default_schedule(half, 96, None, None) == (32, 48)      # steps per token kept, a multiple of 3 blocks
    assert default_schedule(half, 96, 5, None) == (5, None)        # invalid: left for the request's checks


def test_parse_defaults_seeds_and_prompt_forms(served):
    tok = served.tokenizer
    p = parse_request("completion", {"prompt": ["the cat", "a dog"], "n": 2, "seed": 5, "temperature": 0.5},
                      served)
    assert p.n == 2 and len(p.requests) == 4
    assert [r.seed for r in p.requests] == [5, 6, 5, 6]
    assert p.requests[0].prompt_ids == (tok.bos_id, *tok.encode("the cat")) == p.requests[1].prompt_ids
    r = p.requests[0]
    assert (r.max_tokens, r.steps, r.block_length, r.temperature) == (32, 16, 8, 0.5)
    assert p.prompt_tokens == len(p.requests[0].prompt_ids) + len(p.requests[2].prompt_ids)
    r = parse_request("completion", {"prompt": [1, 9, 10], "max_tokens": 16}, served).requests[0]
    assert r.prompt_ids == (1, 9, 10) and (r.steps, r.block_length) == (8, 8)
    chat = parse_request("chat", {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                                  "max_completion_tokens": 8, "stream": True,
                                  "stream_options": {"denoising": True}}, served)
    assert chat.requests[0].prompt_ids == tuple(tok.chat_prompt([{"role": "user", "content": "hi"}]))
    assert chat.requests[0].max_tokens == 8 and chat.denoising and not chat.include_usage
    assert parse_request("completion", {"prompt": "x", "cache": None, "threshold": None},
                         served).requests[0].cache is None
    with pytest.raises(ApiError, match="prompt: required"):
        parse_request("completion", {"max_tokens": 8}, served)
    with pytest.raises(ApiError, match="messages: unknown field; /v1/chat/completions takes 'messages'"):
        parse_request("completion", {"messages": []}, served)


def test_stream_text_is_final_left_to_right(served):
    tok, mask = served.tokenizer, served.cfg.mask_token_id
    answer = np.array(tok.encode("the cat sat on a mat") + [served.cfg.eos_token_id, 9, 9], np.int32)
    rng = np.random.default_rng(0)
    order = rng.permutation(answer.size)
    state = np.full(answer.size, mask, np.int32)
    choice, deltas = ChoiceText(served), []
    for k, pos in enumerate(order):
        state[pos] = answer[pos]
        first_mask = np.flatnonzero(state == mask)
        delta = choice.update(state.copy(), k == answer.size - 1)
        if first_mask.size and first_mask[0] == 0:
            assert delta == ""  # nothing is final while the first position is masked
        deltas.append(delta)
        if choice.finish_reason:
            break
    assert "".join(deltas) == choice.text == "the cat sat on a mat"
    assert choice.finish_reason == "stop" and choice.completion_tokens == answer.size - 3


def test_stop_strings_cut_and_hold_back(served):
    tok, mask = served.tokenizer, served.cfg.mask_token_id
    ids = tok.encode("the cat sat on a mat")
    choice = ChoiceText(served, stop=("on a",))
    sent = []
    for n in range(1, len(ids) + 1):
        tokens = np.array(ids[:n] + [mask] * (len(ids) - n + 1), np.int32)
        sent.append(choice.update(tokens, False))
        assert "on" not in "".join(sent)
    assert "".join(sent) == choice.text == "the cat sat "  # the text before the stop string, as OpenAI
    assert choice.finish_reason == "stop"
    assert cut_at_stop("a b c", ["c", "b"]) == ("a ", True) and cut_at_stop("abc", ["x"]) == ("abc", False)
    full = ChoiceText(served)
    full.update(np.array(ids, np.int32), True)
    assert full.finish_reason == "length" and full.completion_tokens == len(ids)


def test_denoising_text_marks_masks_and_ends(served):
    cfg, tok = served.cfg, served.tokenizer
    tokens = np.array(tok.encode("the cat") + [cfg.mask_token_id, cfg.eos_token_id, 400], np.int32)
    assert denoising_text(tokens, served) == "the cat\u2591<eos><400>"
