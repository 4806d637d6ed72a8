"""Ahead-of-time compilation of the real train step for a TPU topology, on a CPU host.

`compile_check(config, "v5p:4x4x4")` asks libtpu (the `tpu` extra) for the topology's devices,
described as the hardware is wired (training.topology), builds the run's mesh over them, lowers
and compiles `make_train_step` against abstract state and batch carrying those shardings, and
reports per chip and per step: XLA's memory plan against the chip's HBM, the model FLOPs and the
FLOPs the remat policy recomputes, every collective with its executions and bytes (loop trips
counted, training.hlo_stats), the HBM traffic, and from those the roofline floor of the step time
and the MFU ceiling it implies. Nothing is allocated: a team can tell whether a config fits, and
how fast it can possibly run, before booking a pod.

`search_plans` compiles the same run under each remat policy and microbatch split
(`train.grad_accum`) and marks the plan with the lowest floor that fits. A plan that the TPU
compiler itself refuses for lack of HBM (its compile-time out-of-memory check) is reported as
not fitting, with the memory the compiler said it needs, not raised.
"""

from __future__ import annotations

import importlib.metadata
import re
from typing import Any, Sequence

from llada_jax.config import REMAT_POLICIES, Config, ModelConfig
from llada_jax.planning.hlo_stats import hlo_step_stats
from llada_jax.training.metrics import flops_per_step
from llada_jax.training.objectives import objective_of
from llada_jax.planning.topology import chip_spec, roofline, topology_devices, topology_kwargs

GIB = 1024 ** 3


def recompute_flops_per_token(model: ModelConfig, seq_len: int, policy: str, fused_attention: bool = False) -> float:
    """Forward FLOPs per token that the backward pass recomputes under a remat policy.

    'full' saves only each layer's input, so the backward reruns every layer's forward (all of
    its matmuls and attention); 'dots_no_batch' saves the weight matmuls (no batch dimension) and
    reruns the attention products q.k and p.v (batched over rows and heads); 'dots' saves every
    matmul and 'none' saves everything. A fused attention kernel (`fused_attention`: splash,
    cuDNN) is no matmul to a remat policy, so 'dots' reruns it too. The output head is outside the
    scanned layers: never rerun.
    """
    d, m, layers = model.d_model, model.mlp_hidden_size, model.n_layers
    kv = model.n_kv_heads * model.head_dim
    attention = 2 * layers * 2 * seq_len * d
    dense = 2 * layers * (2 * d * d + 2 * d * kv + 3 * d * m)
    rerun = {"full": dense + attention, "dots_no_batch": attention, "dots": attention if fused_attention else 0}
    return float(rerun.get(policy, 0))


def fused_attention_in(model: ModelConfig, seq_len: int, platform: str) -> bool:
    """Whether the train step's attention is a fused kernel on `platform` (splash tiles the length)."""
    from llada_jax.model.attention import resolve_impl, splash_fits

    impl = resolve_impl(model.attention_impl, model.dtype, platform)
    return impl == "cudnn" or (impl == "splash" and splash_fits(seq_len, seq_len))


def _versions() -> dict[str, str | None]:
    out = {}
    for package in ("jax", "jaxlib", "libtpu"):
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[package] = None
    return out


class CompileOutOfMemory(Exception):
    """The TPU compiler refused the program: its buffers exceed the chip's HBM at compile time."""

    def __init__(self, message: str):
        super().__init__(message)
        self.required = _size_after(message, "required for HLO temporaries")


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _size_after(message: str, words: str) -> int | None:
    """The byte size XLA prints as `<words> (129.12G)`, or None."""
    m = re.search(re.escape(words) + r"\s*\(([\d.]+)\s*([KMGT]?)i?B?\)", message)
    return None if m is None else int(float(m.group(1)) * _UNITS[m.group(2)])


def _compile(config: Config, mesh):
    from llada_jax.training.step import abstract_batch, abstract_reference, abstract_state, make_train_step

    step = make_train_step(config, mesh)
    args = (abstract_state(config, mesh), abstract_batch(config.train, mesh))
    if objective_of(config.train.objective).needs_reference:  # the frozen reference, sharded like the params
        args += (abstract_reference(config, mesh),)
    lowered = step.lower(*args)
    try:
        compiled = lowered.compile()
    except Exception as e:  # jax.errors.JaxRuntimeError; the compile-time OOM is only told apart by its text
        text = str(e)
        if "RESOURCE_EXHAUSTED" in text and "HBM" in text:
            raise CompileOutOfMemory(text.strip().splitlines()[0]) from None
        raise
    return compiled


