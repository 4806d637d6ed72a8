"""The pod plans side by side: per-chip memory, collective bytes, roofline floor and MFU ceiling.

    python benchmarks/compile_plan.py                       # 8B v5p:4x4x4 and 1B v5e:8x8, as configured
    python benchmarks/compile_plan.py --search --policies full,dots_no_batch,dots --grad-accum 1
    python benchmarks/compile_plan.py --out plan.json --markdown plan.md

Compiles each config's train step ahead of time for its topology with `compile-check`
(needs libtpu; an 8B compile takes minutes on a small CPU host). With `--search` each plan is
compiled under the given remat policies and microbatch splits and the fastest that fits is kept.
Prints one JSON object, then a Markdown table (also written with --out / --markdown).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

PLANS = (
    ("LLaDA-8B", "configs/llada-8b-v5p-pod.yaml", "v5p:4x4x4"),
    ("LLaDA-1B", "configs/llada-1b-v5e-pod.yaml", "v5e:8x8"),
)
GIB = 1024 ** 3


def _gib(x):
    return None if x is None else x / GIB


def plan_row(name: str, topology: str, r: dict, seconds: float) -> dict:
    m, rl = r["memory_per_chip"], r["roofline"]
    return {
        "plan": name, "topology": topology, "chips": r["num_devices"], "remat": r["remat_policy"],
        "grad_accum": r["grad_accum"], "batch": f"{r['global_batch']}x{r['seq_len']}",
        "args_gib": _gib(m["arguments"]), "temp_gib": _gib(m["temporaries"]), "total_gib": _gib(m["total"]),
        "required_gib": _gib(m.get("required")), "hbm_gib": _gib(m["hbm"]), "fits": r["fits"],
        "collective_gib": _gib(r["collective_bytes_per_chip"]),
        "collectives": {k: {"executions": v["executions"], "gib": v["bytes"] / GIB} for k, v in r["collectives"].items()},
        "hbm_traffic_gib": _gib(r["hbm_bytes_per_chip"]),
        "floor_ms": None if rl["floor_s"] is None else rl["floor_s"] * 1e3, "bound": rl["bound"],
        "mfu_ceiling": rl["mfu_ceiling"], "compile_s": seconds,
    }


def markdown(rows: list[dict], versions: dict) -> str:
    head = ("| plan | topology | remat / accum | memory per chip (args / temp / total of HBM), GiB | "
            "collectives per chip per step | floor per step | MFU ceiling |\n|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        if r["total_gib"] is None:  # refused by the compiler: out of HBM
            need = "?" if r["required_gib"] is None else f"{r['required_gib']:.1f}"
            lines.append(f"| {r['plan']} {r['batch']} | {r['topology']} ({r['chips']} chips) | {r['remat']} / "
                         f"{r['grad_accum']} | does not fit: the compiler needs {need} GiB of temporaries, "
                         f"HBM {r['hbm_gib']:.0f} | n/a | n/a | n/a |")
            continue
        coll = " + ".join(f"{k} {v['gib']:.1f} GiB (x{v['executions']})" for k, v in sorted(r["collectives"].items()))
        floor = "n/a" if r["floor_ms"] is None else f"{r['floor_ms']:.0f} ms ({r['bound']})"
        mfu = "n/a" if r["mfu_ceiling"] is None else f"{100 * r['mfu_ceiling']:.1f}%"
        lines.append(f"| {r['plan']} {r['batch']} | {r['topology']} ({r['chips']} chips) | {r['remat']} / {r['grad_accum']} "
                     f"| {r['args_gib']:.2f} / {r['temp_gib']:.2f} / {r['total_gib']:.2f} of {r['hbm_gib']:.0f} "
                     f"| {r['collective_gib']:.1f} GiB: {coll} | {floor} | {mfu} |")
    lines.append("\n" + ", ".join(f"{k} {v}" for k, v in versions.items() if v))
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=[n for n, _, _ in PLANS], action="append", help="run only these plans")
    p.add_argument("--search", action="store_true", help="search remat policy x grad_accum; keep the best")
    p.add_argument("--policies", default=None, help="--search: comma-separated remat policies")
    p.add_argument("--grad-accum", default=None, help="--search: comma-separated microbatch splits")
    p.add_argument("--out", type=Path, default=None, help="write the JSON here")
    p.add_argument("--markdown", type=Path, default=None, help="write the Markdown table here")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides applied to every plan")
    args = p.parse_args(argv)

    from llada_jax.config import load_config
    from llada_jax.planning.compile_check import compile_check, search_plans

    repo = Path(__file__).resolve().parents[1]
    rows, versions, searches = [], {}, {}
    for name, config_path, topology in PLANS:
        if args.only and name not in args.only:
            continue
        config = load_config(repo / config_path, args.overrides)
        t0 = time.perf_counter()
        if args.search:
            s = search_plans(config, topology,
                             policies=args.policies.split(",") if args.policies else None,
                             grad_accums=[int(a) for a in args.grad_accum.split(",")] if args.grad_accum else None)
            versions = s["versions"]
            seconds = (time.perf_counter() - t0) / len(s["plans"])
            searches[name] = [plan_row(name, topology, plan, seconds) for plan in s["plans"]]
            rows.append(searches[name][s["best"]] if s["best"] is not None else searches[name][0])
        else:
            r = compile_check(config, topology)
            versions = r["versions"]
            rows.append(plan_row(name, topology, r, time.perf_counter() - t0))
    result = {"plans": rows, "versions": versions, "overrides": args.overrides, **({"search": searches} if searches else {})}
    table = markdown([r for plans in searches.values() for r in plans] if searches else rows, versions)
    print(json.dumps(result))
    print(table)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    if args.markdown:
        args.markdown.write_text(table + "\n")
    return result


if __name__ == "__main__":
    main()
