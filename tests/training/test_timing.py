"""Where the time goes: the split adds up to the wall time; a slow input pipeline shows up and is warned about."""

import logging
import time

import pytest

from llada_jax.training.loop import run_training
from llada_jax.training.metrics import read_metrics
from llada_jax.training.step import make_train_step
from llada_jax.training.timing import CATEGORIES, StepTimer, format_summary

from train_worker import worker_config, worker_dataset, worker_mesh

SLEEP = 0.3  # seconds the slow source sleeps per batch


class SlowBatch:
    """A data transform that sleeps: an input pipeline slower than the step."""

    def __call__(self, batch):
        time.sleep(SLEEP)
        return batch


def test_time_split_adds_up_and_slow_input_is_warned(tmp_path, caplog):
    config = worker_config(tmp_path, 6)
    config = config.replace(train=config.train.replace(log_every=2, input_wait_warning=0.5))
    slow = worker_dataset().map(SlowBatch())
    with caplog.at_level(logging.WARNING, logger="llada_jax.training.timing"):
        result = run_training(config, slow, mesh=worker_mesh(), progress=False)
    assert result.status == "done"
    records = [r for r in read_metrics(tmp_path) if "time/wall" in r]
    assert [r["step"] for r in records] == [2, 4, 6]
    for r in records:
        covered = sum(r[f"time/{k}"] for k in CATEGORIES)
        assert covered <= r["time/wall"] + 1e-6
        assert covered >= 0.95 * r["time/wall"] - 0.1, r  # only logging and bookkeeping are left out
        assert r["time/data"] >= 2 * SLEEP  # two batches per interval, each waited for
        assert r["time/step"] > 0
    # checkpoints every 2 steps; a save comes after the metrics of its step, in the next interval
    assert records[0]["time/save"] == 0 and all(r["time/save"] > 0 for r in records[1:])
    assert records[0]["time/compile"] > 0  # the first step compiles the train step ...
    assert make_train_step(config, worker_mesh()).jitted._cache_size() == 1  # ... and nothing recompiled it
    # the summary: totals of the intervals (plus the final wait for the last save), goodput = step share
    summary = result.timing
    assert summary["goodput"] == pytest.approx(summary["time_total/step"] / summary["time_total/wall"])
    for k in CATEGORIES:
        assert summary[f"time_total/{k}"] >= sum(r[f"time/{k}"] for r in records) - 1e-9
    assert read_metrics(tmp_path)[-1]["goodput"] == summary["goodput"]
    assert "goodput" in format_summary(summary)
    warnings = [r.getMessage() for r in caplog.records if "input" in r.getMessage()]
    assert len(warnings) == 1, warnings  # once, then not again within 10 minutes
    assert "data.worker_count (now 0)" in warnings[0] and "data.prefetch_buffer_size" in warnings[0]


def test_nested_sections_and_compile_accounting():
    now = [0.0]
    timer = StepTimer(clock=lambda: now[0])
    try:
        with timer.section("step"):
            now[0] += 1.0
            timer._on_event("/jax/core/compile/backend_compile_duration", 0.25)  # as JAX reports it
            with timer.section("save"):
                now[0] += 2.0
            now[0] += 0.5
        now[0] += 0.1  # outside every section
        r = timer.split()
    finally:
        timer.close()
    assert r["time/step"] == pytest.approx(1.25) and r["time/compile"] == pytest.approx(0.25)
    assert r["time/save"] == pytest.approx(2.0) and r["time/wall"] == pytest.approx(3.6)
    assert timer.summary()["goodput"] == pytest.approx(1.25 / 3.6)


def test_no_warning_when_input_keeps_up():
    timer = StepTimer()
    try:
        record = {"time/step": 1.0, "time/data": 0.05}
        assert timer.check_input_wait(record, 0.1, None, "1-10") is None
        assert timer.check_input_wait({"time/step": 1.0, "time/data": 0.5}, 0.0, None, "1-10") is None  # disabled
    finally:
        timer.close()
