"""The pod journey on a real GCS API (fake-gcs-server on localhost, tests/gcs_emulator.py):
tokenizer, data (text, JSONL, ArrayRecord, Parquet) and checkpoint_dir on the bucket; pretrain;
SIGKILL mid-run; the restart resumes and ends bitwise equal to an uninterrupted run; exports in
both formats to the bucket; generate and eval from the bucket exports; nothing of the run on
local disk. Then a 2-process (gloo) run with its checkpoints on the bucket."""

import io
import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import REPO, signal_on_line

POD_WORKER = REPO / "tests" / "pod_worker.py"


def _cli(*args, cwd, timeout=300):
    out = subprocess.run([sys.executable, "-m", "llada_jax.cli", *map(str, args)], cwd=cwd, capture_output=True,
                         text=True, timeout=timeout, env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return out.stdout


def _upload_corpus(bucket: str, tmp_path) -> str:
    """The same documents in four formats under `<bucket>/data/`; returns that URL."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from array_record.python.array_record_module import ArrayRecordWriter

    from llada_jax.data import default_corpus_topics
    from llada_jax.io.paths import as_path

    docs = list(default_corpus_topics().values())[:12]
    root = as_path(f"{bucket}/data")
    for i, text in enumerate(docs[:3]):
        (root / "txt" / f"doc{i}.txt").write_text(text)
    (root / "rows.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in docs[3:6]))
    local = tmp_path / "docs.array_record"
    writer = ArrayRecordWriter(str(local), "group_size:1")
    for t in docs[6:9]:
        writer.write(t.encode())
    writer.close()
    (root / "docs.array_record").write_bytes(local.read_bytes())
    local.unlink()
    buf = io.BytesIO()
    pq.write_table(pa.table({"id": [1, 2, 3], "text": docs[9:12]}), buf, row_group_size=2)
    (root / "docs.parquet").write_bytes(buf.getvalue())
    return str(root)


@pytest.fixture(scope="module")
def pod_bucket(gcs_server, tmp_path_factory):
    """A bucket holding the corpus and a tokenizer trained from it (through the CLI)."""
    import gcs_emulator

    bucket = gcs_emulator.new_bucket("pod")
    work = tmp_path_factory.mktemp("pod")
    data = _upload_corpus(bucket, work)
    _cli("train-tokenizer", "--input", f"{data}/txt", f"{data}/rows.jsonl", "--vocab-size", "512",
         "--output", f"{bucket}/tok/tok", cwd=work)
    return bucket, data, f"{bucket}/tok/tok.model"


def _final_params(run_dir, step):
    from llada_jax.io.checkpoint import read_config
    from llada_jax.model.transformer import param_shapes
    from llada_jax.io.run_checkpoint import TrainCheckpointer

    config = read_config(run_dir)
    ckpt = TrainCheckpointer(run_dir, config, async_save=False)
    try:
        return jax.tree.map(np.asarray, jax.device_get(ckpt.restore_params(step, param_shapes(config.model))))
    finally:
        ckpt.close()


def test_pod_journey_on_a_bucket(pod_bucket, tmp_path):
    from llada_jax.io.checkpoint import load_model
    from llada_jax.io.paths import as_path
    from llada_jax.training.metrics import read_metrics

    bucket, data, tok = pod_bucket
    cwd = tmp_path / "cwd"  # every process runs here; nothing may land in it
    cwd.mkdir()
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", LLADA_JAX_CACHE=str(tmp_path / "cache"),
               PYTHONPATH=os.pathsep.join(sys.path))
    common = [f"train.tokenizer={tok}", f"data.files=[{data}]"]
    steps = 6

    def worker(run_dir, pause):
        return subprocess.Popen([sys.executable, str(POD_WORKER), str(steps), str(pause), *common,
                                 f"train.checkpoint_dir={run_dir}"], cwd=cwd, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    ref = worker(f"{bucket}/ref", 0)
    ref_out = ref.communicate(timeout=400)[0]
    assert ref.returncode == 0 and "RESULT done 6 None" in ref_out, ref_out[-3000:]

    # SIGKILL once step 4 is logged (the step-2 checkpoint is on the bucket), then restart.
    run_dir = f"{bucket}/run"
    p = worker(run_dir, 0.5)
    lines = signal_on_line(p, "STEP 4", signal.SIGKILL)
    p.wait(timeout=60)
    assert p.returncode == -signal.SIGKILL, "".join(lines)[-3000:]
    p = worker(run_dir, 0)
    out = p.communicate(timeout=400)[0]
    assert p.returncode == 0, out[-3000:]
    status, stopped, resumed = [ln for ln in out.splitlines() if ln.startswith("RESULT")][0].split()[1:]
    assert status == "done" and int(stopped) == steps and int(resumed) >= 2, out[-2000:]
    ref_params = _final_params(f"{bucket}/ref", steps)
    jax.tree.map(np.testing.assert_array_equal, _final_params(run_dir, steps), ref_params)
    # Each metrics line is appended to the bucket as it is written: the killed run's lines up to
    # step 4 are all there, then the resumed run's from the step after its checkpoint, same losses.
    ref_losses = {r["step"]: r["loss"] for r in read_metrics(f"{bucket}/ref") if "loss" in r}
    records = [(r["step"], r["loss"]) for r in read_metrics(run_dir) if "loss" in r]
    assert [s for s, _ in records] == [*range(1, 5), *range(int(resumed) + 1, steps + 1)], records
    assert all(loss == ref_losses[s] for s, loss in records)
    assert list(as_path(run_dir).glob("tb/*")), "TensorBoard events on the bucket"

    # Exports to the bucket (CLI), then sample and evaluate from them.
    _cli("export", run_dir, f"{bucket}/exp_params", cwd=cwd)
    _cli("export", run_dir, f"{bucket}/exp_hf", "--format", "hf", cwd=cwd)
    for fmt in ("params", "hf"):
        _, params = load_model(f"{bucket}/exp_{fmt}")
        jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), params, ref_params)
    sample = ["--gen-length", "8", "--steps", "4", "--block-length", "8"]
    _cli("generate", "--checkpoint", f"{bucket}/exp_params", "--tokenizer", tok, "--prompt", "The", *sample, cwd=cwd)
    _cli("eval", "--checkpoint", f"{bucket}/exp_hf", "--tokenizer", tok, "--task", "reverse", "--num-examples", "2",
         "--batch-size", "2", *sample, "--output", f"{bucket}/eval/reverse.json", cwd=cwd)
    assert len(json.loads(as_path(f"{bucket}/eval/reverse.json").read_text())["outputs"]) == 2

    assert list(cwd.iterdir()) == [], "nothing of the run on local disk"
    assert not (tmp_path / "cache").exists(), "the ArrayRecord file is read on the bucket, not copied"
    assert not (REPO / "gs:").exists()


def _two_process_pretrain(pod_bucket, run_dir, cwd, steps):
    """`pretrain` as 2 processes (gloo) on localhost, checkpoints every 2 steps in `run_dir`; the outputs."""
    import socket

    bucket, data, tok = pod_bucket
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2",
               LLADA_JAX_CACHE=str(cwd / "cache"), PYTHONPATH=os.pathsep.join(sys.path))
    cmd = [sys.executable, "-m", "llada_jax.cli", "pretrain", "--config", str(REPO / "configs" / "tiny.yaml"),
           "--no-progress", "--coordinator", f"localhost:{port}", "--num-processes", "2",
           f"train.steps={steps}", "train.warmup_steps=1", "train.decay_steps=1", "train.batch_size=8",
           "train.seq_len=32", "train.log_every=1", "train.checkpoint_every_steps=2", "train.tensorboard=false",
           "train.max_to_keep=5", f"train.checkpoint_dir={run_dir}", f"train.tokenizer={tok}", f"data.files=[{data}]"]
    procs = [subprocess.Popen([*cmd, "--process-id", str(i)], env=env, cwd=cwd, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outs = []
    try:
        outs = [p.communicate(timeout=400)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    return outs


@pytest.fixture(scope="module")
def two_process_run(pod_bucket, tmp_path_factory):
    """An uninterrupted 2-process run of 6 steps on the bucket (checkpoints 2, 4, 6) and its losses."""
    from llada_jax.training.metrics import read_metrics

    bucket = pod_bucket[0]
    cwd = tmp_path_factory.mktemp("mh")
    run_dir = f"{bucket}/mh"
    outs = _two_process_pretrain(pod_bucket, run_dir, cwd, 6)
    losses = {r["step"]: r["loss"] for r in read_metrics(run_dir) if "loss" in r}
    return run_dir, outs, losses, cwd


def test_two_processes_checkpoint_to_a_bucket(two_process_run):
    from llada_jax.io.paths import as_path
    from llada_jax.training.checkpointer import verify_run

    run_dir, outs, losses, cwd = two_process_run
    assert "pretrain done at step 6" in outs[0], outs[0][-2000:]
    root = as_path(run_dir)
    assert sorted(p.name for p in root.iterdir() if p.name.isdigit()) == ["2", "4", "6"]
    assert sorted(f.name for f in (root / "4" / "data").glob("*.json")) == ["process_0-of-2.json",
                                                                            "process_1-of-2.json"]
    assert sorted(losses) == [1, 2, 3, 4, 5, 6]
    assert dict(verify_run(run_dir)) == {2: None, 4: None, 6: None}
    assert not (cwd / "cache").exists(), "each process reads the ArrayRecord file on the bucket"


def _files(root):
    """Every file under a bucket folder (epath on GCS has no recursive glob)."""
    for p in root.iterdir():
        if p.is_dir():
            yield from _files(p)
        else:
            yield p


def _copy_steps(src: str, dst: str, steps) -> None:
    """The run's config and the given step folders, copied object by object on the bucket."""
    from llada_jax.io.paths import as_path

    src_root, dst_root = as_path(src), as_path(dst)
    (dst_root / "config.yaml").write_text((src_root / "config.yaml").read_text())
    for step in steps:
        for f in _files(src_root / str(step)):
            target = dst_root / str(step) / str(f.relative_to(src_root / str(step)))
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(f.read_bytes())


def _process_1_files(step_dir):
    """Files of a step that only process 1 reads on restore: its own state shards and iterator state."""
    shards = [f for f in _files(step_dir / "state") if "ocdbt.process_1" in str(f)]
    assert shards, sorted(str(f) for f in _files(step_dir / "state"))
    return max(shards, key=lambda f: len(f.read_bytes())), step_dir / "data" / "process_1-of-2.json"


@pytest.mark.parametrize("damage", ["damaged", "missing"])
def test_two_processes_agree_on_the_step_when_only_one_sees_damage(pod_bucket, two_process_run, tmp_path, damage):
    """Process 1's files of the newest step (4) are damaged or missing: both processes resume from
    step 2, the log names the process and the file, step 4 is removed once, and the losses from
    step 3 on equal the uninterrupted run's."""
    from llada_jax.io.paths import as_path, path_str
    from llada_jax.training.metrics import read_metrics

    ref_dir, _, ref_losses, _ = two_process_run
    run_dir = f"{pod_bucket[0]}/{damage}"
    _copy_steps(ref_dir, run_dir, [2, 4])
    shard, data_file = _process_1_files(as_path(run_dir) / "4")
    if damage == "damaged":
        raw = bytearray(shard.read_bytes())
        raw[len(raw) // 2: len(raw) // 2 + 64] = bytes(64)  # zeros over 64 bytes of process 1's shard file
        shard.write_bytes(bytes(raw))
        named = "ocdbt.process_1"
    else:
        data_file.unlink()
        named = "data/process_1-of-2.json"
    outs = _two_process_pretrain(pod_bucket, run_dir, tmp_path, 6)
    log = outs[0]
    assert "checkpoint step 4: process 1 of 2: " in log and named in log, log[-3000:]
    assert "resuming from step 2, the newest checkpoint that verifies on every process" in log, log[-3000:]
    assert "pretrain done at step 6, resumed from step 2" in log, log[-3000:]
    assert "process 0 of 2" not in log, "process 0 read step 4 intact"
    losses = {r["step"]: r["loss"] for r in read_metrics(run_dir) if "loss" in r}
    assert sorted(losses) == [3, 4, 5, 6] and all(losses[s] == ref_losses[s] for s in losses), (losses, ref_losses)
    root = as_path(run_dir)
    assert sorted(p.name for p in root.iterdir() if p.name.isdigit()) == ["2", "4", "6"], path_str(root)
    assert "checkpoint step 4" not in outs[1], "only the lead process reports"


def test_sweep_outputs_on_a_bucket(bucket):
    from llada_jax.evaluation.sweep import COLUMNS, CSV_NAME, plot_rows, read_rows, write_table
    from llada_jax.io.paths import as_path, write_text

    out = as_path(bucket) / "sweep"
    rows = [{"steps": s, "family": "low_confidence", "status": "ok", "accuracy": a, "model_calls": s,
             "tokens_per_s": 10.0 * s, "seconds": 1.0} for s, a in ((4, 0.5), (8, 0.75))]
    write_text(out / CSV_NAME, ",".join(COLUMNS) + "\n" + ",".join("4" if c == "steps" else "" for c in COLUMNS) + "\n")
    assert [r["steps"] for r in read_rows(out / CSV_NAME)] == ["4"]
    assert "| 8 | 0.750 |" in write_table(rows, out / "table.md", ["steps"]).read_text()
    calls, speed = plot_rows(rows, out, ["steps"])
    assert calls.read_bytes()[:4] == b"\x89PNG" and speed.exists()
