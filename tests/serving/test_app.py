"""`llada-jax serve`: the real server in a subprocess on a free 127.0.0.1 port, spoken to with the
official `openai` client (raw httpx for the error cases): answers equal `lj.generate` on each
prompt alone, streaming (text deltas and denoising frames), /metrics, 400s naming the field,
429 under a full queue, timeouts, a disconnect freeing its slot, and a SIGTERM drain."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import jax
import numpy as np
import openai
import pytest

from conftest import REPO

SCALE = 4.0  # sharper logits than init: fewer ties, answers that differ by prompt
START_TIMEOUT_S = 180


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_params):
    """A params export of the tiny model whose config names its tokenizer and a short `sample:` section."""
    from llada_jax.config import load_config
    from llada_jax.io.checkpoint import save_params
    from llada_jax.io.tokenizer import load_tokenizer, train_tokenizer

    d = tmp_path_factory.mktemp("serve")
    rng = np.random.default_rng(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "far", "away", "and", "then", "slept", "42", "7"]
    (d / "corpus.txt").write_text("\n".join(" ".join(rng.choice(words, 12)) for _ in range(400)))
    tok_path = train_tokenizer([d / "corpus.txt"], d / "tok", 300)
    config = load_config(REPO / "configs" / "tiny.yaml", [f"train.tokenizer={tok_path}", "sample.gen_length=16",
                                                          "sample.steps=16", "sample.block_length=8"])
    params = jax.tree.map(lambda a: a * SCALE, tiny_params)
    save_params(d / "ckpt", config, params)
    return d / "ckpt", load_tokenizer(tok_path), config.model, params


class Server:
    """A `llada-jax serve` subprocess; its stdout lines are collected by a reader thread."""

    def __init__(self, ckpt, *flags):
        env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device
        env["JAX_PLATFORMS"] = "cpu"
        self.proc = subprocess.Popen([sys.executable, "-m", "llada_jax.cli", "serve", "--checkpoint", str(ckpt),
                                      "--port", "0", "--mesh", "none", *flags], env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines: queue.Queue = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.url = self.wait_for(r"llada-jax serve: (http://\S+)/v1 ", START_TIMEOUT_S).group(1)
        self.client = openai.OpenAI(base_url=self.url + "/v1", api_key="none", max_retries=0, timeout=120)
        self.http = httpx.Client(base_url=self.url, timeout=120)
        self.model = self.client.models.list().data[0].id

    def _read(self):
        for line in self.proc.stdout:
            self.output.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, pattern: str, timeout: float):
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r} within {timeout} s:\n{''.join(self.output)}")
            if line is None:
                raise AssertionError(f"server exited ({self.proc.wait()}) before {pattern!r}:\n{''.join(self.output)}")
            m = re.search(pattern, line)
            if m:
                return m

    def metrics(self) -> dict[str, float]:
        text = self.http.get("/metrics").text
        return {m.group(1): float(m.group(2)) for m in re.finditer(r"^(\w+(?:\{[^}]*\})?) (\S+)$", text, re.M)}

    def wait_metric(self, name: str, ok, timeout: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            m = self.metrics()
            if ok(m.get(name, 0.0)) or time.monotonic() > deadline:
                return m
            time.sleep(0.05)

    def post(self, path: str, body) -> httpx.Response:
        return self.http.post(path, content=body if isinstance(body, (bytes, str)) else json.dumps(body))

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)
        self.http.close()


@pytest.fixture(scope="module")
def server(checkpoint):
    s = Server(checkpoint[0], "--max-batch", "8")
    yield s
    s.close()


@pytest.fixture(scope="module")
def reference(checkpoint):
    """`reference(kind, body) -> (answer text, prompt ids)`: `lj.generate` on that prompt alone, with
    the settings the server resolves for the body (`openai_api.parse_request`); memoised."""
    import llada_jax as lj
    from llada_jax.io.tokenizer import decode_answer
    from llada_jax.io.model_source import load_model, source_sample
    from llada_jax.serving.openai_api import ServedModel, parse_request

    ckpt, tok, _, _ = checkpoint
    cfg, params = load_model(ckpt)
    served = ServedModel("ckpt", cfg, tok, source_sample(ckpt))

    memo: dict = {}

    def answer(kind: str, body: dict, choice: int = 0) -> tuple[str, list[int]]:
        key = (kind, json.dumps(body, sort_keys=True), choice)
        if key not in memo:
            req = parse_request(kind, {k: v for k, v in body.items() if k != "model"}, served).requests[choice]
            tokens = np.asarray(lj.generate(params, cfg, req.prompt_array(), **req.generate_kwargs()))[0]
            answer_ids = tokens[len(req.prompt_ids):]
            memo[key] = decode_answer(tok, answer_ids, (cfg.eos_token_id, cfg.eot_token_id)), list(req.prompt_ids)
        return memo[key]

    return answer


# ----------------------------------------------------------------------------------------------


def test_bad_flags_exit_2_with_one_line(checkpoint, capsys):
    from llada_jax.cli.main import main

    for flags, words in ((["--max-batch", "1"], "--max-batch: 1 must be >= 2"),
                         (["--request-timeout", "0"], "--request-timeout: 0 must be > 0"),
                         (["--port", "70000"], "--port: 70000 is not in 0..65535")):
        assert main(["serve", "--checkpoint", str(checkpoint[0]), *flags]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("llada-jax serve: error: ") and words in err, err
    assert main(["serve", "--checkpoint", str(checkpoint[0].parent / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_models_health_and_startup_line(server):
    started = "".join(server.output)
    assert re.search(r"slots 8, queue 64, buckets .*compiles planned \d+", started), started
    assert server.model == "ckpt"
    health = server.http.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"


# One prompt and one chat for the single-request tests, at the checkpoint's sampler settings
# (16 / 16 / 8): one reference compile each, shared by the plain, streamed and denoising requests.
PROMPT = "the cat sat on"
MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "a dog ran far"}]


def test_completion_equals_generate(server, reference):
    want, prompt_ids = reference("completion", dict(prompt=PROMPT))
    out = server.client.completions.create(model=server.model, prompt=PROMPT, max_tokens=16,
                                           extra_body=dict(steps=16, block_length=8))
    assert out.object == "text_completion" and out.model == "ckpt"
    assert out.choices[0].text == want and want
    assert out.choices[0].finish_reason in ("stop", "length")
    assert out.usage.prompt_tokens == len(prompt_ids)
    out = server.client.completions.create(model=server.model, prompt=prompt_ids)  # token ids, defaults
    assert out.choices[0].text == want


def test_chat_equals_generate(server, reference):
    want, _ = reference("chat", dict(messages=MESSAGES))
    out = server.client.chat.completions.create(model=server.model, messages=MESSAGES, max_tokens=16)
    assert out.object == "chat.completion"
    assert out.choices[0].message.role == "assistant" and out.choices[0].message.content == want


def test_stream_text_is_the_answer(server, reference):
    want, _ = reference("completion", dict(prompt=PROMPT))
    chunks = list(server.client.completions.create(model=server.model, prompt=PROMPT, stream=True,
                                                   stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == want
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] in \
        (["stop"], ["length"])
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens > 0
    chat = list(server.client.chat.completions.create(model=server.model, stream=True, messages=MESSAGES))
    assert chat[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chat) == reference("chat", dict(messages=MESSAGES))[0]


def test_stream_denoising_frames(server, reference):
    want, _ = reference("completion", dict(prompt=PROMPT))
    body = dict(model=server.model, prompt=PROMPT, stream=True, stream_options={"denoising": True})
    frames, text, done = [], "", False
    with server.http.stream("POST", "/v1/completions", content=json.dumps(body)) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                continue
            choice = json.loads(line[6:])["choices"][0]
            text += choice["text"]
            if "denoising" in choice:
                frames.append(choice["denoising"])
    assert done and text == want
    assert [f["step"] for f in frames] == list(range(1, 17))  # one frame per model call
    assert [f["text"].count("\u2591") for f in frames] == list(range(15, -1, -1))  # one token a step


def _mixed_bodies(rng) -> list[dict]:
    """32 requests, in turn over 8 settings (answers 8..32, schedules, caches, thresholds, seeds), each
    setting with its own prompt length (3..40 token ids): 8 reference compiles, not 32."""
    variants = [dict(max_tokens=16, steps=16, block_length=8),
                dict(max_tokens=8, steps=4, block_length=8, cache="dual"),
                dict(max_tokens=32, steps=16, block_length=16, cache="prefix"),
                dict(max_tokens=16, block_length=16, threshold=0.3),
                dict(max_tokens=24, steps=24, block_length=8, temperature=0.8, seed=7),
                dict(max_tokens=16, steps=8, block_length=4, remasking="random", seed=3, logits_eos_inf=True),
                dict(max_tokens=16, steps=16, block_length=8, cfg_scale=1.5),
                dict(max_tokens=32, block_length=8, threshold=0.5, cache="dual", confidence_eos_eot_inf=True)]
    lengths = [3, 11, 26, 40, 7, 19, 33, 14]
    bodies = []
    for i in range(32):
        prompt = [1] + rng.integers(7, 300, lengths[i % 8] - 1).tolist()
        bodies.append(dict(prompt=prompt, **variants[i % 8]))
    return bodies


def test_32_mixed_requests_from_8_clients_equal_generate(server, reference):
    bodies = _mixed_bodies(np.random.default_rng(1))

    def ask(body):
        extra = {k: v for k, v in body.items() if k not in ("prompt", "max_tokens", "temperature", "seed")}
        out = server.client.completions.create(model=server.model, prompt=body["prompt"],
                                               max_tokens=body["max_tokens"], temperature=body.get("temperature"),
                                               seed=body.get("seed"), extra_body=extra)
        return out.choices[0].text

    before = server.metrics()
    with ThreadPoolExecutor(9) as pool:  # the references compile while the server answers
        want = pool.submit(lambda: [reference("completion", b)[0] for b in bodies])
        got = list(pool.map(ask, bodies, timeout=240))
        want = want.result(timeout=240)
    assert got == want
    assert sum(bool(w) for w in want) >= 24  # real answers, not 32 empty strings
    after = server.metrics()
    assert after["llada_model_calls_total"] > before.get("llada_model_calls_total", 0)
    assert after["llada_compiles"] <= after["llada_planned_compiles"]


def test_metrics(server):
    m = server.metrics()
    for name in ("llada_queue_depth", "llada_busy_slots", "llada_compiles", "llada_planned_compiles",
                 "llada_model_calls_total", "llada_output_tokens_total",
                 'llada_requests_total{route="/v1/completions",status="200"}',
                 'llada_scheduler_requests_total{outcome="finished"}',
                 'llada_request_latency_seconds_count{route="/v1/completions"}',
                 'llada_time_to_first_chunk_seconds_count{route="/v1/completions"}'):
        assert name in m, name
    assert m["llada_output_tokens_total"] > 0 and m["llada_busy_slots"] == 0


BAD = [  # (body changes, field named, words of the rule)
    (dict(remasking="bogus"), "remasking", "not one of"),
    (dict(block_length=5), "block_length", "divisible by block_length"),
    (dict(prompt=[1] * 250, max_tokens=16, block_length=8), "max_tokens", "max_seq_len"),
    (dict(steps=0), "steps", "positive"),
    (dict(steps=2.5), "steps", "integer"),
    (dict(steps="8"), "steps", "integer"),
    (dict(max_tokens="16"), "max_tokens", "integer"),
    (dict(temperature="hot"), "temperature", "number"),
    (dict(threshold=1.5), "threshold", "(0, 1]"),
    (dict(cache="disk"), "cache", "not one of"),
    (dict(stream="yes"), "stream", "boolean"),
    (dict(logits_eos_inf=1), "logits_eos_inf", "boolean"),
    (dict(prompt=5), "prompt", "string"),
    (dict(prompt=[1, 999]), "prompt", "vocabulary"),
    (dict(stop=3), "stop", "string"),
    (dict(n=0), "n", "positive"),
    (dict(stream_options={"denoising": True}), "stream_options", "stream is true"),
    (dict(top_p=0.5), "top_p", "not supported"),
    (dict(stepz=8), "stepz", "unknown field"),
]


def test_bad_fields_get_400_naming_the_field(server):
    base = dict(model=server.model, prompt="the cat", max_tokens=16)
    for change, field, rule in BAD:
        r = server.post("/v1/completions", {**base, **change})
        assert r.status_code == 400, (change, r.text)
        error = r.json()["error"]
        assert error["type"] == "invalid_request_error" and error["param"] == field, (change, error)
        assert rule in error["message"] and field in error["message"], (change, error)
    r = server.post("/v1/completions", b"{not json")
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    r = server.post("/v1/chat/completions", dict(model=server.model, messages=[{"role": "user"}]))
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages[0].content"
    r = server.post("/v1/completions", {**base, "model": "gpt-4"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError, match="remasking"):
        server.client.completions.create(model=server.model, prompt="x", extra_body={"remasking": "bogus"})


def test_disconnect_cancels_and_frees_the_slot(server):
    before = server.metrics().get('llada_scheduler_requests_total{outcome="cancelled"}', 0.0)
    body = dict(model=server.model, prompt="the cat", max_tokens=224, steps=224, block_length=8, stream=True,
                stream_options={"denoising": True})
    with server.http.stream("POST", "/v1/completions", content=json.dumps(body)) as r:
        lines = r.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))  # the request runs
    m = server.wait_metric('llada_scheduler_requests_total{outcome="cancelled"}', lambda v: v > before)
    assert m['llada_scheduler_requests_total{outcome="cancelled"}'] == before + 1
    m = server.wait_metric("llada_busy_slots", lambda v: v == 0)
    assert m["llada_busy_slots"] == 0
    assert m['llada_requests_total{route="/v1/completions",status="disconnected"}'] >= 1


@pytest.fixture(scope="module")
def small_server(checkpoint):
    """Two slots, a queue of one, a 1.5 s request timeout: for 429 and timeouts."""
    s = Server(checkpoint[0], "--max-batch", "2", "--max-queue", "1", "--request-timeout", "1.5")
    yield s
    s.close()


LONG = dict(prompt="the cat", max_tokens=224, steps=224, block_length=224, cfg_scale=1.0)  # two slots, a while


def test_full_queue_gets_429_with_retry_after(small_server):
    s = small_server
    with ThreadPoolExecutor(6) as pool:
        replies = list(pool.map(lambda _: s.post("/v1/completions", dict(model=s.model, **LONG)), range(6)))
    codes = sorted(r.status_code for r in replies)
    assert 429 in codes, codes
    for r in replies:
        assert r.status_code in (200, 429, 504), r.text
        if r.status_code == 429:
            assert int(r.headers["Retry-After"]) >= 1
            assert r.json()["error"]["type"] == "rate_limit_error"

    def ask(_):
        try:
            return s.client.completions.create(model=s.model, prompt="x", extra_body=LONG)
        except openai.APIStatusError as e:  # the client's view: RateLimitError (429) or a 504 timeout
            return e

    with ThreadPoolExecutor(4) as pool:
        errors = list(pool.map(ask, range(4)))
    assert any(isinstance(e, openai.RateLimitError) for e in errors), errors
    s.wait_metric("llada_busy_slots", lambda v: v == 0)


def test_request_timeout_ends_with_an_error_and_frees_the_slot(small_server):
    s = small_server
    before = s.wait_metric("llada_busy_slots", lambda v: v == 0)
    timeouts = 'llada_requests_total{route="/v1/completions",status="timeout"}'
    body = dict(model=s.model, prompt="the cat", max_tokens=224, steps=224, block_length=224, cfg_scale=1.0)
    r = s.post("/v1/completions", body)
    if r.status_code == 200:  # the machine was fast enough: nothing timed out
        pytest.skip("a 224-step guided request finished within 1.5 s here")
    assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
    with s.http.stream("POST", "/v1/completions", content=json.dumps({**body, "stream": True})) as resp:
        events = [line for line in resp.iter_lines() if line.startswith("data: ")]
    assert '"timeout"' in events[-2] and events[-1] == "data: [DONE]"
    m = s.wait_metric("llada_busy_slots", lambda v: v == 0)
    assert m["llada_busy_slots"] == 0
    assert m[timeouts] == before.get(timeouts, 0.0) + 2


def test_sigterm_drains_in_flight_requests_and_exits_0(server):
    """Last test of the module server: SIGTERM while 6 requests run; all get their answer, then
    new requests get 503 and the process exits 0."""
    results: list = []

    def ask(_):
        try:
            results.append(server.client.completions.create(model=server.model, prompt=PROMPT, max_tokens=64,
                                                            extra_body=dict(steps=64, block_length=8)))
        except Exception as e:  # noqa: BLE001 - recorded and asserted below
            results.append(e)

    submitted = 'llada_scheduler_requests_total{outcome="submitted"}'
    before = server.metrics()[submitted]
    threads = [threading.Thread(target=ask, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    m = server.wait_metric(submitted, lambda v: v >= before + 6, timeout=30)
    assert m[submitted] == before + 6 and m["llada_busy_slots"] + m["llada_queue_depth"] > 0
    server.proc.send_signal(signal.SIGTERM)
    server.wait_for(r"SIGTERM: draining", 10)
    late = server.post("/v1/completions", dict(model=server.model, prompt="x"))
    for t in threads:
        t.join(60)
    assert late.status_code == 503, late.text
    assert server.proc.wait(60) == 0, "".join(server.output)
    assert len(results) == 6 and all(isinstance(r, openai.types.Completion) for r in results), results
    assert len({r.choices[0].text for r in results}) == 1
    assert "stopped after" in "".join(server.output)
