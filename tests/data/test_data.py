"""Data pipelines: packing against a plain Python concat+split, shuffling, sharding, SFT rows,
malformed and too-long input, ArrayRecord, and exact resume from a saved iterator state."""

import collections
import itertools
import json
import re

import numpy as np
import pytest

from llada_jax.config import ConfigError, DataConfig
from llada_jax.data import (DataError, DataStats, build_sft_rows, default_corpus_topics, make_pretrain_dataset,
                            make_sft_dataset, open_documents, write_default_corpus)
from llada_jax.io.tokenizer import load_tokenizer, train_tokenizer

SEQ = 32


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A text file (paragraphs), a JSONL file and an ArrayRecord file, plus the documents they hold."""
    from array_record.python.array_record_module import ArrayRecordWriter

    d = tmp_path_factory.mktemp("corpus")
    topics = list(default_corpus_topics().values())
    text = "\n\n  \n".join(t[:300] for t in topics[:12]) + "\n\n\n"
    (d / "a.txt").write_text(text)
    jsonl_docs = [t[:200] for t in topics[12:24]]
    (d / "b.jsonl").write_text("\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate(jsonl_docs))
                               + "\n\n" + json.dumps({"text": ""}) + "\n")
    ar_docs = [t[:250] for t in topics[24:34]]
    w = ArrayRecordWriter(str(d / "c.arrayrecord"), "group_size:1")
    for t in ar_docs:
        w.write(t.encode())
    w.close()
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    return d, paragraphs + jsonl_docs + ar_docs


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    (d / "t.txt").write_text("\n".join(default_corpus_topics().values())[:60000])
    return load_tokenizer(train_tokenizer([d / "t.txt"], d / "tok", 400))


def cfg(files, **kw):
    return DataConfig.from_dict({"files": [str(f) for f in files], **kw})


def corpus_cfg(corpus, **kw):
    d, _ = corpus
    kw = {"text_unit": "paragraph", "shuffle": False, "num_epochs": 1, **kw}
    return cfg([d / "a.txt", d / "b.jsonl", d / "c.arrayrecord"], **kw)


def rows_of(ds, limit=None):
    return np.concatenate([b["tokens"] for b in itertools.islice(iter(ds), limit)])


def reference_rows(docs, tok, seq_len):
    """Plain Python: [BOS] doc [EOS] for each document, concatenated, split into full rows."""
    stream = [t for doc in docs for t in [tok.bos_id, *tok.encode(doc), tok.eos_id]]
    n = len(stream) // seq_len
    return np.asarray(stream[: n * seq_len], np.int32).reshape(n, seq_len)


def test_sources_read_every_document(corpus):
    stats = DataStats()
    docs = open_documents(corpus_cfg(corpus), stats)
    assert list(docs) == corpus[1]
    assert stats.documents == len(corpus[1]) and stats.empty == 1  # the JSONL row with empty text


def test_packing_matches_plain_concat_split(corpus, tok):
    stats = DataStats()
    ds = make_pretrain_dataset(corpus_cfg(corpus), tok, SEQ, 3, seed=0, stats=stats)
    got = rows_of(ds)
    ref = reference_rows(corpus[1], tok, SEQ)
    assert got.dtype == np.int32 and got.shape[1] == SEQ
    assert len(ref) - 3 < len(got) <= len(ref)  # only the last partial batch is left out
    np.testing.assert_array_equal(got, ref[: len(got)])
    # Every document boundary is an EOS followed by a BOS.
    flat = got.ravel()
    assert np.all(flat[1:][flat[:-1] == tok.eos_id] == tok.bos_id)
    assert stats.documents == len(corpus[1])


def test_shuffle_deterministic_by_seed_and_epochs_differ(corpus, tok):
    c = corpus_cfg(corpus, shuffle=True, num_epochs=2, shuffle_window=64)
    a = rows_of(make_pretrain_dataset(c, tok, SEQ, 2, seed=3))
    b = rows_of(make_pretrain_dataset(c, tok, SEQ, 2, seed=3))
    other = rows_of(make_pretrain_dataset(c, tok, SEQ, 2, seed=4))
    plain = rows_of(make_pretrain_dataset(corpus_cfg(corpus, num_epochs=2), tok, SEQ, 2, seed=3))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a[:10], other[:10]) and not np.array_equal(a[:10], plain[:10])
    # Shuffling only moves documents: the same tokens, up to the dropped tail (< one row + one batch).
    per_epoch = collections.Counter(t for d in corpus[1] for t in [tok.bos_id, *tok.encode(d), tok.eos_id])
    both = per_epoch + per_epoch
    counts = collections.Counter(a.ravel().tolist())
    assert not counts - both and sum((both - counts).values()) < 3 * SEQ
    # Each epoch gets its own permutation: epoch 2 does not start like epoch 1.
    one = rows_of(make_pretrain_dataset(corpus_cfg(corpus, shuffle=True), tok, SEQ, 1, seed=3))
    two = rows_of(make_pretrain_dataset(corpus_cfg(corpus, shuffle=True, num_epochs=2), tok, SEQ, 1, seed=3))
    np.testing.assert_array_equal(two[: len(one)], one)
    assert not np.array_equal(two[len(one) + 1: len(one) + 6], one[:5])


def test_shards_disjoint_and_covering(corpus, tok):
    docs = corpus[1]
    seen = []
    for k in range(3):
        got = rows_of(make_pretrain_dataset(corpus_cfg(corpus), tok, SEQ, 1, seed=0, shard_index=k, shard_count=3))
        ref = reference_rows(docs[k::3], tok, SEQ)  # this shard's documents, nobody else's
        np.testing.assert_array_equal(got, ref)
        seen.extend(docs[k::3])
    assert sorted(seen) == sorted(docs)
    with pytest.raises(ValueError, match="shard_index 3"):
        make_pretrain_dataset(corpus_cfg(corpus), tok, SEQ, 1, seed=0, shard_index=3, shard_count=3)


def test_text_file_unit_and_default_corpus(tmp_path, tok):
    paths = write_default_corpus(tmp_path / "c")
    topics = default_corpus_topics()
    assert len(paths) == len(topics) > 50 and paths[0].read_text() == next(iter(topics.values()))
    assert sum(len(t) for t in topics.values()) > 400_000
    docs = list(open_documents(cfg([tmp_path / "c"])))
    assert docs == list(topics.values())  # a document per file, in sorted order
    assert write_default_corpus(tmp_path / "c") == paths


def test_malformed_jsonl_raises_with_file_line_or_skips(tmp_path, tok):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"text": "good one"}\n\n{"text": "fine"}\n{"text": oops}\n{"body": "x"}\n{"text": 5}\n')
    with pytest.raises(DataError, match=rf"{re.escape(str(f))}:4: invalid JSON"):
        make_pretrain_dataset(cfg([f]), tok, 8, 1, seed=0)
    stats = DataStats()
    docs = open_documents(cfg([f], on_error="skip"), stats)
    assert list(docs) == ["good one", "fine"] and stats.skipped == 3
    g = tmp_path / "bad2.jsonl"
    g.write_text('{"text": "a"}\n{"body": "x"}\n')
    with pytest.raises(DataError, match=r"bad2.jsonl:2: no 'text' field"):
        open_documents(cfg([g]))


def test_arrayrecord_json_records(tmp_path, tok):
    from array_record.python.array_record_module import ArrayRecordWriter

    f = tmp_path / "r.array_record"
    w = ArrayRecordWriter(str(f), "group_size:1")
    for rec in [b'{"text": "alpha"}', b'{"text": "beta"}', b"not json", b'{"text": "gamma"}']:
        w.write(rec)
    w.close()
    docs = open_documents(cfg([f], record_format="json"))
    assert [docs[i] for i in (0, 1, 3)] == ["alpha", "beta", "gamma"]
    with pytest.raises(DataError, match=r"r.array_record: record 2: invalid JSON"):
        docs[2]
    stats = DataStats()
    skipping = cfg([f], record_format="json", on_error="skip", shuffle=False, num_epochs=1)
    rows = rows_of(make_pretrain_dataset(skipping, tok, 4, 1, seed=0, stats=stats))
    ref = reference_rows(["alpha", "beta", "gamma"], tok, 4)
    np.testing.assert_array_equal(rows, ref)
    assert stats.skipped == 1


# ------------------------------------------------------------------ SFT
LLADA_PROMPT = ("<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
                "<|start_header_id|>assistant<|end_header_id|>\n\n")


@pytest.fixture(scope="module")
def sft_file(tmp_path_factory):
    f = tmp_path_factory.mktemp("sft") / "sft.jsonl"
    rows = [{"prompt": "What is 2+2?", "response": " Four. "},
            {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                          {"role": "assistant", "content": "Hello"}]},
            {"prompt": "Tell me everything. " * 8, "response": "A long answer. " * 10}]
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return f


def test_sft_worked_example(sft_file, tok):
    stats = DataStats()
    c = cfg([sft_file], shuffle=False, num_epochs=1)
    ds = make_sft_dataset(c, tok, 64, 2, seed=0, stats=stats)
    batch = next(iter(ds))
    assert batch["tokens"].shape == (2, 64) and batch["tokens"].dtype == np.int32
    assert batch["prompt_lengths"].dtype == np.int32 and batch["prompt_lengths"].shape == (2,)
    prompt = [tok.bos_id] + tok.encode(LLADA_PROMPT)
    answer = tok.encode("Four.") + [tok.eot_id, tok.eos_id]
    expected = prompt + answer + [tok.eos_id] * (64 - len(prompt) - len(answer))
    np.testing.assert_array_equal(batch["tokens"][0], expected)
    assert batch["prompt_lengths"][0] == len(prompt)
    chat = ("<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user"
            "<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    p2 = [tok.bos_id] + tok.encode(chat)
    assert batch["prompt_lengths"][1] == len(p2)
    row2 = p2 + tok.encode("Hello") + [tok.eot_id]
    np.testing.assert_array_equal(batch["tokens"][1][: len(row2)], row2)
    assert np.all(batch["tokens"][1][len(row2):] == tok.eos_id)  # the final EOS, then EOS padding
    assert stats.as_dict() == {"documents": 3, "skipped": 0, "empty": 0, "rows": 2, "dropped": 1, "truncated": 0}


def test_sft_templates_plain_and_custom(sft_file, tok):
    plain = build_sft_rows(cfg([sft_file], chat_template="plain"), tok, 256)
    row, plen = plain[0]
    assert row.tolist() == [tok.bos_id] + tok.encode("What is 2+2?") + tok.encode(" Four. ") + [tok.eos_id]
    assert plen == 1 + len(tok.encode("What is 2+2?"))
    custom = cfg([sft_file], chat_template="### {role}: {content}\n", generation_prompt="### assistant: ",
                 response_suffix=" <end>")
    row, plen = build_sft_rows(custom, tok, 256)[1]
    text = "### system: Be brief.\n### user: Hi\n### assistant: "
    assert row.tolist() == [tok.bos_id] + tok.encode(text) + tok.encode("Hello <end>") + [tok.eos_id]
    assert plen == 1 + len(tok.encode(text))


def test_sft_too_long_drop_and_truncate(sft_file, tok):
    long_prompt = len(build_sft_rows(cfg([sft_file]), tok, 512)[2][0])
    plen = build_sft_rows(cfg([sft_file]), tok, 512)[2][1]
    seq = plen + 5
    assert seq < long_prompt
    stats = DataStats()
    rows = build_sft_rows(cfg([sft_file], too_long="truncate"), tok, seq, stats=stats)
    assert stats.truncated == 1 and stats.dropped == 0 and len(rows) == 3
    full = build_sft_rows(cfg([sft_file]), tok, 512)[2][0]
    np.testing.assert_array_equal(rows[2][0], full[:seq])
    stats = DataStats()
    build_sft_rows(cfg([sft_file], too_long="truncate"), tok, plen, stats=stats)  # no room for an answer
    assert stats.dropped >= 1 and stats.truncated == 0
    stats = DataStats()
    assert len(build_sft_rows(cfg([sft_file]), tok, seq, stats=stats)) == 2 and stats.dropped == 1


def test_sft_malformed_rows(tmp_path, tok):
    f = tmp_path / "s.jsonl"
    f.write_text('{"prompt": "a", "response": "b"}\n'
                 '{"messages": [{"role": "user", "content": "x"}, {"role": "user", "content": "y"}]}\n'
                 '{"prompt": "a"}\n[1, 2]\n{"prompt": "c", "response": "d"}\n')
    with pytest.raises(DataError, match=r"s.jsonl:2: the last message of 'messages' must be the assistant"):
        build_sft_rows(cfg([f]), tok, 64)
    stats = DataStats()
    rows = build_sft_rows(cfg([f], on_error="skip"), tok, 64, stats=stats)
    assert len(rows) == 2 and stats.skipped == 3 and stats.rows == 2
    with pytest.raises(DataError, match="must be JSONL"):
        build_sft_rows(cfg([tmp_path / "s.jsonl"], format="text"), tok, 64)


def test_sft_shards(sft_file, tok):
    c = cfg([sft_file], shuffle=False, num_epochs=1)
    parts = [build_sft_rows(c, tok, 512, shard_index=k, shard_count=2) for k in range(2)]
    whole = build_sft_rows(c, tok, 512)
    assert [len(p) for p in parts] == [2, 1]
    for k, p in enumerate(parts):
        for j in range(len(p)):
            np.testing.assert_array_equal(p[j][0], whole[k + 2 * j][0])


# ------------------------------------------------------------------ resume
def _resume_check(make, ds_cfg, steps=(0, 1, 4, 7), total=10):
    full = [b for b in itertools.islice(iter(make(ds_cfg)), total)]
    for k in steps:
        it = iter(make(ds_cfg))
        for _ in range(k):
            next(it)
        state = json.loads(json.dumps(it.get_state()))  # what Grain's Orbax handler writes
        resumed = iter(make(ds_cfg))
        resumed.set_state(state)
        for want in full[k:]:
            got = next(resumed)
            for key in want:
                np.testing.assert_array_equal(got[key], want[key])


def test_pretrain_iterator_state_resumes_exactly(corpus, tok):
    c = corpus_cfg(corpus, shuffle=True, num_epochs=None, shuffle_window=8)
    _resume_check(lambda c_: make_pretrain_dataset(c_, tok, 24, 2, seed=5), c, steps=(0, 1, 3, 6, 11), total=16)


def test_sft_iterator_state_resumes_exactly(sft_file, tok):
    c = cfg([sft_file], num_epochs=None)
    _resume_check(lambda c_: make_sft_dataset(c_, tok, 128, 2, seed=1), c, steps=(0, 1, 2, 5), total=8)


def test_orbax_checkpoint_of_iterator(corpus, tok, tmp_path):
    import grain
    import orbax.checkpoint as ocp

    c = corpus_cfg(corpus, shuffle=True, num_epochs=None)
    make = lambda: iter(make_pretrain_dataset(c, tok, 24, 2, seed=9))  # noqa: E731
    it = make()
    for _ in range(5):
        next(it)
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        mngr.save(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
        mngr.wait_until_finished()
        expected = [next(it)["tokens"] for _ in range(4)]
        fresh = make()
        mngr.restore(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
    for want in expected:
        np.testing.assert_array_equal(next(fresh)["tokens"], want)


def test_worker_prefetch_matches_in_process(corpus, tok):
    c0 = corpus_cfg(corpus, shuffle=True, num_epochs=None)
    c1 = corpus_cfg(corpus, shuffle=True, num_epochs=None, worker_count=1)
    ref = rows_of(make_pretrain_dataset(c0, tok, 24, 2, seed=2), 6)
    it = iter(make_pretrain_dataset(c1, tok, 24, 2, seed=2))
    try:
        got = np.concatenate([next(it)["tokens"] for _ in range(3)])
        state = it.get_state()
    finally:
        it.close()
    np.testing.assert_array_equal(got, ref[:6])
    it = iter(make_pretrain_dataset(c1, tok, 24, 2, seed=2))
    try:
        it.set_state(state)
        np.testing.assert_array_equal(np.concatenate([next(it)["tokens"] for _ in range(3)]), ref[6:])
    finally:
        it.close()


def test_data_config_validation():
    with pytest.raises(ConfigError, match="text_unit"):
        DataConfig.from_dict({"text_unit": "paragraphs"})
    with pytest.raises(ConfigError, match="num_epochs"):
        DataConfig.from_dict({"num_epochs": 0})
    with pytest.raises(ConfigError, match="chat_template"):
        DataConfig.from_dict({"chat_template": "lada"})
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        open_documents(DataConfig.from_dict({"files": ["/nonexistent/nothing_here*.txt"]}))
