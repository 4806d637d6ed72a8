"""A tiny VRPO run for the kill/resume tests: `python tests/vrpo_worker.py RUN_DIR STEPS INIT_FROM [SLEEP]`.

Trains the tiny config with objective vrpo from the params export INIT_FROM (also the frozen
reference) on fixed synthetic preference pairs through the real loop (Grain iterator, Orbax
checkpoints every 2 steps, metrics every step). Prints `STEP n` after each logged step and
`RESULT status step resumed_from` at the end, as tests/train_worker.py does.
"""

import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from train_worker import worker_mesh  # noqa: E402


def vrpo_config(run_dir, steps: int, init_from, *extra):
    from llada_jax.config import load_config

    return load_config(REPO / "configs" / "tiny.yaml", [
        "train.objective=vrpo", f"train.init_from={init_from}", f"train.steps={steps}", "train.warmup_steps=2",
        "train.decay_steps=2", "train.batch_size=8", "train.seq_len=16", "train.learning_rate=5e-3",
        "train.log_every=1", "train.checkpoint_every_steps=2", "train.max_to_keep=10", "train.tensorboard=false",
        "vrpo.n_samples=2", "vrpo.antithetic=false", f"train.checkpoint_dir={run_dir}", *extra])


def preference_batches(rows: int = 48, length: int = 16, batch: int = 8, seed: int = 0):
    """Random pairs sharing a prompt of 3-7 tokens, as the preference pipeline's batches (repeated)."""
    import grain
    import numpy as np

    rng = np.random.default_rng(seed)
    prompts = rng.integers(3, 8, rows).astype(np.int32)
    chosen = rng.integers(5, 512, (rows, length)).astype(np.int32)
    rejected = np.where(np.arange(length)[None, :] < prompts[:, None], chosen,
                        rng.integers(5, 512, (rows, length))).astype(np.int32)
    items = [{"chosen": chosen[i], "rejected": rejected[i], "prompt_lengths": prompts[i]} for i in range(rows)]
    return grain.MapDataset.source(items).shuffle(seed=seed).repeat().batch(batch).to_iter_dataset()


def main(argv):
    run_dir, steps, init_from = argv[0], int(argv[1]), argv[2]
    pause = float(argv[3]) if len(argv) > 3 else 0.0
    from llada_jax.training.loop import run_training

    def on_log(record):
        print(f"STEP {record['step']}", flush=True)
        time.sleep(pause)

    result = run_training(vrpo_config(run_dir, steps, init_from), preference_batches(), mesh=worker_mesh(),
                          progress=False, on_log=on_log)
    print(f"RESULT {result.status} {result.step} {result.resumed_from}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
