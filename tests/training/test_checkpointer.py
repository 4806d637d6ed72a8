"""Training checkpoints: kill/resume reproduces the trajectory, SIGTERM, other meshes, refusal, export."""

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from llada_jax.config import MeshConfig
from llada_jax.training.loop import run_training
from llada_jax.training.metrics import read_metrics
from llada_jax.model.sharding import make_mesh
from llada_jax.training.step import abstract_state
from llada_jax.io.run_checkpoint import IncompatibleCheckpointError, TrainCheckpointer, export_checkpoint

from conftest import REPO, signal_on_line
from train_worker import worker_config, worker_dataset, worker_mesh

WORKER = REPO / "tests" / "train_worker.py"
STEPS = 8


def _by_step(run_dir):
    """Last logged record of every step (a resumed run logs the replayed steps again)."""
    return {r["step"]: r for r in read_metrics(run_dir) if "loss" in r}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("reference")
    result = run_training(worker_config(run_dir, STEPS), worker_dataset(), mesh=worker_mesh(), progress=False)
    assert result.status == "done" and result.resumed_from is None
    return run_dir, _by_step(run_dir), jax.tree.map(np.asarray, jax.device_get(result.state.params))


def _wait_for(predicate, timeout, proc, what):
    start = time.monotonic()
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"worker exited ({proc.returncode}) before {what}: {proc.stdout.read()}")
        if time.monotonic() - start > timeout:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_sigkill_and_sigterm_resume_the_same_trajectory(reference, tmp_path):
    _, ref_logs, ref_params = reference
    run_dir = tmp_path / "run"
    cmd = [sys.executable, str(WORKER), str(run_dir), str(STEPS), "0.25"]
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")

    # 1. SIGKILL once the step-4 checkpoint is committed (the run is somewhere after it).
    p1 = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for(lambda: (run_dir / "4").is_dir(), 240, p1, "the step-4 checkpoint")
    p1.send_signal(signal.SIGKILL)
    p1.wait()

    # 2. Restart: it resumes; SIGTERM after its first step saves and exits 0.
    p2 = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = "".join(signal_on_line(p2, "STEP", signal.SIGTERM)) + p2.stdout.read()
    assert p2.wait(timeout=120) == 0, out
    status, stopped, resumed = [ln for ln in out.splitlines() if ln.startswith("RESULT")][0].split()[1:]
    assert status == "preempted" and int(resumed) >= 4 and int(stopped) < STEPS, out
    ckpt = TrainCheckpointer(run_dir, worker_config(run_dir, STEPS))
    assert ckpt.latest_step() == int(stopped)
    ckpt.close()

    # 3. Finish: same numbers as the uninterrupted run, step for step, and the same params.
    result = run_training(worker_config(run_dir, STEPS), worker_dataset(), mesh=worker_mesh(), progress=False)
    assert result.status == "done" and result.resumed_from == int(stopped)
    logs = _by_step(run_dir)
    assert sorted(logs) == list(range(1, STEPS + 1))
    for s in range(1, STEPS + 1):
        for k in ("loss", "grad_norm", "lr"):
            assert logs[s][k] == pytest.approx(ref_logs[s][k], rel=1e-6, abs=1e-7), (s, k)
    params = jax.tree.map(np.asarray, jax.device_get(result.state.params))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), params, ref_params)


def test_restore_onto_another_mesh(reference):
    run_dir, _, ref_params = reference
    config = worker_config(run_dir, STEPS)
    ckpt = TrainCheckpointer(run_dir, config)
    try:
        for mesh_cfg, devices in ((MeshConfig(data=2, fsdp=2, tensor=2), None), (MeshConfig(), jax.devices()[:1])):
            mesh = make_mesh(mesh_cfg, devices)
            state, _ = ckpt.restore(STEPS, abstract_state(config, mesh))
            assert int(state.step) == STEPS
            jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), state.params, ref_params)
            if devices is None:
                assert state.params["layers"]["q_proj"].sharding.spec[1:3] == ("fsdp", "tensor")
                assert state.opt_state[1][0].mu["wte"].sharding.spec == state.params["wte"].sharding.spec
    finally:
        ckpt.close()


def test_incompatible_checkpoint_is_refused(reference):
    run_dir, _, _ = reference
    config = worker_config(run_dir, STEPS)
    other = config.replace(model=config.model.replace(d_model=64, n_layers=3))
    ckpt = TrainCheckpointer(run_dir, other)
    try:
        mesh = make_mesh(MeshConfig(), jax.devices()[:1])
        with pytest.raises(IncompatibleCheckpointError, match=r"model\.d_model: checkpoint 96, config 64.*n_layers"):
            ckpt.restore(STEPS, abstract_state(other, mesh))
    finally:
        ckpt.close()


