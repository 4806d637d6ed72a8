"""The run-folder checkpoint format: an Orbax CheckpointManager over the train state, the Grain iterator and the config.

Layout of a run directory (`train.checkpoint_dir`):

    config.yaml          the resolved config of the run (what `checkpoint.read_config` reads)
    <step>/state/        TrainState pytree (params, optimizer state, step, rng, bad_steps)
    <step>/data/         Grain iterator state, one JSON file per process
    <step>/config/       the resolved config of that step (JSON)
    <step>/integrity/    fingerprints of every array and of each process's iterator state (JSON)
    <step>/reference/    post-training runs: where the frozen reference came from and its fingerprint (JSON);
                         the reference itself is not saved (it is `train.init_from`, read again on resume)

The directory may be local or on a bucket (`gs://...`): Orbax and Grain write through
etils.epath / tensorstore. Restoring goes into an abstract state that carries the *current*
mesh's shardings, which is also how a checkpoint moves to another mesh shape. A checkpoint
whose architecture differs from the config (read from the step's own config, so it works
without the run's config.yaml) is refused with the list of what differs.

Every restore verifies the fingerprints (`io/integrity.py`). `restore_latest` walks back
from the newest step to the newest one that reads and verifies, reporting each one that does
not in one line; if none does it raises `CheckpointDamagedError` listing them all. With several
processes each reads and checks its own part first (its shards against the fingerprint shares it
saved, its iterator file) with no collective, then all exchange their verdicts before anything
collective runs, so they restore the same step, and the report names the process and its files. A run with a
reference refuses (`ReferenceMismatchError`) a step recorded with another reference.
"""

from __future__ import annotations

import json
import re

import jax

from llada_jax.config import Config, ConfigError, ModelConfig, config_from_dict
from llada_jax.io.checkpoint import CONFIG_FILE, quiet_abandoned_reads, read_config, write_config
from llada_jax.io.paths import PathLike, as_path, is_file, is_lead, path_str
from llada_jax.io import integrity

# ModelConfig fields that change the shape of the params: a checkpoint must agree on all of them.
ARCH_FIELDS = ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "mlp_hidden_size", "weight_tying")


class IncompatibleCheckpointError(ValueError):
    """The checkpoint was written for another architecture or optimizer layout."""


class ReferenceMismatchError(ValueError):
    """A post-training checkpoint was trained against another reference model than the one given now."""


class CheckpointDamagedError(ValueError):
    """A checkpoint that cannot be read or does not match its fingerprints (message: step, what failed)."""


