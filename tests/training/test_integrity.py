"""Checkpoint integrity: fingerprints that do not depend on sharding, every kind of damage to the
latest checkpoint detected and named, the run resuming from the previous one and ending bitwise
equal to an undamaged run, and `llada-jax verify` reporting each case."""

import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llada_jax.config import MeshConfig
from llada_jax.model.sharding import make_mesh
from llada_jax.io.run_checkpoint import CheckpointDamagedError, TrainCheckpointer
from llada_jax.training.checkpointer import verify_run
from llada_jax.io.integrity import array_fingerprints, data_state_fingerprint
from llada_jax.training.loop import run_training

from train_worker import worker_dataset, worker_mesh
from train_worker import worker_config as _worker_config


def worker_config(run_dir, steps):
    """The kill/resume tests' config with a learning rate that does not depend on `steps`
    (no decay phase), so a 6-step run continued to 8 equals an 8-step run."""
    config = _worker_config(run_dir, steps)
    return config.replace(train=config.train.replace(decay_steps=0))


def _numpy_fingerprint(x: np.ndarray) -> str:
    """Independent NumPy computation of the same sums, on the host, in Python integers."""
    raw = np.ascontiguousarray(x)
    unsigned = {1: np.uint8, 2: np.uint16, 4: np.uint32}[raw.dtype.itemsize]
    bits = raw.view(unsigned).reshape(-1).astype(np.uint64)
    i = np.arange(bits.size, dtype=np.uint64)
    out = ""
    for m in (0x9E3779B1, 0x85EBCA6B):
        w = ((i * m + (m >> 1)) % 2**32) | 1
        out += f"{int(np.sum((bits * w) % 2**32) % 2**32):08x}"
    return out


def test_fingerprints_are_exact_and_independent_of_sharding():
    x = np.random.default_rng(0).standard_normal((8, 48)).astype(np.float32)
    tree = {"a": x, "b": x.astype(jnp.bfloat16), "c": np.arange(5, dtype=np.int32)}
    want = {k: _numpy_fingerprint(np.asarray(v)) for k, v in tree.items()}
    assert array_fingerprints(tree) == want
    mesh = jax.make_mesh((8,), ("x",), axis_types=(jax.sharding.AxisType.Auto,))
    sharded = {k: jax.device_put(v, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(
        "x" if np.ndim(v) == 2 else None))) for k, v in tree.items()}
    assert array_fingerprints(sharded) == want
    flipped = x.copy()
    flipped.view(np.uint32)[3, 7] ^= 1 << 30
    swapped = x.copy()
    swapped[[0, 1]] = swapped[[1, 0]]
    assert len({array_fingerprints({"a": v})["a"] for v in (x, flipped, swapped)}) == 3
    assert data_state_fingerprint('{"b": 1, "a": [2]}') == data_state_fingerprint({"a": [2], "b": 1})