@pytest.mark.parametrize("fmt", ["params", "hf"])
def test_export_params_and_hf(reference, tmp_path, fmt):
    from llada_jax.io.checkpoint import load_model

    run_dir, _, ref_params = reference
    out = export_checkpoint(run_dir, tmp_path / fmt, fmt=fmt)
    cfg, params = load_model(out)
    assert cfg.d_model == 96 and cfg.n_layers == 2
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), b, rtol=0, atol=0), params, ref_params)


def test_diverging_run_stops_with_last_good_checkpoint(tmp_path, capsys):
    config = worker_config(tmp_path, 6)
    config = config.replace(train=config.train.replace(learning_rate=1e30, final_learning_rate=1e30,
                                                       checkpoint_every_steps=1, max_bad_steps=2))
    result = run_training(config, worker_dataset(), mesh=worker_mesh(), progress=False)
    assert result.status == "diverged"
    assert result.skipped_steps == [result.skipped_steps[0], result.skipped_steps[0] + 1]  # exactly max_bad_steps
    assert result.step == result.skipped_steps[-1]
    err = capsys.readouterr().err  # printed without a progress bar too
    assert f"step {result.skipped_steps[0]}: non-finite loss" in err
    assert (f"stopping: 2 consecutive non-finite steps (last verified checkpoint: step "
            f"{result.skipped_steps[0] - 1})") in err
    ckpt = TrainCheckpointer(tmp_path, config)
    try:
        latest = ckpt.latest_step()
        assert latest == result.skipped_steps[0] - 1  # the last step whose update was finite
        mesh = make_mesh(MeshConfig(), jax.devices()[:1])
        state, _ = ckpt.restore(latest, abstract_state(config, mesh))
        assert int(state.bad_steps) == 0
    finally:
        ckpt.close()
    skipped = [r for r in read_metrics(tmp_path) if r.get("skipped")]
    assert [r["step"] for r in skipped] == result.skipped_steps


def test_ordinary_resume_is_quiet(reference, tmp_path, caplog):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(reference[0], run_dir)
    with caplog.at_level("WARNING"):
        result = run_training(worker_config(run_dir, STEPS + 1), worker_dataset(), mesh=worker_mesh(), progress=False)
    assert result.resumed_from == STEPS
    assert "could not be restored" not in caplog.text, caplog.text[:2000]


def test_sigterm_while_starting_exits_0(tmp_path):
    """A SIGTERM right after the train command starts (before data and compiles) stops it cleanly."""
    from llada_jax.data import default_corpus_topics
    from llada_jax.io.tokenizer import train_tokenizer

    doc = tmp_path / "doc.txt"
    doc.write_text("\n\n".join(list(default_corpus_topics().values())[:6]))
    tok = train_tokenizer([doc], tmp_path / "tok", 512)
    run_dir = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-m", "llada_jax.cli", "pretrain", "--config", str(REPO / "configs" / "tiny.yaml"),
                          "--no-progress", "train.steps=4", "train.warmup_steps=1", "train.decay_steps=1",
                          "train.batch_size=8", "train.seq_len=16", f"train.checkpoint_dir={run_dir}",
                          f"train.tokenizer={tok}", f"data.files=[{doc}]"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first = p.stdout.readline()  # printed once the config is loaded, before the data and the compile
    p.send_signal(signal.SIGTERM)
    out = first + p.stdout.read()
    assert p.wait(timeout=300) == 0, out
    assert "stopped by SIGTERM" in out or "SIGTERM received" in out, out


def test_init_from_export_and_refusal(reference, tmp_path):
    from llada_jax.training.loop import load_initial_params

    run_dir, _, ref_params = reference
    out = export_checkpoint(run_dir, tmp_path / "export")
    config = worker_config(tmp_path / "sft", STEPS)
    config = config.replace(train=config.train.replace(objective="sft", init_from=str(out)))
    params = load_initial_params(config, worker_mesh())
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), params, ref_params)
    other = config.replace(model=config.model.replace(mlp_hidden_size=128))
    with pytest.raises(IncompatibleCheckpointError, match="mlp_hidden_size: checkpoint 256, config 128"):
        load_initial_params(other, worker_mesh())
