"""The training loop driver: data in, sharded steps, metrics, checkpoints, preemption.

`run_training(config, dataset)` builds the mesh, resumes from the newest checkpoint in
`train.checkpoint_dir` that verifies (state and data iterator; see `TrainCheckpointer.
restore_latest`) or starts fresh, then runs the jitted step until `train.steps`. Metrics of
step n are fetched while step n+1 runs (one step of lag keeps the device busy; within one bad
step of `max_bad_steps` they are fetched at once, so the run stops after exactly that many). Every `log_every` steps it writes loss, gradient norm, learning rate,
tokens/s, TFLOP/s per device and MFU to JSONL and TensorBoard, and updates the progress bar.
A non-finite step is skipped by the step itself; the loop reports it and stops after
`max_bad_steps` in a row without saving, so the last good checkpoint stays the latest.
SIGTERM (TPU preemption) saves at the next step boundary (with several processes, the next
multiple of `log_every`, where they agree) and returns status "preempted".
Hooks of its own modules: validation every `eval_every` steps (`validation`), traces of chosen
steps (`profiling`), and the wall time split by what it was spent on (`timing`).
An objective with a reference (vrpo, grpo: `training.objectives`) loads `train.init_from` once
as the frozen reference, starts the policy from a copy of it, passes it to every step and to
validation, and records its source and fingerprint with every checkpoint; a resume against
another reference is refused. The objective's own metrics (averaged over the log window) go to
the log with the loss, and those it names to the progress bar.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from llada_jax.config import Config
from llada_jax.training.metrics import MetricWriter, throughput
from llada_jax.model.sharding import host_batch_to_global, make_mesh, param_shardings
from llada_jax.training.objectives import objective_of
from llada_jax.training.step import abstract_state, batch_shapes, init_state, make_train_step
from llada_jax.io.integrity import tree_fingerprint
from llada_jax.io.run_checkpoint import TrainCheckpointer
from llada_jax.training.profiling import Profiler
from llada_jax.training.rollout import RolloutSource, make_rollout_source
from llada_jax.training.timing import StepTimer
from llada_jax.training.validation import eval_due, make_validator
from llada_jax.training.preemption import StopFlag


@dataclasses.dataclass
class RunResult:
    status: str                      # "done" | "preempted" | "diverged"
    step: int                        # optimizer steps completed
    last_metrics: dict
    skipped_steps: list[int]
    resumed_from: int | None
    state: Any = None                # the final TrainState (on device)
    timing: dict = dataclasses.field(default_factory=dict)  # StepTimer.summary(): goodput and totals


def _sync_flags(stop_requested: bool, save_due: bool) -> tuple[bool, bool]:
    """(stop, save) agreed by every process: any one's SIGTERM stops all; the wall-clock save
    decision is process 0's. One small collective, which waits for the step in flight."""
    if jax.process_count() == 1:
        return stop_requested, save_due
    from jax.experimental import multihost_utils

    flags = multihost_utils.process_allgather(np.asarray([stop_requested, save_due]))  # [processes, 2]
    return bool(flags[:, 0].any()), bool(flags[0, 1])


