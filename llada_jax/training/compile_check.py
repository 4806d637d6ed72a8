"""Ahead-of-time compilation of the real train step for a TPU topology, on a CPU host.

`compile_check(config, "v5p:4x4x4")` asks libtpu (the optional `tpu` extra) for the topology's
devices, builds the run's mesh over them, lowers and compiles `make_train_step` against
abstract state and batch carrying those shardings, and reads back XLA's per-chip memory plan,
its FLOP count and the collectives in the compiled program. Nothing is allocated: a team can
tell whether a config fits before booking a pod.
"""

from __future__ import annotations

import re
from typing import Any

from llada_jax.config import Config
from llada_jax.training.metrics import flops_per_step, hbm_bytes

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")


def topology_devices(topology: str, num_slices: int = 1):
    """The devices of a TPU topology such as 'v5p:4x4x4' or 'v5e:4x4' (needs libtpu)."""
    import os

    from jax.experimental import topologies

    # Only compiling: do not take libtpu's one-process-per-host lock (a training job or another
    # compile-check may hold it).
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    if ":" not in topology:
        raise ValueError(f"topology '{topology}': expected <chip>:<shape>, e.g. v5p:4x4x4 or v5e:4x4")
    try:
        desc = topologies.get_topology_desc(topology_name=topology, platform="tpu", num_slices=num_slices)
    except Exception as e:  # libtpu missing or an unknown topology name
        raise ValueError(f"cannot describe TPU topology '{topology}' (is the 'tpu' extra, libtpu, "
                         f"installed?): {e}") from e
    return list(desc.devices)


def count_collectives(hlo_text: str) -> dict[str, int]:
    """Occurrences of each collective op (async start ops counted once) in compiled HLO text."""
    counts = {}
    for name in COLLECTIVES:
        n = len(re.findall(rf"= [^=\n]*? {name}(?:-start)?\(", hlo_text))
        if n:
            counts[name] = n
    return counts


def compile_check(config: Config, topology: str, *, num_slices: int = 1) -> dict[str, Any]:
    """Compile the train step for `topology`; return memory per chip, FLOPs and collectives."""
    from llada_jax.model.sharding import make_mesh
    from llada_jax.training.step import abstract_batch, abstract_state, make_train_step

    devices = topology_devices(topology, num_slices)
    mesh = make_mesh(config.mesh, devices)
    step = make_train_step(config, mesh)
    state = abstract_state(config, mesh)
    batch = abstract_batch(config.train, mesh)
    compiled = step.lower(state, batch).compile()
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis() or {}
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    args = int(mem.argument_size_in_bytes)
    out = int(mem.output_size_in_bytes)
    alias = int(mem.alias_size_in_bytes)
    temp = int(mem.temp_size_in_bytes)
    code = int(mem.generated_code_size_in_bytes)
    total = args + out - alias + temp + code
    kind = devices[0].device_kind
    hbm = hbm_bytes(kind)
    return {
        "topology": topology,
        "num_slices": num_slices,
        "device_kind": kind,
        "num_devices": len(devices),
        "mesh": dict(mesh.shape),
        "global_batch": config.train.batch_size,
        "seq_len": config.train.seq_len,
        "params": config.model.num_params(),
        "memory_per_chip": {"arguments": args, "outputs": out, "aliased": alias, "temporaries": temp,
                            "code": code, "total": total, "hbm": hbm},
        "fits": None if hbm is None else total <= hbm,
        "flops_per_step_xla_per_chip": float(cost.get("flops", float("nan"))),
        "flops_per_step_model": flops_per_step(config.model, config.train),
        "collectives": count_collectives(compiled.as_text()),
    }


def format_report(r: dict[str, Any]) -> str:
    """Human-readable summary of a `compile_check` result."""
    gib = 1024 ** 3
    m = r["memory_per_chip"]
    hbm = "unknown" if m["hbm"] is None else f"{m['hbm'] / gib:.1f} GiB"
    verdict = "unknown HBM size" if r["fits"] is None else ("FITS" if r["fits"] else "DOES NOT FIT")
    lines = [
        f"topology {r['topology']} x{r['num_slices']} ({r['num_devices']} x {r['device_kind']}), mesh "
        + " x ".join(f"{k}={v}" for k, v in r["mesh"].items()),
        f"model {r['params'] / 1e9:.3f}B params, global batch {r['global_batch']} x seq {r['seq_len']}",
        "memory per chip:",
        f"  arguments    {m['arguments'] / gib:8.2f} GiB",
        f"  outputs      {m['outputs'] / gib:8.2f} GiB (aliased with donated arguments: {m['aliased'] / gib:.2f} GiB)",
        f"  temporaries  {m['temporaries'] / gib:8.2f} GiB",
        f"  code         {m['code'] / gib:8.2f} GiB",
        f"  total        {m['total'] / gib:8.2f} GiB of {hbm} HBM: {verdict}",
        f"FLOPs per step: model {r['flops_per_step_model']:.3e} (global, "
        f"{r['flops_per_step_model'] / r['num_devices']:.3e} per chip); XLA cost analysis "
        f"{r['flops_per_step_xla_per_chip']:.3e} per chip (counts a scanned layer's body once)",
        "collectives: " + (", ".join(f"{k} x{v}" for k, v in r["collectives"].items()) or "none"),
    ]
    return "\n".join(lines)
