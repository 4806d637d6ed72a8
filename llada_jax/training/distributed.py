"""Multi-host start-up: `jax.distributed.initialize` when the run spans several processes.

Three ways in, checked in order:
1. explicit coordinator flags (`coordinator="host:port", num_processes, process_id`), e.g. two
   processes on localhost;
2. the environment of a launcher JAX detects by itself (a TPU pod slice's metadata, SLURM's
   `SLURM_*` variables, Open MPI, Kubernetes JobSet): `jax.distributed.initialize()` with no
   arguments;
3. otherwise a single process: nothing to do.

On CPU the collectives between processes use gloo. Must run before anything touches a JAX
backend (device lists, arrays).
"""

from __future__ import annotations

import os

import jax

_SLURM_VARS = ("SLURM_JOB_ID", "SLURM_NTASKS", "SLURM_PROCID")
_TPU_POD_VARS = ("TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS", "CLOUD_TPU_TASK_ID")


def detected_launcher() -> str | None:
    """'slurm' or 'tpu-pod' when the environment says this is one process of many, else None."""
    env = os.environ
    if all(v in env for v in _SLURM_VARS) and int(env.get("SLURM_NTASKS", "1")) > 1:
        return "slurm"
    if any(v in env for v in _TPU_POD_VARS):
        hosts = env.get("TPU_WORKER_HOSTNAMES", "")
        if "," in hosts or "MEGASCALE_COORDINATOR_ADDRESS" in env:
            return "tpu-pod"
    if int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        return "mpi"
    return None


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
               *, mode: str = "auto", cpu_collectives: str = "gloo", local_device_ids=None) -> dict:
    """Start `jax.distributed` if this run is multi-process; returns a summary of what was done.

    Explicit arguments take precedence; without them `mode` decides: "auto" starts it when a
    known launcher is detected, "on" always (JAX then finds a Cloud TPU pod's workers through
    the VM metadata), "off" never. A partial set of explicit arguments is an error that names
    what is missing.
    """
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"distributed mode '{mode}' is not one of auto, on, off")
    explicit = [coordinator, num_processes, process_id]
    if any(v is not None for v in explicit):
        if any(v is None for v in explicit):
            missing = [n for n, v in zip(("coordinator", "num_processes", "process_id"), explicit) if v is None]
            raise ValueError(f"multi-process start needs --coordinator, --num-processes and --process-id; "
                             f"missing {', '.join(missing)}")
        if not 0 <= process_id < num_processes:
            raise ValueError(f"process_id {process_id} is outside [0, {num_processes})")
        if num_processes == 1:
            return {"mode": "single", "process_index": 0, "process_count": 1}
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id, local_device_ids=local_device_ids)
        mode = "explicit"
    else:
        launcher = detected_launcher() if mode == "auto" else ("forced" if mode == "on" else None)
        if launcher is None:
            return {"mode": "single", "process_index": 0, "process_count": 1}
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
        jax.distributed.initialize()
        mode = launcher
    return {"mode": mode, "process_index": jax.process_index(), "process_count": jax.process_count()}
