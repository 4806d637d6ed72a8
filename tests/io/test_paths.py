"""The storage path layer on local disk and on a real GCS API (fake-gcs-server)."""

import pytest

from llada_jax.io.paths import AppendFile, as_path, glob_files, is_file, is_remote, path_str, walk_files, write_text


def test_local_and_remote_spelling(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert is_remote("gs://b/x") and is_remote("s3://b/x") and not is_remote("runs/x") and not is_remote("file:///x")
    assert path_str("gs://b/run") == "gs://b/run"  # never collapsed to a local 'gs:/b/run'
    assert path_str("runs/x") == str(tmp_path / "runs" / "x")
    assert path_str("file:///tmp/x") == "/tmp/x"


@pytest.fixture(params=["local", "bucket"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "root")
    return request.getfixturevalue("bucket") + "/root"


def test_write_glob_walk_append(root):
    base = as_path(root)
    write_text(f"{root}/a/b/c.txt", "1")
    write_text(f"{root}/a/d.txt", "2")
    write_text(f"{root}/e.jsonl", "3")
    write_text(f"{root}/.hidden", "4")
    names = lambda ps: [str(p)[len(str(base)) + 1:] for p in ps]  # noqa: E731
    assert names(walk_files(root)) == ["a/b/c.txt", "a/d.txt", "e.jsonl"]
    assert names(glob_files(f"{root}/**/*.txt")) == ["a/b/c.txt", "a/d.txt"]
    assert names(glob_files(f"{root}/a/*.txt")) == ["a/d.txt"]
    assert names(glob_files(f"{root}/*.json?")) == ["e.jsonl"]
    assert glob_files(f"{root}/nothing/*.txt") == []
    assert is_file(base / "e.jsonl") and not is_file(base / "a") and not is_file(base / "zz")

    log = AppendFile(base / "log.jsonl")
    log.write("one\n")
    log.flush()
    assert (base / "log.jsonl").read_text() == "one\n"
    log.write(b"two\n")
    log.close()
    again = AppendFile(base / "log.jsonl")  # a reopened file keeps what was there
    again.write("three\n")
    again.close()
    assert (base / "log.jsonl").read_text() == "one\ntwo\nthree\n"
    assert not [p for p in walk_files(root) if ".append-" in str(p)]  # no temporary parts left on a bucket