def _host_batch(batch: dict, config: Config) -> dict:
    train = config.train
    out = {}
    for k, want in batch_shapes(train, train.batch_size // jax.process_count()).items():
        if k not in batch:
            raise ValueError(f"data batch has no '{k}' field (has {', '.join(batch)}) for objective {train.objective}")
        v = np.asarray(batch[k])
        if v.shape != want:
            raise ValueError(f"data batch '{k}' has shape {v.shape}, expected {want} "
                             f"(train.batch_size {train.batch_size} over {jax.process_count()} processes)")
        out[k] = v
    return out


# Step metrics that are bookkeeping, not averaged into the log line.
_STEP_FIELDS = ("lr", "finite", "step", "bad_steps")


def _scalars(metrics: dict) -> dict:
    host = jax.device_get(metrics)
    return {k: (bool(v) if k == "finite" else int(v) if k in ("step", "bad_steps") else float(v))
            for k, v in host.items()}


def run_training(config: Config, dataset, *, mesh=None, progress: bool = True,
                 on_log: Callable[[dict], None] | None = None, initial_params: Any = None,
                 eval_dataset=None) -> RunResult:
    """Train `config` on `dataset` (a Grain IterDataset of per-process batch dicts) to `train.steps`.

    `eval_dataset` (same batches, e.g. `make_dataset(config, split="eval")`) is the validation data.
    """
    train = config.train
    objective = objective_of(train.objective)
    mesh = make_mesh(config.mesh) if mesh is None else mesh
    step_fn = make_train_step(config, mesh)
    reference, reference_record = None, None
    if objective.needs_reference:
        with jax.set_mesh(mesh):
            if initial_params is None:
                reference = load_initial_params(config, mesh)
            else:
                reference = jax.device_put(initial_params, param_shardings(config.model, mesh))
            reference_record = {"source": train.init_from, "fingerprint": tree_fingerprint(reference)}
    validator = make_validator(config, mesh, eval_dataset, reference)  # before anything is written
    if reference is None and initial_params is None and not _has_checkpoints(train.checkpoint_dir):
        check_init_source(config)  # a fresh run: a bad train.init_from fails before the run folder is made
    ckpt = TrainCheckpointer(train.checkpoint_dir, config, reference=reference_record)
    writer = MetricWriter(train.checkpoint_dir, tensorboard=train.tensorboard)
    data_iter = iter(dataset)
    stop = StopFlag().install()
    profiler = Profiler(train.checkpoint_dir, train).install()
    timer = StepTimer()
    bar = None

    def say(line: str) -> None:  # through the bar when there is one; also with --no-progress
        if jax.process_index() == 0:
            bar.write(line) if bar is not None else print(line, file=sys.stderr, flush=True)

    try:
        with jax.set_mesh(mesh):
            state, data_iter, resumed = ckpt.restore_latest(abstract_state(config, mesh), data_iter, report=say)
            if resumed is None:
                if reference is not None:  # a copy: the step donates the state, never the reference
                    initial_params = jax.tree.map(jnp.copy, reference)
                elif initial_params is None:
                    initial_params = load_initial_params(config, mesh)
                state = init_state(config, mesh, initial_params)
            step = int(jax.device_get(state.step))
            timer.mark("setup")  # restore or init (their compiles count as compile)
            shown: dict = {}  # validation loss on the progress bar
            if progress and jax.process_index() == 0:
                from tqdm import tqdm

                bar = tqdm(total=train.steps, initial=step, desc=train.objective, unit="step", dynamic_ncols=True)
            kind = mesh.devices.flat[0].device_kind
            n_dev = mesh.devices.size
            skipped: list[int] = []
            consecutive_bad = 0
            last: dict = {}
            window: dict = {"n": 0}  # sums of the logged metrics since the last log line
            t_log, steps_at_log = time.perf_counter(), step
            t_save = time.monotonic()
            last_saved = resumed
            pending = None
            status = "done"

            def consume(m):
                nonlocal consecutive_bad, last, t_log, steps_at_log
                vals = _scalars(m)
                last = vals
                s = vals["step"] + 1  # metrics of the update that produced step s
                consecutive_bad = vals["bad_steps"]  # kept in the train state, so it survives a resume
                if not vals["finite"]:
                    skipped.append(s)
                    writer.write(s, {"skipped": 1.0, "loss": vals["loss"], "grad_norm": vals["grad_norm"]})
                    say(f"step {s}: non-finite loss {vals['loss']} or grad norm {vals['grad_norm']}; "
                        f"update skipped ({consecutive_bad} in a row)")
                    return
                for k, v in vals.items():
                    if k not in _STEP_FIELDS:
                        window[k] = window.get(k, 0.0) + v
                window["n"] += 1
                if s % train.log_every == 0 or s == train.steps:
                    now = time.perf_counter()
                    dt = (now - t_log) / max(s - steps_at_log, 1)
                    means = {k: v / window["n"] for k, v in window.items() if k != "n"}
                    record = {"loss": means.pop("loss"), "grad_norm": means.pop("grad_norm"),
                              "lr": vals["lr"], **means, "step_time_s": dt,
                              **throughput(config.model, train, dt, n_dev, kind, objective.passes_of(config)),
                              **timer.split()}
                    timer.check_input_wait(record, train.input_wait_warning, config.data, f"{steps_at_log + 1}-{s}")
                    writer.write(s, record)
                    if on_log is not None:
                        on_log({"step": s, **record})
                    if bar is not None:
                        bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}",
                                        **{k: f"{record[k]:.4g}" for k in objective.shown if k in record},
                                        tok_s=f"{record['tokens_per_s']:.0f}",
                                        **({"mfu": f"{record['mfu']:.1%}"} if record["mfu"] is not None else {}),
                                        **shown)
                    window.clear()
                    window["n"] = 0
                    t_log, steps_at_log = now, s

            def flush():
                nonlocal pending
                if pending is not None:
                    consume(pending)
                    pending = None

            while step < train.steps:
                profiler.before_step(step + 1)
                if isinstance(data_iter, RolloutSource):  # grpo: batches sampled by the policy itself
                    with timer.section("rollout"):
                        batch = host_batch_to_global(_host_batch(data_iter.next_batch(state, step, mesh), config),
                                                     mesh)
                    source_metrics = data_iter.batch_metrics
                else:
                    with timer.section("data"):
                        batch = host_batch_to_global(_host_batch(next(data_iter), config), mesh)
                    source_metrics = {}
                with timer.section("step"):
                    state, metrics = step_fn(state, batch) if reference is None else step_fn(state, batch, reference)
                    step += 1
                    flush()
                pending = {**metrics, **source_metrics}
                if consecutive_bad >= train.max_bad_steps - 1:
                    with timer.section("step"):
                        flush()  # one more bad step stops the run: know now, not one step later
                if bar is not None:
                    bar.update(1)
                if consecutive_bad >= train.max_bad_steps:
                    status = "diverged"
                    break
                with timer.section("profile"):
                    profiler.after_step(step, state)
                if validator is not None and eval_due(step, train):
                    with timer.section("eval"):
                        values = validator(state.params)
                    writer.write(step, values)
                    shown["eval"] = f"{values['eval/loss']:.4f}"
                # Several processes agree on stopping/saving every `log_every` steps (a per-step
                # collective would wait for each step and lose the one-step overlap); one process
                # checks every step, for free.
                preempt = by_time = False
                if jax.process_count() == 1 or step % train.log_every == 0 or step == train.steps:
                    time_due = (train.checkpoint_every_minutes > 0
                                and time.monotonic() - t_save >= 60.0 * train.checkpoint_every_minutes)
                    preempt, by_time = _sync_flags(stop.requested, time_due)
                by_steps = train.checkpoint_every_steps > 0 and step % train.checkpoint_every_steps == 0
                if preempt or by_steps or by_time or step == train.steps:
                    with timer.section("step"):
                        flush()
                    if consecutive_bad >= train.max_bad_steps:
                        status = "diverged"
                        break
                    if consecutive_bad == 0 or preempt:
                        with timer.section("save"):
                            ckpt.save(step, state, data_iter)
                        last_saved, t_save = step, time.monotonic()
                if preempt:
                    status = "preempted"
                    break
            with timer.section("step"):
                flush()
            if status == "diverged":
                say(f"stopping: {consecutive_bad} consecutive non-finite steps (last verified checkpoint: "
                    f"{'none' if last_saved is None else f'step {last_saved}'})")
            elif status == "preempted":
                say(f"stopping: SIGTERM received; saved a checkpoint at step {step}")
            with timer.section("save"):
                ckpt.wait()
            summary = timer.summary()
            writer.write(step, summary)
            return RunResult(status, step, last, skipped, resumed, state, summary)
    finally:
        stop.uninstall()
        profiler.close()
        timer.close()
        if bar is not None:
            bar.close()
        writer.close()
        ckpt.close()


