"""A tiny training run for the kill/resume tests: `python tests/train_worker.py RUN_DIR STEPS [SLEEP]`.

Trains the tiny config on a fixed synthetic token set through the real loop (Grain iterator,
Orbax checkpoints every 2 steps, metrics every step). Prints `STEP n` after each logged step and
`RESULT status step resumed_from` at the end, so a test can kill it at a known point.
"""

import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def worker_config(run_dir, steps: int):
    from llada_jax.config import load_config

    return load_config(REPO / "configs" / "tiny.yaml", [
        f"train.steps={steps}", "train.warmup_steps=2", "train.decay_steps=2", "train.batch_size=8",
        "train.seq_len=16", "train.learning_rate=5e-3", "train.log_every=1", "train.checkpoint_every_steps=2",
        "train.max_to_keep=10", "train.tensorboard=false", "train.random_length_prob=0.3",
        f"train.checkpoint_dir={run_dir}"])


def worker_mesh():
    """Two of the (simulated) CPU devices: fsdp 2; small enough to compile fast."""
    import jax

    from llada_jax.config import MeshConfig
    from llada_jax.model.sharding import make_mesh

    return make_mesh(MeshConfig(), jax.devices()[:2])


def worker_dataset(seed: int = 0):
    import grain
    import numpy as np

    rows = np.random.default_rng(seed).integers(5, 512, (96, 16)).astype(np.int32)
    return (grain.MapDataset.source(rows).shuffle(seed=seed).repeat().batch(8)
            .map(lambda x: {"tokens": x}).to_iter_dataset())


def main(argv):
    run_dir, steps = argv[0], int(argv[1])
    pause = float(argv[2]) if len(argv) > 2 else 0.0
    from llada_jax.training.loop import run_training

    def on_log(record):
        print(f"STEP {record['step']}", flush=True)
        time.sleep(pause)

    result = run_training(worker_config(run_dir, steps), worker_dataset(), mesh=worker_mesh(), progress=False,
                          on_log=on_log)
    print(f"RESULT {result.status} {result.step} {result.resumed_from}", flush=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main(sys.argv[1:]))
