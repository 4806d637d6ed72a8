"""Profiles: planned steps and a touched flag file write traces in the run folder; SIGUSR1 from outside too."""

import signal
import subprocess
import sys

from llada_jax.training.loop import run_training
from llada_jax.training.profiling import FLAG_FILE, trace_files

from conftest import REPO, signal_on_line
from train_worker import worker_config, worker_dataset, worker_mesh

WORKER = REPO / "tests" / "train_worker.py"


def test_profile_steps_and_flag_file_write_traces(tmp_path):
    config = worker_config(tmp_path, 6)
    config = config.replace(train=config.train.replace(profile_steps=(2, 3), profile_on_demand_steps=2))

    def touch_flag(record):
        if record["step"] == 3:
            (tmp_path / FLAG_FILE).touch()

    result = run_training(config, worker_dataset(), mesh=worker_mesh(), progress=False, on_log=touch_flag)
    assert result.status == "done"
    traces = trace_files(tmp_path)
    windows = sorted({p.relative_to(tmp_path / "profile").parts[:2] for p in traces})
    # the flag is seen before step 5 (step 4 already started when the callback for step 3 ran)
    assert windows == [("steps_2-3", "process_0"), ("steps_5-6", "process_0")], traces
    for p in traces:
        assert p.stat().st_size > 0 and (p.parent / "perfetto_trace.json.gz").is_file()


def test_sigusr1_profiles_a_running_process(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(WORKER), str(run_dir), "8", "0.2"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    out = "".join(signal_on_line(proc, "STEP 2", signal.SIGUSR1)) + proc.stdout.read()
    assert proc.wait(timeout=300) == 0, out
    assert "RESULT done 8" in out, out
    traces = trace_files(run_dir)
    assert len(traces) == 1, (traces, out)
    window = traces[0].relative_to(run_dir / "profile").parts[0]
    start, stop = (int(x) for x in window.removeprefix("steps_").split("-"))
    assert stop - start + 1 == 3 and 3 <= start <= 6  # the default profile_on_demand_steps, soon after the signal
