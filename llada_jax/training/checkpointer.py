"""Offline verification of a run's checkpoints against the train state's layout (`verify` command).

The checkpoint format and its reader live in `io/run_checkpoint.py`; checking every step needs the
abstract train state of each step's own config, which is training's to build.
"""

from __future__ import annotations

import jax

from llada_jax.config import MeshConfig, config_from_dict
from llada_jax.io.checkpoint import CONFIG_FILE, read_config
from llada_jax.io.paths import PathLike, as_path, is_file, path_str
from llada_jax.io.run_checkpoint import TrainCheckpointer


def verify_run(run_dir: PathLike) -> list[tuple[int, str | None]]:
    """Verify every checkpoint of a run directory offline (see `TrainCheckpointer.verify`)."""
    from llada_jax.model.sharding import make_mesh
    from llada_jax.training.step import abstract_state  # step imports this package's optimizer setup

    run_dir = as_path(run_dir)
    if not run_dir.is_dir():
        kind = "is a file, not a directory" if run_dir.exists() else "does not exist"
        raise FileNotFoundError(f"run directory {path_str(run_dir)} {kind}")
    config = read_config(run_dir) if is_file(run_dir / CONFIG_FILE) else None
    mesh = make_mesh(MeshConfig(), jax.devices())
    ckpt = TrainCheckpointer(run_dir, config if config is not None else config_from_dict({}), async_save=False)
    try:
        results = ckpt.verify(lambda c: abstract_state(c, mesh))
    finally:
        ckpt.close()
    if not results:  # a mistyped folder would otherwise "verify" with nothing checked
        raise FileNotFoundError(f"{path_str(run_dir)}: no checkpoints to verify (no step folders: not a training run, "
                                f"or none saved yet)")
    return results