def _plan_facts(config: Config, devices: list, mesh_shape: dict[str, int]) -> dict[str, Any]:
    """What a plan is and what it computes, per chip: known without compiling it."""
    kind = devices[0].device_kind
    n = len(devices)
    train = config.train
    passes = objective_of(train.objective).passes_of(config)  # e.g. VRPO: 2n policy and 2n reference rows a pair
    model_flops = flops_per_step(config.model, train, passes) / n
    fused = fused_attention_in(config.model, train.seq_len, devices[0].platform)
    recompute = recompute_flops_per_token(config.model, train.seq_len, config.model.remat_policy, fused) \
        * train.tokens_per_step * passes[0] / n
    return {
        "device_kind": kind,
        "num_devices": n,
        "mesh": mesh_shape,
        "global_batch": train.batch_size,
        "seq_len": train.seq_len,
        "grad_accum": train.grad_accum,
        "remat_policy": config.model.remat_policy,
        "params": config.model.num_params(),
        "flops_per_chip": {"model": model_flops, "recompute": recompute, "executed": model_flops + recompute,
                           "xla_cost_analysis": None},
        "flops_per_step_model": model_flops * n,
        "fused_attention": fused,
        "chip": chip_spec(kind),
    }


def plan_report(config: Config, compiled, devices: list, mesh_shape: dict[str, int]) -> dict[str, Any]:
    """Memory, FLOPs, collectives, HBM traffic and roofline of one compiled train step, per chip."""
    facts = _plan_facts(config, devices, mesh_shape)
    spec, fl = facts["chip"], facts["flops_per_chip"]
    mem = compiled.memory_analysis()
    args, out = int(mem.argument_size_in_bytes), int(mem.output_size_in_bytes)
    alias, temp = int(mem.alias_size_in_bytes), int(mem.temp_size_in_bytes)
    code = int(mem.generated_code_size_in_bytes)
    total = args + out - alias + temp + code
    stats = hlo_step_stats(compiled.as_text(), len(devices))
    cost = compiled.cost_analysis() or {}
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    fl["xla_cost_analysis"] = float(cost.get("flops", float("nan")))
    collective_bytes = sum(v["bytes"] for v in stats["collectives"].values())
    link_bytes = sum(v["link_bytes"] for v in stats["collectives"].values())
    hbm = spec["hbm_bytes"]
    return {
        **facts,
        "memory_per_chip": {"arguments": args, "outputs": out, "aliased": alias, "temporaries": temp,
                            "code": code, "total": total, "hbm": hbm},
        "fits": None if hbm is None else total <= hbm,
        "collectives": stats["collectives"],
        "collective_bytes_per_chip": collective_bytes,
        "link_bytes_per_chip": link_bytes,
        "hbm_bytes_per_chip": stats["hbm_bytes"],
        "loops_without_trip_count": stats["unknown_loops"],
        "roofline": roofline(flops=fl["executed"], hbm_bytes_accessed=stats["hbm_bytes"],
                             ici_bytes=link_bytes, model_flops=fl["model"], spec=spec),
    }


def refused_plan_report(config: Config, devices: list, mesh_shape: dict[str, int],
                        error: CompileOutOfMemory) -> dict[str, Any]:
    """`plan_report`'s fields for a plan the compiler refused for lack of HBM: it does not fit; the
    compiler's own figure of what it needed is `memory_per_chip.required`; compiled figures are None."""
    facts = _plan_facts(config, devices, mesh_shape)
    return {
        **facts,
        "memory_per_chip": {"arguments": None, "outputs": None, "aliased": None, "temporaries": None, "code": None,
                            "total": None, "required": error.required, "hbm": facts["chip"]["hbm_bytes"]},
        "fits": False,
        "compile_error": str(error),
        "collectives": {}, "collective_bytes_per_chip": None, "link_bytes_per_chip": None,
        "hbm_bytes_per_chip": None, "loops_without_trip_count": [],
        "roofline": {"compute_s": None, "hbm_s": None, "ici_s": None, "floor_s": None, "bound": None,
                     "mfu_ceiling": None},
    }