def test_process_shares_add_up_to_the_fingerprint_and_name_their_shards():
    """Each process's share (the shards it owns) of every array; one process owns every shard here,
    so its shares are the fingerprints, whatever the sharding, replication or element type."""
    from jax.sharding import NamedSharding, PartitionSpec as P

    from llada_jax.io.integrity import process_fingerprints

    mesh = jax.make_mesh((4, 2), ("a", "b"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    rng = np.random.default_rng(0)
    tree = {"w": rng.standard_normal((8, 6, 5)).astype(np.float32), "i": np.arange(12, dtype=np.int32).reshape(6, 2),
            "h": rng.standard_normal((8, 4)).astype(jnp.bfloat16), "b": np.array([True, False, True]),
            "k": jax.random.split(jax.random.key(1), 4)}
    specs = {"w": P("a"), "i": P(None, "b"), "h": P("b", "a"), "b": P(), "k": P("a")}
    sharded = {k: jax.device_put(v, NamedSharding(mesh, specs[k])) for k, v in tree.items()}
    whole = array_fingerprints(sharded)
    shares = process_fingerprints(sharded)
    assert {k: v[:16] for k, v in shares.items()} == whole
    assert whole["w"] == _numpy_fingerprint(tree["w"]) and whole["h"] == _numpy_fingerprint(tree["h"])
    other = process_fingerprints({**sharded, "w": jax.device_put(tree["w"], NamedSharding(mesh, P(None, "b")))})
    assert other["w"][:16] == shares["w"][:16] and other["w"][16:] != shares["w"][16:], "layout tag differs"
    changed = tree["w"].copy()
    changed[7, 5, 4] += 1
    assert process_fingerprints({"w": jax.device_put(changed, NamedSharding(mesh, P("a")))})["w"] != shares["w"]


def _largest(step_dir):
    files = [os.path.join(r, f) for r, _, fs in os.walk(step_dir / "state") for f in fs]
    return max(files, key=os.path.getsize)


def _flip(path):
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        chunk = bytearray(f.read(8))
        f.seek(os.path.getsize(path) // 2)
        f.write(bytes(b ^ 0xFF for b in chunk))


def _random(path):
    with open(path, "r+b") as f:
        f.seek(max(os.path.getsize(path) // 2 - 2048, 0))
        f.write(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())


def _truncate(path):
    os.truncate(path, os.path.getsize(path) // 2)


DAMAGE = {
    "flipped": lambda step: _flip(_largest(step)),
    "random": lambda step: _random(_largest(step)),
    "truncated": lambda step: _truncate(_largest(step)),
    "missing": lambda step: os.remove(_largest(step)),
    "metadata": lambda step: (step / "state" / "_METADATA").write_text("{not json"),
    "fingerprints": lambda step: (step / "integrity" / "metadata").write_text("[]"),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 6-step run (checkpoints 2, 4, 6) and the params of the undamaged run continued to 8."""
    base = tmp_path_factory.mktemp("base")
    run_training(worker_config(base, 6), worker_dataset(), mesh=worker_mesh(), progress=False)
    undamaged = tmp_path_factory.mktemp("undamaged") / "run"
    shutil.copytree(base, undamaged)
    result = run_training(worker_config(undamaged, 8), worker_dataset(), mesh=worker_mesh(), progress=False)
    assert result.resumed_from == 6
    return base, jax.tree.map(np.asarray, jax.device_get(result.state.params))


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_damaged_latest_checkpoint_is_named_and_the_run_resumes_from_the_previous(runs, tmp_path, kind, capsys):
    base, ref_params = runs
    run_dir = tmp_path / "run"
    shutil.copytree(base, run_dir)
    DAMAGE[kind](run_dir / "6")

    report = dict(verify_run(run_dir))
    assert report[2] is None and report[4] is None, report
    assert report[6] is not None and report[6].startswith("checkpoint step 6: "), report

    result = run_training(worker_config(run_dir, 8), worker_dataset(), mesh=worker_mesh(), progress=False)
    err = capsys.readouterr().err
    assert result.status == "done" and result.resumed_from == 4, err
    assert "checkpoint step 6: " in err and "resuming from step 4" in err, err
    params = jax.tree.map(np.asarray, jax.device_get(result.state.params))
    jax.tree.map(np.testing.assert_array_equal, params, ref_params)
    assert dict(verify_run(run_dir)) == {2: None, 4: None, 6: None, 8: None}


def test_verify_command_and_no_verifying_checkpoint_is_an_error(runs, tmp_path):
    base, _ = runs
    run_dir = tmp_path / "run"
    shutil.copytree(base, run_dir)
    out = subprocess.run([sys.executable, "-m", "llada_jax.cli", "verify", str(run_dir)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "3 of 3 checkpoint(s) verify" in out.stdout, out.stdout + out.stderr
    for step in (2, 4, 6):
        _flip(_largest(run_dir / str(step)))
    out = subprocess.run([sys.executable, "-m", "llada_jax.cli", "verify", str(run_dir)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stdout + out.stderr
    assert [ln.split(":")[0] for ln in out.stdout.splitlines()[:3]] == ["checkpoint step 2", "checkpoint step 4",
                                                                         "checkpoint step 6"], out.stdout
    assert "0 of 3 checkpoint(s) verify; failed: 2, 4, 6" in out.stdout
    with pytest.raises(CheckpointDamagedError, match=r"no checkpoint in .* verifies: checkpoint step 6"):
        run_training(worker_config(run_dir, 8), worker_dataset(), mesh=worker_mesh(), progress=False)
    assert sorted(p.name for p in run_dir.iterdir() if p.name.isdigit()) == ["2", "4", "6"]  # nothing removed


def test_export_of_a_damaged_checkpoint_is_one_line(runs, tmp_path):
    base, _ = runs
    run_dir = tmp_path / "run"
    shutil.copytree(base, run_dir)
    for root, _, files in os.walk(run_dir / "6" / "state"):  # every data file: the params are damaged too
        for name in files:
            if os.path.basename(root) == "d":
                _truncate(os.path.join(root, name))
    # Many array reads fail at once here: the reads Orbax abandons must not add tracebacks (several tries: timing).
    for _ in range(2):
        out = subprocess.run([sys.executable, "-m", "llada_jax.cli", "export", str(run_dir), str(tmp_path / "out")],
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 2, out.stderr
        assert out.stderr.strip().startswith("llada-jax export: error: checkpoint step 6: ") and \
            len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert not (tmp_path / "out").exists()


ARCH_SCRIPT = """
import sys
sys.path[:0] = [{tests!r}, {tests!r} + "/training"]
from test_integrity import worker_config
from train_worker import worker_dataset, worker_mesh
from llada_jax.training.loop import run_training
config = worker_config({run!r}, 8)
config = config.replace(model=config.model.replace(d_model=128))
try:
    run_training(config, worker_dataset(), mesh=worker_mesh(), progress=False)
except ValueError as e:
    print("ERROR", e)
"""


def test_architecture_mismatch_without_the_run_config(runs, tmp_path):
    base, _ = runs
    run_dir = tmp_path / "run"
    shutil.copytree(base, run_dir)
    (run_dir / "config.yaml").unlink()
    from conftest import REPO

    out = subprocess.run([sys.executable, "-c", ARCH_SCRIPT.format(tests=str(REPO / "tests"), run=str(run_dir))],
                         capture_output=True, text=True, timeout=300)
    assert "model.d_model: checkpoint 96, config 128" in out.stdout, out.stdout + out.stderr
    assert "Traceback" not in out.stderr and "Exception ignored" not in out.stderr, out.stderr[-3000:]
