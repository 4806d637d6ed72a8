"""Every bad input a user can give: exit status 2, one line naming what and where, nothing written."""

import pytest

from llada_jax.cli.main import main

from conftest import REPO


def _fails(capsys, *argv, match):
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert match in err, err
    return err


@pytest.fixture(scope="module")
def tokenizer_and_doc(tmp_path_factory):
    from llada_jax.data import default_corpus_topics
    from llada_jax.io.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("bad")
    doc = root / "doc.txt"
    doc.write_text("\n\n".join(list(default_corpus_topics().values())[:6]))
    return train_tokenizer([doc], root / "tok", 512), doc


def test_malformed_config_yaml(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  d_model: 64\n  n_layers: [1\ntrain: {}\n")
    _fails(capsys, "pretrain", "--config", bad, match=f"{bad}: line 4, column 6: invalid YAML")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


def test_malformed_run_folder_config(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("model: {d_model: 96\n")
    _fails(capsys, "export", run, tmp_path / "out", match=f"{run / 'config.yaml'}: line 2")
    (run / "config.yaml").write_text("model: {d_modle: 96}\n")
    _fails(capsys, "export", run, tmp_path / "out", match=f"{run / 'config.yaml'}: ")
    assert not (tmp_path / "out").exists()


def test_checkpoint_dir_that_is_a_file(tmp_path, capsys, tokenizer_and_doc):
    tok, doc = tokenizer_and_doc
    file = tmp_path / "run"
    file.write_text("not a directory")
    _fails(capsys, "pretrain", "--config", REPO / "configs" / "tiny.yaml", "--no-progress", "train.steps=2",
           "train.warmup_steps=1", "train.decay_steps=1", "train.batch_size=8", "train.seq_len=16", f"train.checkpoint_dir={file}", f"train.tokenizer={tok}",
           f"data.files=[{doc}]", match=f"train.checkpoint_dir {file} is a file")
    assert file.read_text() == "not a directory"


@pytest.fixture
def truncated_hf(tmp_path, tiny_cfg, tiny_params):
    from llada_jax.io.hf import save_hf_checkpoint

    src = tmp_path / "hf"
    save_hf_checkpoint(src, tiny_cfg, tiny_params)
    shard = src / "model.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    return src


def test_truncated_safetensors_convert_hf(truncated_hf, tmp_path, capsys):
    _fails(capsys, "convert-hf", truncated_hf, tmp_path / "out",
           match=f"{truncated_hf / 'model.safetensors'}: truncated")
    assert not (tmp_path / "out").exists()


def test_truncated_safetensors_generate(truncated_hf, capsys, tokenizer_and_doc):
    tok, _ = tokenizer_and_doc
    _fails(capsys, "generate", "--checkpoint", truncated_hf, "--tokenizer", tok, "--prompt", "x",
           match=f"{truncated_hf / 'model.safetensors'}: truncated")


def test_damaged_safetensors_header(truncated_hf, tmp_path, capsys):
    shard = truncated_hf / "model.safetensors"
    shard.write_bytes((100).to_bytes(8, "little") + b"{garbage" + bytes(200))
    _fails(capsys, "convert-hf", truncated_hf, tmp_path / "out", match=f"{shard}: damaged safetensors header")
    assert not (tmp_path / "out").exists()
