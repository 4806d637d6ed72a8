"""Training checkpoints: an Orbax CheckpointManager over the train state, the Grain iterator and the config.

Layout of a run directory (`train.checkpoint_dir`):

    config.yaml          the resolved config of the run (what `checkpoint.read_config` reads)
    <step>/state/        TrainState pytree (params, optimizer state, step, rng, bad_steps)
    <step>/data/         Grain iterator state, one JSON file per process
    <step>/config/       the resolved config of that step (JSON)

Restoring goes into an abstract state that carries the *current* mesh's shardings, which is
also how a checkpoint moves to another mesh shape. A checkpoint whose architecture differs
from the config is refused with the list of what differs.
"""

from __future__ import annotations

from pathlib import Path

import jax

from llada_jax.io.checkpoint import CONFIG_FILE, read_config, write_config
from llada_jax.config import Config, ModelConfig

# ModelConfig fields that change the shape of the params: a checkpoint must agree on all of them.
ARCH_FIELDS = ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "mlp_hidden_size", "weight_tying")


class IncompatibleCheckpointError(ValueError):
    """The checkpoint was written for another architecture or optimizer layout."""


def arch_differences(saved: ModelConfig, current: ModelConfig) -> list[str]:
    """`field: checkpoint X, config Y` for every architecture field that differs."""
    return [f"model.{f}: checkpoint {getattr(saved, f)}, config {getattr(current, f)}"
            for f in ARCH_FIELDS if getattr(saved, f) != getattr(current, f)]


def _shape_differences(saved_tree, target_tree) -> list[str]:
    saved = {jax.tree_util.keystr(p): tuple(m.shape) for p, m in jax.tree_util.tree_flatten_with_path(saved_tree)[0]
             if hasattr(m, "shape")}
    target = {jax.tree_util.keystr(p): tuple(s.shape) for p, s in jax.tree_util.tree_flatten_with_path(target_tree)[0]}
    out = [f"params{k}: missing from checkpoint" for k in target if k not in saved]
    for k, shape in target.items():
        other = saved.get(k)
        if other is not None and other != shape:
            out.append(f"params{k}: checkpoint shape {other}, config shape {shape}")
    return out


class TrainCheckpointer:
    """Save/restore `(TrainState, Grain iterator)` pairs with async Orbax writes and rotation."""

    def __init__(self, directory: str | Path, config: Config, *, async_save: bool | None = None):
        import orbax.checkpoint as ocp

        self.directory = Path(directory).absolute()
        self.config = config
        train = config.train
        options = ocp.CheckpointManagerOptions(
            max_to_keep=train.max_to_keep,
            enable_async_checkpointing=train.async_checkpointing if async_save is None else async_save,
            create=True,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    # -- queries ---------------------------------------------------------------------------
    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def saved_config(self) -> Config | None:
        return read_config(self.directory) if (self.directory / CONFIG_FILE).is_file() else None

    def check_compatible(self, step: int, target_state) -> None:
        """Raise `IncompatibleCheckpointError` naming what differs from the current config."""
        problems = []
        saved = self.saved_config()
        if saved is not None:
            problems += arch_differences(saved.model, self.config.model)
        if not problems:
            meta = self.manager.item_metadata(step)
            tree = getattr(meta["state"], "tree", None) if meta is not None else None
            if isinstance(tree, dict) and "params" in tree:
                problems += _shape_differences(tree["params"], target_state.params)
        if problems:
            raise IncompatibleCheckpointError(
                f"{self.directory} step {step} does not match this config: " + "; ".join(problems[:10])
                + (f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""))

    # -- save / restore --------------------------------------------------------------------
    def save(self, step: int, state, data_iterator=None) -> bool:
        """Start an (async) save of `state` and the iterator position at `step`."""
        import orbax.checkpoint as ocp

        if jax.process_index() == 0:
            self.directory.mkdir(parents=True, exist_ok=True)
            write_config(self.directory, self.config)
        items = {"state": ocp.args.PyTreeSave(state), "config": ocp.args.JsonSave(self.config.to_dict())}
        if data_iterator is not None:
            import grain

            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        return self.manager.save(step, args=ocp.args.Composite(**items), force=True)

    def restore(self, step: int, target_state, data_iterator=None):
        """`(state, iterator)` at `step`, placed by the shardings in `target_state` (abstract)."""
        import orbax.checkpoint as ocp

        self.check_compatible(step, target_state)
        restore_args = ocp.checkpoint_utils.construct_restore_args(target_state)
        items = {"state": ocp.args.PyTreeRestore(item=target_state, restore_args=restore_args)}
        if data_iterator is not None:
            import grain

            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        return restored["state"], (restored["data"] if data_iterator is not None else None)

    def restore_params(self, step: int | None, target_params):
        """Only the params of a step (latest by default), e.g. for export; no optimizer state is read."""
        import orbax.checkpoint as ocp

        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{self.directory}: no training checkpoint")
        one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target_params = jax.tree.map(
            lambda s: s if getattr(s, "sharding", None) is not None else jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=one),
            target_params)
        part = {"params": target_params}
        args = ocp.args.PyTreeRestore(item=part, restore_args=ocp.checkpoint_utils.construct_restore_args(part),
                                      partial_restore=True)
        return self.manager.restore(step, args=ocp.args.Composite(state=args))["state"]["params"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def export_checkpoint(run_dir: str | Path, out: str | Path, *, step: int | None = None, fmt: str = "params",
                      dtype: str | None = None) -> Path:
    """Write the params of a training checkpoint as a params export (`fmt="params"`) or HF layout (`"hf"`)."""
    from llada_jax.io.checkpoint import read_config, save_params
    from llada_jax.model.transformer import param_shapes

    run_dir = Path(run_dir)
    config = read_config(run_dir)
    ckpt = TrainCheckpointer(run_dir, config, async_save=False)
    try:
        params = ckpt.restore_params(step, param_shapes(config.model))
    finally:
        ckpt.close()
    if fmt == "params":
        return save_params(out, config, params)
    if fmt == "hf":
        from llada_jax.io.hf import save_hf_checkpoint

        save_hf_checkpoint(out, config.model, params, dtype=dtype)
        return Path(out)
    raise ValueError(f"export format '{fmt}' is not one of params, hf")
