"""The validation split: held-out documents/rows are disjoint from training's and read by the eval pipeline."""

import itertools
import json

import numpy as np
import pytest

from llada_jax.config import load_config
from llada_jax.data import default_corpus_topics, make_pretrain_dataset, make_sft_dataset
from llada_jax.data.split import eval_data_config, in_split, is_held_out
from llada_jax.io.tokenizer import load_tokenizer, train_tokenizer
from llada_jax.training.loop import make_dataset

from conftest import REPO

SEQ = 32


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    (d / "t.txt").write_text("\n".join(default_corpus_topics().values())[:60000])
    return load_tokenizer(train_tokenizer([d / "t.txt"], d / "tok", 400))


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    d = tmp_path_factory.mktemp("docs")
    texts = [t[:300] for t in list(default_corpus_topics().values())[:20]]
    for i, t in enumerate(texts):
        (d / f"{i:02d}.txt").write_text(t)
    return d, texts


def _rows(docs, tok):
    stream = [t for doc in docs for t in [tok.bos_id, *tok.encode(doc), tok.eos_id]]
    n = len(stream) // SEQ
    return np.asarray(stream[: n * SEQ], np.int32).reshape(n, SEQ)


def _config(files, **data):
    return load_config(REPO / "configs" / "tiny.yaml", [f"data.files={json.dumps([str(f) for f in files])}",
                                                         f"train.seq_len={SEQ}", "train.batch_size=2",
                                                         *(f"data.{k}={v}" for k, v in data.items())])


def test_held_out_rule_is_even_and_disjoint():
    n, f = 1000, 0.05
    held = [i for i in range(n) if is_held_out(i, f)]
    assert len(held) == int(n * f) and np.all(np.diff(held) == 20)
    assert all(in_split(i, f, "train") != in_split(i, f, "eval") for i in range(n))
    assert not any(is_held_out(i, 0.0) for i in range(n))


def test_pretrain_held_out_documents(docs, tok):
    d, texts = docs
    config = _config([d], eval_fraction=0.25, shuffle="false", num_epochs=1)
    held = [t for i, t in enumerate(texts) if is_held_out(i, 0.25)]
    kept = [t for i, t in enumerate(texts) if not is_held_out(i, 0.25)]
    assert len(held) == 5
    train = np.concatenate([b["tokens"] for b in make_pretrain_dataset(config.data, tok, SEQ, 1, seed=0)])
    np.testing.assert_array_equal(train, _rows(kept, tok))
    eval_cfg, split = eval_data_config(config.data)
    assert split == "eval" and eval_cfg.num_epochs is None and not eval_cfg.shuffle
    ref = _rows(held, tok)
    got = np.concatenate([b["tokens"] for b in itertools.islice(make_dataset(config, tok, split="eval"),
                                                                  len(ref) // 2)])
    np.testing.assert_array_equal(got, ref[: len(got)])


def test_eval_files_and_no_eval_data(docs, tok, tmp_path):
    d, texts = docs
    assert make_dataset(_config([d]), tok, split="eval") is None
    config = _config([d / "00.txt"], eval_files=json.dumps([str(d / "01.txt")]))
    batch = next(iter(make_dataset(config, tok, split="eval")))
    np.testing.assert_array_equal(batch["tokens"], _rows([texts[1]], tok)[:2])


def test_sft_held_out_rows(tmp_path, tok):
    f = tmp_path / "sft.jsonl"
    f.write_text("\n".join(json.dumps({"prompt": f"question {i}", "response": f"answer {i}"}) for i in range(8)))
    config = _config([f], eval_fraction=0.25, shuffle="false", num_epochs=1, chat_template="plain")

    def prompts(split):
        ds = make_sft_dataset(config.data, tok, 128, 1, seed=0, split=split)
        return [tok.decode([int(t) for t in b["tokens"][0][: b["prompt_lengths"][0]]]) for b in ds]

    train, held = prompts("train"), prompts("eval")
    assert len(train) == 6 and len(held) == 2
    assert [("question 3" in p, "question 7" in p) for p in held] == [(True, False), (False, True)]
    assert not any("question 3" in p or "question 7" in p for p in train)