def _plan(config: Config, devices: list) -> dict[str, Any]:
    from llada_jax.model.sharding import make_mesh

    mesh = make_mesh(config.mesh, devices)
    try:
        compiled = _compile(config, mesh)
    except CompileOutOfMemory as e:
        return refused_plan_report(config, devices, dict(mesh.shape), e)
    return plan_report(config, compiled, devices, dict(mesh.shape))


def compile_check(config: Config, topology: str, *, num_slices: int = 1) -> dict[str, Any]:
    """Compile the train step for `topology` x `num_slices`; return its per-chip, per-step report."""
    devices = topology_devices(topology, num_slices)
    return {"topology": topology, "num_slices": num_slices, "topology_kwargs": topology_kwargs(topology, num_slices),
            "versions": _versions(), **_plan(config, devices)}


def grad_accum_choices(batch_size: int, row_shards: int) -> list[int]:
    """Microbatch splits to try: powers of two whose microbatch still covers every row shard."""
    out, a = [], 1
    while batch_size % a == 0 and (batch_size // a) % row_shards == 0:
        out.append(a)
        a *= 2
    return out


def search_plans(config: Config, topology: str, *, num_slices: int = 1, policies: Sequence[str] | None = None,
                 grad_accums: Sequence[int] | None = None) -> dict[str, Any]:
    """Compile every (remat policy, grad_accum) plan; the fastest floor that fits is `best`."""
    policies = list(policies or [p for p in REMAT_POLICIES])
    for p in policies:  # before libtpu starts: a typo fails at once
        if p not in REMAT_POLICIES:
            raise ValueError(f"--policies: unknown remat policy '{p}' (one of {', '.join(REMAT_POLICIES)})")
    devices = topology_devices(topology, num_slices)
    if grad_accums:
        accums = list(grad_accums)
    else:
        from llada_jax.model.sharding import batch_divisor, make_mesh

        accums = grad_accum_choices(config.train.batch_size, batch_divisor(make_mesh(config.mesh, devices)))
    plans = []
    for policy in policies:
        for accum in accums:
            cfg = config.replace(model=config.model.replace(remat_policy=policy),
                                 train=config.train.replace(grad_accum=accum))
            plans.append(_plan(cfg, devices))
    fitting = [i for i, p in enumerate(plans) if p["fits"] and p["roofline"]["floor_s"] is not None]
    best = min(fitting, key=lambda i: plans[i]["roofline"]["floor_s"]) if fitting else None
    return {"topology": topology, "num_slices": num_slices, "topology_kwargs": topology_kwargs(topology, num_slices),
            "versions": _versions(), "plans": plans, "best": best}


def _fmt_bytes(n: float) -> str:
    for unit, size in (("GiB", GIB), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


def _fmt_time(seconds) -> str:
    return "n/a" if seconds is None else (f"{seconds * 1e3:.0f} ms" if seconds >= 0.01 else f"{seconds * 1e6:.1f} us")


def _fmt_pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def format_report(r: dict[str, Any]) -> str:
    """Human-readable summary of a `compile_check` result."""
    m, fl, rl = r["memory_per_chip"], r["flops_per_chip"], r["roofline"]
    hbm = "unknown" if m["hbm"] is None else f"{m['hbm'] / GIB:.1f} GiB"
    if r.get("compile_error"):
        need = "more than the chip has" if m.get("required") is None else f"{_fmt_bytes(m['required'])} of temporaries"
        return (f"topology {r['topology']} x{r['num_slices']} ({r['num_devices']} x {r['device_kind']}), remat "
                f"{r['remat_policy']}, grad_accum {r['grad_accum']}: DOES NOT FIT: the compiler needs {need}, "
                f"HBM {hbm} per chip\n  ({r['compile_error']})")
    verdict = "unknown HBM size" if r["fits"] is None else ("FITS" if r["fits"] else "DOES NOT FIT")
    kw = r["topology_kwargs"]
    lines = [
        f"topology {r['topology']} x{r['num_slices']} ({r['num_devices']} x {r['device_kind']}; "
        f"wrap {kw['wrap']}, chips per host {kw['chips_per_host_bounds']}), mesh "
        + " x ".join(f"{k}={v}" for k, v in r["mesh"].items()),
        f"model {r['params'] / 1e9:.3f}B params, global batch {r['global_batch']} x seq {r['seq_len']}, "
        f"grad_accum {r['grad_accum']}, remat {r['remat_policy']}; "
        + ", ".join(f"{k} {v}" for k, v in r["versions"].items() if v),
        "memory per chip:",
        f"  arguments    {_fmt_bytes(m['arguments']):>12s}",
        f"  outputs      {_fmt_bytes(m['outputs']):>12s} (aliased with donated arguments: {_fmt_bytes(m['aliased'])})",
        f"  temporaries  {_fmt_bytes(m['temporaries']):>12s}",
        f"  code         {_fmt_bytes(m['code']):>12s}",
        f"  total        {_fmt_bytes(m['total']):>12s} of {hbm} HBM: {verdict}",
        f"FLOPs per chip per step: model {fl['model']:.3e}, recompute {fl['recompute']:.3e}, "
        f"XLA cost analysis {fl['xla_cost_analysis']:.3e} (counts a loop body once)",
        "collectives per chip per step (loop trips counted):",
    ]
    for kind, v in sorted(r["collectives"].items()):
        lines.append(f"  {kind:18s} x{v['executions']:<6d} {_fmt_bytes(v['bytes']):>12s} results, "
                     f"{_fmt_bytes(v['link_bytes']):>12s} sent + received over the links")
    lines.append(f"  {'total':26s} {_fmt_bytes(r['collective_bytes_per_chip']):>12s} results, "
                 f"{_fmt_bytes(r['link_bytes_per_chip']):>12s} sent + received over the links")
    if r["loops_without_trip_count"]:
        lines.append(f"  (loops without a known trip count, counted once: {r['loops_without_trip_count']})")
    lines.append(f"HBM traffic per chip per step: {_fmt_bytes(r['hbm_bytes_per_chip'])}")
    lines.append(f"roofline floor per step: {_fmt_time(rl['floor_s'])} ({rl['bound']}-bound: compute "
                 f"{_fmt_time(rl['compute_s'])}, HBM {_fmt_time(rl['hbm_s'])}, ICI {_fmt_time(rl['ici_s'])}); "
                 f"MFU ceiling {_fmt_pct(rl['mfu_ceiling'])}")
    if r["num_slices"] > 1:
        lines.append("  (every collective is timed at ICI bandwidth: traffic between slices over DCN is slower)")
    return "\n".join(lines)


def format_search(s: dict[str, Any]) -> str:
    """Table of the plans of `search_plans`, the fastest that fits marked with '*'."""
    kw = s["topology_kwargs"]
    head = (f"plans for {s['topology']} x{s['num_slices']} (wrap {kw['wrap']}); floor = max(compute, HBM, ICI) "
            f"at the chip's peaks")
    rows = [head, f"  {'remat':14s} {'accum':>5s} {'args GiB':>9s} {'temp GiB':>9s} {'total GiB':>10s} {'fits':>5s} "
                  f"{'recompute TFLOP':>16s} {'coll GiB':>9s} {'floor':>9s} {'bound':>8s} {'MFU ceil':>9s}"]
    for i, p in enumerate(s["plans"]):
        m, rl = p["memory_per_chip"], p["roofline"]
        mark = "*" if i == s["best"] else " "
        if p.get("compile_error"):
            need = "?" if m.get("required") is None else f"{m['required'] / GIB:.2f}"
            rows.append(f"{mark} {p['remat_policy']:14s} {p['grad_accum']:5d} {'':>9s} {need:>9s} {'':>10s} {'no':>5s} "
                        f"{p['flops_per_chip']['recompute'] / 1e12:16.1f}   (refused by the compiler: out of HBM)")
            continue
        rows.append(f"{mark} {p['remat_policy']:14s} {p['grad_accum']:5d} {m['arguments'] / GIB:9.2f} "
                    f"{m['temporaries'] / GIB:9.2f} {m['total'] / GIB:10.2f} {'yes' if p['fits'] else 'no':>5s} "
                    f"{p['flops_per_chip']['recompute'] / 1e12:16.1f} {p['collective_bytes_per_chip'] / GIB:9.2f} "
                    f"{_fmt_time(rl['floor_s']):>9s} {str(rl['bound']):>8s} {_fmt_pct(rl['mfu_ceiling']):>9s}")
    rows.append("* fastest plan that fits" if s["best"] is not None else "no plan fits")
    return "\n".join(rows)