def _file_in_error(e: BaseException) -> str | None:
    """The file a storage error names (tensorstore puts it in the exception's cause; the most
    specific path wins: a data file over the folder of its database), or None."""
    seen, found = set(), []
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        for m in re.finditer(r'(?:file|object) "([^"]+)"|(gs://[^\s"\',;\]]+)', str(e)):
            found.append((m.group(1) or m.group(2)).rstrip(":."))
        e = e.__cause__ or e.__context__
    return max(found, key=lambda f: f.count("/"), default=None)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


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
    """Save/restore `(TrainState, Grain iterator)` pairs with async Orbax writes, rotation and verification."""

    def __init__(self, directory: PathLike, config: Config, *, async_save: bool | None = None,
                 reference: dict | None = None):
        """`reference`: `{"source", "fingerprint"}` of the run's frozen reference model (post-training),
        saved with every step and checked on every restore; None: the run has none."""
        import orbax.checkpoint as ocp

        self.reference = reference

        self.directory = as_path(directory)
        if is_file(self.directory):
            raise ValueError(f"train.checkpoint_dir {path_str(self.directory)} is a file, not a directory")
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

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def saved_config(self) -> Config | None:
        return read_config(self.directory) if is_file(self.directory / CONFIG_FILE) else None

    def _json_item(self, step: int, name: str) -> dict:
        """A JSON item of a step (`config`, `integrity`), or CheckpointDamagedError naming it."""
        file = self.directory / str(step) / name / "metadata"
        try:
            value = json.loads(file.read_text())
            if not isinstance(value, dict):
                raise ValueError("not a JSON object")
            return value
        except Exception as e:
            raise CheckpointDamagedError(f"checkpoint step {step}: {name} unreadable ({_first_line(e)})") from None

    def step_config(self, step: int) -> Config:
        """The resolved config saved with `step` (the checkpoint's own metadata)."""
        try:
            return config_from_dict(self._json_item(step, "config"))
        except ConfigError as e:
            raise CheckpointDamagedError(f"checkpoint step {step}: config damaged ({e})") from None

    def check_compatible(self, step: int, target_state) -> None:
        """Raise `IncompatibleCheckpointError` naming what differs from the current config."""
        problems = arch_differences(self.step_config(step).model, self.config.model)
        quiet_abandoned_reads()
        if not problems:
            try:
                import orbax.checkpoint as ocp

                meta = ocp.PyTreeCheckpointHandler().metadata(self.directory / str(step) / "state")
                tree = getattr(meta, "tree", None)
            except Exception as e:
                raise CheckpointDamagedError(f"checkpoint step {step}: state metadata unreadable "
                                             f"({_first_line(e)})") from None
            if isinstance(tree, dict) and "params" in tree:
                target = target_state["params"] if isinstance(target_state, dict) else target_state.params
                problems += _shape_differences(tree["params"], target)
        if problems:
            raise IncompatibleCheckpointError(
                f"{path_str(self.directory)} step {step} does not match this config: " + "; ".join(problems[:10])
                + (f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""))

    def check_reference(self, step: int) -> None:
        """Raise `ReferenceMismatchError` unless `step` was trained against this run's reference."""
        if self.reference is None:
            return
        if not is_file(self.directory / str(step) / "reference" / "metadata"):
            raise ReferenceMismatchError(
                f"{path_str(self.directory)} step {step} records no reference model, but train.init_from "
                f"{self.reference['source']} is one: resume it without a reference objective or use a new "
                f"train.checkpoint_dir")
        saved = self._json_item(step, "reference")
        if saved.get("fingerprint") != self.reference["fingerprint"]:
            raise ReferenceMismatchError(
                f"{path_str(self.directory)} step {step} was trained against reference {saved.get('source')} "
                f"(fingerprint {str(saved.get('fingerprint'))[:16]}), not train.init_from "
                f"{self.reference['source']} (fingerprint {self.reference['fingerprint'][:16]}): resume with "
                f"the same reference or use a new train.checkpoint_dir")

    # -- save / restore --------------------------------------------------------------------
    def save(self, step: int, state, data_iterator=None) -> bool:
        """Start an (async) save of `state`, the iterator position and their fingerprints at `step`."""
        import orbax.checkpoint as ocp

        if is_lead():
            self.directory.mkdir(parents=True, exist_ok=True)
            write_config(self.directory, self.config)
        shares = integrity.all_process_shares(integrity.process_fingerprints(state))
        record = {"arrays": integrity.fingerprints_from_shares(shares), "processes": shares}
        items = {"state": ocp.args.PyTreeSave(state), "config": ocp.args.JsonSave(self.config.to_dict())}
        if data_iterator is not None:
            import grain

            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
            record["data"] = integrity.all_process_strings(
                integrity.data_state_fingerprint(data_iterator.get_state()))
        items["integrity"] = ocp.args.JsonSave(record)
        if self.reference is not None:
            items["reference"] = ocp.args.JsonSave(self.reference)
        return self.manager.save(step, args=ocp.args.Composite(**items), force=True)

    def _read_local(self, step: int, target_state, data_iterator, partial: bool):
        """This process's part of a restore: the step's JSON items, its shards of the state and its
        iterator file, checked against what can be checked alone, and its fingerprint shares. No
        collective and no barrier, so a process that fails here cannot leave the others waiting;
        CheckpointDamagedError naming the step (and the file, where the error names it) otherwise."""
        import orbax.checkpoint as ocp

        record = self._json_item(step, "integrity")
        self.check_compatible(step, target_state)
        self.check_reference(step)
        step_dir = self.directory / str(step)
        restore_args = ocp.checkpoint_utils.construct_restore_args(target_state)
        handler = ocp.PyTreeCheckpointHandler()
        try:
            state = handler.restore(step_dir / "state", args=ocp.args.PyTreeRestore(
                item=target_state, restore_args=restore_args, partial_restore=partial))
        except Exception as e:
            file = _file_in_error(e)
            if file is None or file.rstrip("/").endswith("/state"):  # the database, not the file: its own files
                file = f"{path_str(step_dir / 'state' / f'ocdbt.process_{jax.process_index()}')}/ (this process's files)"
            raise CheckpointDamagedError(f"checkpoint step {step}: unreadable ({_first_line(e)}) in {file}") from None
        finally:
            handler.close()
        shares = self._check_own_shards(step, state, record)
        if data_iterator is not None:
            import grain

            index, count = jax.process_index(), jax.process_count()
            name = f"data/process_{index}-of-{count}.json"
            try:
                data_iterator = grain.checkpoint.CheckpointHandler().restore(
                    step_dir / "data", args=grain.checkpoint.CheckpointRestore(data_iterator))
            except Exception as e:
                raise CheckpointDamagedError(f"checkpoint step {step}: {name} unreadable ({_first_line(e)})") from None
            saved = record.get("data") or []
            mine = integrity.data_state_fingerprint(data_iterator.get_state())
            if len(saved) != count or saved[index] != mine:
                raise CheckpointDamagedError(f"checkpoint step {step}: {name} failed verification (iterator state "
                                             f"fingerprint differs from the saved one)")
        return state, data_iterator, record, shares

    def _check_own_shards(self, step: int, state, record: dict) -> dict[str, str]:
        """This process's fingerprint shares of the restored state, checked against the ones it saved
        where it owns the same shards as when saving (same mesh and process count): names its files."""
        saved, mine = record.get("processes"), integrity.process_fingerprints(state)
        index = jax.process_index()
        if not isinstance(saved, list) or len(saved) != jax.process_count() or not isinstance(saved[index], dict):
            return mine  # written before per-process shares, or by another number of processes: the global check
        saved = saved[index]
        bad = [k for k, v in mine.items() if str(saved.get(k, ""))[16:] == v[16:] and saved[k][:16] != v[:16]]
        if bad:
            raise CheckpointDamagedError(
                f"checkpoint step {step}: failed verification (arrays {', '.join(bad[:3])}"
                + (f" and {len(bad) - 3} more" if len(bad) > 3 else "") + " differ from what this process saved; "
                f"its files: {path_str(self.directory / str(step) / 'state' / f'ocdbt.process_{index}')}/)")
        return mine

    def _verify_arrays(self, step: int, shares: dict[str, str], record: dict, partial: bool) -> None:
        """Compare the restored arrays' fingerprints, added up from every process's shares (one exchange:
        every process takes part and gets the same answer), with the saved ones."""
        expected = record.get("arrays") or {}
        actual = integrity.fingerprints_from_shares(integrity.all_process_shares(shares))
        if partial:
            expected = {k: v for k, v in expected.items() if k in actual}
        problems = integrity.differences(expected, actual) if expected else ["no array fingerprints saved"]
        if problems:
            raise CheckpointDamagedError(f"checkpoint step {step}: failed verification ({'; '.join(problems[:3])}"
                                         + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "") + ")")

    def _read(self, step: int, target_state, data_iterator, partial: bool = False):
        """Restore `step` and verify it on every process; CheckpointDamagedError (step, process, what
        failed) on all of them when any one fails, so that all processes take the same decision."""
        try:
            state, data_iterator, record, shares = self._read_local(step, target_state, data_iterator, partial)
            problem = ""
        except CheckpointDamagedError as e:
            state, record, shares, problem = None, None, None, str(e)
        problems = integrity.all_process_texts(problem)  # the one exchange before anything collective
        failed = [(i, m) for i, m in enumerate(problems) if m]
        if failed:
            if len(problems) == 1:
                raise CheckpointDamagedError(failed[0][1])
            raise CheckpointDamagedError(
                f"checkpoint step {step}: " + "; ".join(f"process {i} of {len(problems)}: "
                                                        f"{m.removeprefix(f'checkpoint step {step}: ')}"
                                                        for i, m in failed))
        self._verify_arrays(step, shares, record, partial)
        return state, data_iterator

    def restore(self, step: int, target_state, data_iterator=None):
        """`(state, iterator)` at `step`, placed by the shardings in `target_state` (abstract), verified."""
        return self._read(step, target_state, data_iterator)

    def agreed_steps(self, report=None) -> list[int]:
        """The steps every process lists (the same list everywhere); a step some process does not
        see is reported and passed over."""
        mine = self.all_steps()
        lists = [json.loads(t) for t in integrity.all_process_texts(json.dumps(mine))]
        common = sorted(set(mine).intersection(*map(set, lists)))
        for step in sorted(set().union(*map(set, lists)) - set(common)):
            missing = [i for i, steps in enumerate(lists) if step not in steps]
            if report is not None:
                report(f"checkpoint step {step}: not found by process(es) {', '.join(map(str, missing))} "
                       f"of {len(lists)} in {path_str(self.directory)}")
        return common

    def restore_latest(self, target_state, data_iterator=None, report=None):
        """`(state, iterator, step)` of the newest step that reads and verifies on every process;
        `(None, iterator, None)` when there is no checkpoint. Each step that fails (on any process)
        is passed to `report` as one line naming the process and what failed; the failed steps
        newer than the one restored are then removed, once, by the lead process (the run writes
        them again)."""
        failed: list[tuple[int, str]] = []
        for step in reversed(self.agreed_steps(report)):
            try:
                state, data_iterator = self._read(step, target_state, data_iterator)
            except CheckpointDamagedError as e:
                failed.append((step, str(e)))
                if report is not None:
                    report(str(e))
                continue
            if failed:
                if report is not None:
                    report(f"resuming from step {step}, the newest checkpoint that verifies on every process; "
                           f"removing damaged step(s) {', '.join(str(s) for s, _ in failed)}")
                for s, _ in failed:
                    self.manager.delete(s)  # every process calls it; Orbax deletes on the primary process only
            return state, data_iterator, step
        if failed:
            raise CheckpointDamagedError(f"no checkpoint in {path_str(self.directory)} verifies: "
                                         + " | ".join(m for _, m in failed))
        return None, data_iterator, None

    def restore_params(self, step: int | None, target_params):
        """Only the params of a step (latest by default), verified, e.g. for export; no optimizer state is read."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{path_str(self.directory)}: no training checkpoint")
        if step not in self.manager.all_steps():
            raise FileNotFoundError(f"{path_str(self.directory)}: no checkpoint at step {step} "
                                    f"(steps: {', '.join(map(str, self.all_steps()))})")
        one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target_params = jax.tree.map(
            lambda s: s if getattr(s, "sharding", None) is not None else jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=one),
            target_params)
        state, _ = self._read(step, {"params": target_params}, None, partial=True)
        return state["params"]

    def verify(self, target_state_fn) -> list[tuple[int, str | None]]:
        """`(step, None)` for each step that reads and verifies, `(step, reason)` for each that does not.

        `target_state_fn(config)` gives the abstract state to restore into for a step's config.
        """
        out = []
        for step in self.all_steps():
            try:
                config = self.step_config(step)
                self.config = config
                self._read(step, target_state_fn(config), None)
                self._verify_data_files(step)
                out.append((step, None))
            except (CheckpointDamagedError, IncompatibleCheckpointError) as e:
                out.append((step, str(e)))
        return out

    def _verify_data_files(self, step: int) -> None:
        """Check each process's saved iterator state against its fingerprint (offline)."""
        saved = self._json_item(step, "integrity").get("data")
        if saved is None:
            return
        for i, expected in enumerate(saved):
            file = self.directory / str(step) / "data" / f"process_{i}-of-{len(saved)}.json"
            try:
                actual = integrity.data_state_fingerprint(file.read_text())
            except Exception as e:
                raise CheckpointDamagedError(f"checkpoint step {step}: data/{file.name} unreadable "
                                             f"({_first_line(e)})") from None
            if actual != expected:
                raise CheckpointDamagedError(f"checkpoint step {step}: data/{file.name} failed verification")

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def export_checkpoint(run_dir: PathLike, out: PathLike, *, step: int | None = None, fmt: str = "params",
                      dtype: str | None = None):
    """Write the params of a training checkpoint as a params export (`fmt="params"`) or HF layout (`"hf"`)."""
    from llada_jax.io.checkpoint import read_config, save_params
    from llada_jax.model.transformer import param_shapes

    run_dir = as_path(run_dir)
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
        return as_path(out)
    raise ValueError(f"export format '{fmt}' is not one of params, hf")
