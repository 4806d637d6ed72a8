"""Parquet sources: random access by row across row groups, the same batches as the same documents
in JSONL (pretraining and SFT), resume, one-line errors, and files on a bucket."""

import io
import itertools
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llada_jax.config import DataConfig
from llada_jax.data import DataError, DataStats, default_corpus_topics, make_pretrain_dataset, make_sft_dataset
from llada_jax.data.parquet import ParquetSource
from llada_jax.data.sources import open_documents
from llada_jax.io.tokenizer import load_tokenizer, train_tokenizer

DOCS = [t[:200] for t in default_corpus_topics().values()][:11]
SFT_ROWS = [{"prompt": f"What is {i}+{i}?", "response": f" {2 * i}. "} for i in range(7)]


def cfg(files, **kw):
    return DataConfig.from_dict({"files": [str(f) for f in files], **kw})


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("pq")
    pq.write_table(pa.table({"id": list(range(len(DOCS))), "body": DOCS}), d / "docs.parquet", row_group_size=3)
    (d / "docs.jsonl").write_text("".join(json.dumps({"body": t}) + "\n" for t in DOCS))
    pq.write_table(pa.table({"prompt": [r["prompt"] for r in SFT_ROWS], "response": [r["response"] for r in SFT_ROWS]}),
                   d / "sft.parquet", row_group_size=2)
    (d / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in SFT_ROWS))
    (d / "t.txt").write_text("\n".join(default_corpus_topics().values())[:30000])
    return d


@pytest.fixture(scope="module")
def tok(files):
    return load_tokenizer(train_tokenizer([files / "t.txt"], files / "tok", 400))


def test_random_access_across_row_groups(files):
    src = ParquetSource(files / "docs.parquet", "body", "raise", DataStats())
    assert len(src) == len(DOCS)
    order = np.random.default_rng(0).permutation(len(DOCS)).tolist() * 2  # evicts and re-reads row groups
    assert [src[i] for i in order] == [DOCS[i] for i in order]


def _batches(ds, n):
    return [b["tokens"].copy() for b in itertools.islice(iter(ds), n)]


def test_pretrain_batches_equal_jsonl_and_resume(files, tok):
    kw = dict(seed=3)
    from_pq = make_pretrain_dataset(cfg([files / "docs.parquet"], text_field="body"), tok, 32, 2, **kw)
    from_json = make_pretrain_dataset(cfg([files / "docs.jsonl"], text_field="body"), tok, 32, 2, **kw)
    want = _batches(from_json, 6)
    np.testing.assert_array_equal(np.stack(_batches(from_pq, 6)), np.stack(want))
    it = iter(from_pq)
    for _ in range(3):
        next(it)
    state = it.get_state()
    it2 = iter(make_pretrain_dataset(cfg([files / "docs.parquet"], text_field="body"), tok, 32, 2, **kw))
    it2.set_state(state)
    np.testing.assert_array_equal(next(it2)["tokens"], want[3])


def test_sft_rows_equal_jsonl(files, tok):
    a = _batches(make_sft_dataset(cfg([files / "sft.parquet"]), tok, 48, 2, seed=1), 4)
    b = _batches(make_sft_dataset(cfg([files / "sft.jsonl"]), tok, 48, 2, seed=1), 4)
    np.testing.assert_array_equal(np.stack(a), np.stack(b))


def test_errors_name_file_and_column_or_row(files, tmp_path):
    with pytest.raises(DataError, match=r"docs\.parquet: no column 'text' \(data\.text_field; columns: id, body\)"):
        open_documents(cfg([files / "docs.parquet"]))
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataError, match=r"bad\.parquet: not a readable Parquet file"):
        open_documents(cfg([bad]))
    pq.write_table(pa.table({"prompt": ["a", "b"], "response": ["x", None]}), tmp_path / "s.parquet")
    with pytest.raises(DataError, match=r"s\.parquet: row 1: expected 'prompt' and 'response'"):
        make_sft_dataset(cfg([tmp_path / "s.parquet"]), None, 16, 1, seed=0)
    pq.write_table(pa.table({"body": [1, 2]}), tmp_path / "n.parquet")
    docs = open_documents(cfg([tmp_path / "n.parquet"], text_field="body"))
    with pytest.raises(DataError, match=r"n\.parquet: row 0: column 'body' is int, not a string"):
        docs[0]


def test_parquet_and_globs_on_a_bucket(files, bucket):
    from llada_jax.io.paths import as_path

    buf = io.BytesIO()
    pq.write_table(pq.read_table(files / "docs.parquet"), buf, row_group_size=3)
    (as_path(bucket) / "c" / "part-0.parquet").write_bytes(buf.getvalue())
    (as_path(bucket) / "c" / "sub" / "part-1.jsonl").write_text((files / "docs.jsonl").read_text())
    docs = open_documents(cfg([f"{bucket}/c/*.parquet", f"{bucket}/c/**/*.jsonl"], text_field="body"))
    assert list(docs) == DOCS + DOCS
    assert list(open_documents(cfg([f"{bucket}/c"], text_field="body"))) == DOCS + DOCS
