"""`llada-jax plot RUN_DIR` writes a PNG of the training curves (subprocess, like a user runs it)."""

import subprocess
import sys

from llada_jax.training.metrics import MetricWriter

from conftest import REPO

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _write_run(run_dir):
    writer = MetricWriter(run_dir, tensorboard=False)
    for s in range(10, 101, 10):
        writer.write(s, {"loss": 5.0 / s, "grad_norm": 1.0, "lr": 1e-3, "step_time_s": 0.1, "tokens_per_s": 1000.0,
                         "tflops_per_device": 1.0, "mfu": None, "time/step": 0.9, "time/data": 0.05,
                         "time/compile": 0.0, "time/save": 0.0, "time/eval": 0.0, "time/profile": 0.0,
                         "time/setup": 0.0, "time/wall": 1.0})
        if s % 50 == 0:
            writer.write(s, {"eval/loss": 6.0 / s, "eval/elbo_nats": 4.0 / s, "eval/ppl_bound": 2.0})
    writer.write(100, {"goodput": 0.9, "time_total/wall": 10.0})
    writer.close()


def _plot(*args):
    return subprocess.run([sys.executable, "-m", "llada_jax.cli", "plot", *map(str, args)], capture_output=True,
                          text=True, cwd=REPO, timeout=300)


def test_plot_writes_png(tmp_path):
    _write_run(tmp_path / "run")
    out = tmp_path / "curves" / "run.png"
    done = _plot(tmp_path / "run", "--out", out)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes()[:8] == PNG_MAGIC and out.stat().st_size > 10_000
    done = _plot(tmp_path / "run")  # default: RUN_DIR/curves.png
    assert done.returncode == 0 and (tmp_path / "run" / "curves.png").read_bytes()[:8] == PNG_MAGIC


def test_plot_of_a_folder_without_metrics_fails_in_one_line(tmp_path):
    done = _plot(tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "metrics.jsonl" in done.stderr
