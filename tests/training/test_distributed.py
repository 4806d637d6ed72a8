"""A real 2-process run on localhost (jax.distributed, gloo CPU collectives) through the CLI:
it trains on the Grain pipeline sharded per process, checkpoints, and a relaunch resumes."""

import os
import socket
import subprocess
import sys

import pytest

from llada_jax.training.distributed import detected_launcher, initialize

from conftest import REPO


def test_launcher_detection(monkeypatch):
    for var in ("SLURM_JOB_ID", "SLURM_NTASKS", "SLURM_PROCID", "TPU_WORKER_HOSTNAMES",
                "MEGASCALE_COORDINATOR_ADDRESS", "CLOUD_TPU_TASK_ID", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    assert detected_launcher() is None
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.setenv("SLURM_PROCID", "1")
    assert detected_launcher() == "slurm"
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert detected_launcher() is None
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "10.0.0.1,10.0.0.2")
    assert detected_launcher() == "tpu-pod"


def test_explicit_flags_must_be_complete():
    with pytest.raises(ValueError, match="missing num_processes, process_id"):
        initialize("localhost:1234")
    with pytest.raises(ValueError, match="outside"):
        initialize("localhost:1234", 2, 5)
    assert initialize("localhost:1234", 1, 0)["process_count"] == 1
    assert initialize(mode="off")["mode"] == "single"
    with pytest.raises(ValueError, match="not one of auto, on, off"):
        initialize(mode="yes")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def corpus_and_tokenizer(tmp_path_factory):
    from llada_jax.data import default_corpus_topics
    from llada_jax.io.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("mh")
    corpus = root / "corpus"
    corpus.mkdir()
    for i, (name, text) in enumerate(list(default_corpus_topics().items())[:12]):
        (corpus / f"doc{i:02d}.txt").write_text(text, encoding="utf-8")
    tok = train_tokenizer(sorted(corpus.iterdir()), root / "tok", 512)
    return root, corpus, tok


def _launch(run_dir, corpus, tok, steps):
    port = _free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2")
    cmd = [sys.executable, "-m", "llada_jax.cli", "pretrain", "--config", str(REPO / "configs" / "tiny.yaml"),
           "--no-progress", "--coordinator", f"localhost:{port}", "--num-processes", "2",
           f"train.steps={steps}", "train.warmup_steps=1", "train.decay_steps=1", "train.batch_size=8",
           "train.seq_len=32", "train.log_every=1", "train.checkpoint_every_steps=2", "train.tensorboard=false",
           f"train.checkpoint_dir={run_dir}", f"train.tokenizer={tok}", f"data.files=[{corpus}]"]
    procs = [subprocess.Popen([*cmd, "--process-id", str(i)], env=env, cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=240)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    return outs[0]


def test_two_process_train_checkpoint_resume(corpus_and_tokenizer, tmp_path):
    from llada_jax.training.metrics import read_metrics

    _, corpus, tok = corpus_and_tokenizer
    run_dir = tmp_path / "run"
    out = _launch(run_dir, corpus, tok, 4)
    assert "2 process(es)" in out and "4 devices" in out and "pretrain done at step 4" in out, out[-2000:]
    assert sorted(p.name for p in run_dir.iterdir() if p.name.isdigit()) == ["2", "4"]
    data_files = sorted(f.name for f in (run_dir / "4" / "data").glob("*.json"))
    assert data_files == ["process_0-of-2.json", "process_1-of-2.json"]  # each process's iterator position

    out = _launch(run_dir, corpus, tok, 6)
    assert "pretrain done at step 6, resumed from step 4" in out, out[-2000:]
    steps = [r["step"] for r in read_metrics(run_dir) if "loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6]