def make_dataset(config: Config, tokenizer=None, split: str = "train"):
    """This process's Grain pipeline for `config` (the objective's batches) with its per-process batch.

    `split="eval"`: the validation pipeline (`data.eval_files` or the held-out `data.eval_fraction`),
    or None when neither is set.
    """
    from llada_jax import data
    from llada_jax.data.split import eval_data_config
    from llada_jax.io.tokenizer import check_tokenizer_matches, load_tokenizer

    train = config.train
    data_cfg, part = config.data, split
    if split == "eval":
        found = eval_data_config(config.data)
        if found is None:
            return None
        data_cfg, part = found
    if tokenizer is None:
        if not train.tokenizer:
            raise ValueError("train.tokenizer: no tokenizer given (a sentencepiece .model, tokenizer.json or "
                             "a directory holding one)")
        tokenizer = load_tokenizer(train.tokenizer)
    check_tokenizer_matches(tokenizer, config.model)
    count = jax.process_count()
    if train.batch_size % count:
        raise ValueError(f"train.batch_size={train.batch_size} does not split over {count} processes")
    objective = objective_of(train.objective)
    if objective.dataset is None:  # prompt rows, turned into batches by rollouts of the policy
        return make_rollout_source(config, tokenizer, data_cfg, part)
    make = getattr(data, objective.dataset)
    return make(data_cfg, tokenizer, train.seq_len, train.batch_size // count, seed=train.seed,
                shard_index=jax.process_index(), shard_count=count, split=part)


def _has_checkpoints(run_dir) -> bool:
    from llada_jax.io.model_source import run_steps
    from llada_jax.io.paths import as_path

    return as_path(run_dir).is_dir() and bool(run_steps(run_dir))


def check_init_source(config: Config):
    """`train.init_from` resolved (None when unset), refusing a missing source or another
    architecture from the configs alone: before any weight is read."""
    from llada_jax.io.run_checkpoint import IncompatibleCheckpointError, arch_differences
    from llada_jax.io.model_source import resolve_source, source_model_config

    path = config.train.init_from
    if not path:
        return None
    source = resolve_source(path)
    diffs = arch_differences(source_model_config(source), config.model)
    if diffs:
        raise IncompatibleCheckpointError(f"train.init_from {path}: " + "; ".join(diffs))
    return source


def load_initial_params(config: Config, mesh):
    """Params of `train.init_from` (a run folder or `RUN@STEP`, a params export or a HF dir) on `mesh`,
    refusing another architecture."""
    from llada_jax.io.model_source import load_model

    source = check_init_source(config)
    if source is None:
        return None
    _, params = load_model(source, shardings=param_shardings(config.model, mesh), param_dtype=config.model.param_dtype)
    return params
