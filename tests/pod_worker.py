"""A tiny pretraining run on the real data pipeline, for the storage tests:
`python tests/pod_worker.py STEPS SLEEP override...` (overrides as for the CLI, e.g.
`train.checkpoint_dir=gs://b/run data.files=[gs://b/data]`).

Like the `pretrain` command (tokenizer, Grain pipeline over `data.files`, the loop, Orbax
checkpoints) but with a pause after each logged step, so a test can kill it at a known point.
Prints `STEP n` after each logged step and `RESULT status step resumed_from` at the end.
"""

import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

OVERRIDES = ["train.warmup_steps=2", "train.decay_steps=2", "train.batch_size=4", "train.seq_len=32",
             "train.learning_rate=5e-3", "train.log_every=1", "train.checkpoint_every_steps=2",
             "train.max_to_keep=10", "train.tensorboard=true", "data.text_unit=paragraph"]


def pod_config(steps: int, overrides):
    from llada_jax.config import load_config

    return load_config(REPO / "configs" / "tiny.yaml", [*OVERRIDES, f"train.steps={steps}", *overrides])


def main(argv):
    steps, pause, overrides = int(argv[0]), float(argv[1]), argv[2:]
    from llada_jax.model.sharding import make_mesh
    from llada_jax.config import MeshConfig
    from llada_jax.training.loop import make_dataset, run_training
    import jax

    config = pod_config(steps, overrides)

    def on_log(record):
        print(f"STEP {record['step']}", flush=True)
        time.sleep(pause)

    result = run_training(config, make_dataset(config), mesh=make_mesh(MeshConfig(), jax.devices()[:2]),
                          progress=False, on_log=on_log)
    print(f"RESULT {result.status} {result.step} {result.resumed_from}", flush=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main(sys.argv[1:]))
