"""MaxText's compiled plan for a LLaDA-8B-sized model beside llada-jax's, on one jax/libtpu.

    /tmp/mt-venv/bin/python benchmarks/maxtext_anchor.py --out anchor.json --markdown anchor.md

An anchor for `compile_plan.py`: compiles ahead of time for TPU v5p:4x4x4 (64 chips), in one
process on this host, (1) llada-jax's train step for configs/llada-8b-v5p-pod.yaml, (2) MaxText's
llama2-7b train step with LLaDA's vocabulary and MLP (d_model 4096, 32 layers, 32 heads, MLP 12288,
vocab 126464: 8.02B parameters), batch 4 x 4096 per chip, full remat, bf16 compute, fp32 weights,
pure FSDP over 64 chips, dot-product attention, and (3) the same with MaxText's default attention
(splash on TPU). All three are read by the same code (training.compile_check.plan_report: XLA's
memory plan, collectives per step from the compiled HLO with loop trips counted, roofline), so the
numbers differ only by what the two frameworks compile. Roofline FLOPs are llada-jax's analytic
count for the 8B config (bidirectional attention); MaxText's llama is causal. Prints one JSON
object, then a Markdown table (also written with --out / --markdown). Each compile takes minutes.

MaxText is not a dependency of llada-jax: it needs Python >= 3.12 and a venv of its own. Its wheel
declares hundreds of dependencies; installed with --no-deps, its train_compile needs only these:

    python3.12 -m venv /tmp/mt-venv
    /tmp/mt-venv/bin/pip install jax==0.12.0.1 jaxlib==0.12.0.1 libtpu==0.0.52 flax optax orbax-checkpoint
    /tmp/mt-venv/bin/pip install --no-deps maxtext==0.2.5   # or the wheel: maxtext-0.2.5-py3-none-any.whl
    /tmp/mt-venv/bin/pip install --no-deps tokamax xprof
    /tmp/mt-venv/bin/pip install omegaconf packaging pathwaysutils jinja2 qwix aqtp einshape jaxtyping \\
        pydantic immutabledict tensorboardx tqdm fire six gviz-api huggingface_hub transformers grain \\
        drjax pillow tiktoken sentencepiece sympy

(`aqtp` is the package of the `aqt` module; PyPI's `aqt` is an unrelated program.) llada-jax is
imported from this checkout (its own dependencies, flax, optax, pyyaml, are in the list above).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.metadata
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # llada_jax from this checkout

from compile_plan import GIB, plan_row  # noqa: E402  (benchmarks/ is sys.path[0] when run as a script)

LLADA_CONFIG = "configs/llada-8b-v5p-pod.yaml"
TOPOLOGY = "v5p:4x4x4"
MAXTEXT_TOPOLOGY = "v5p-128"  # MaxText names v5p slices by TensorCores: 128 cores = 64 chips = 4x4x4
# The anchor: llama2-7b resized to LLaDA-8B. MaxText ignores `mlp_dim` (derived from base_mlp_dim)
# and refuses to override a model file's vocab_size without override_model_config.
MAXTEXT_ARGS = (
    "model_name=llama2-7b", "override_model_config=true", "vocab_size=126464", "base_mlp_dim=12288",
    "per_device_batch_size=4", "max_target_length=4096", "remat_policy=full", "dtype=bfloat16",
    "weight_dtype=float32", "ici_fsdp_parallelism=64", f"compile_topology={MAXTEXT_TOPOLOGY}",
    "compile_topology_num_slices=1", "enable_checkpointing=false", "run_name=maxtext_anchor",
)
VARIANTS = (("MaxText dot_product", "dot_product"), ("MaxText splash", "autoselected"))
# What the issue measured earlier with MaxText (GiB per chip): args / temp / total, collectives.
ISSUE_REFERENCE = {"dot_product": {"args": 1.40, "temp": 15.36, "total": 16.81},
                   "splash": {"args": 1.40, "temp": 13.04, "total": 14.49},
                   "collectives": {"all-gather": 27.0, "all-reduce": 14.0}}


def require_maxtext():
    """MaxText's train_compile module, or exit with one line saying how to get it."""
    if importlib.util.find_spec("maxtext") is None:
        sys.exit(f"maxtext_anchor.py: MaxText is not installed in {sys.executable}; "
                 "set up its venv as this script's docstring says")
    try:
        from maxtext.trainers.pre_train import train_compile
    except ImportError as e:
        sys.exit(f"maxtext_anchor.py: MaxText is installed but does not import ({e}); "
                 "install the missing package (see this script's docstring)")
    return train_compile


def versions() -> dict[str, str | None]:
    out = {}
    for package in ("jax", "jaxlib", "libtpu", "flax", "maxtext"):
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[package] = None
    return out


def device_layout(devices) -> list[tuple]:
    return [(d.id, tuple(d.coords), d.core_on_chip) for d in devices]


def compile_maxtext(train_compile, attention: str, extra: list[str], out_dir: str):
    """MaxText's train step compiled for the topology, built as train_compile.is_oom builds it."""
    import jax
    from flax.core.spmd import logical_axis_rules
    from maxtext.configs import pyconfig
    from maxtext.trainers.pre_train import train
    from maxtext.utils import maxtext_utils, sharding

    base = os.path.join(os.path.dirname(pyconfig.__file__), "base.yml")
    config = pyconfig.initialize(["train_compile", base, *MAXTEXT_ARGS, f"attention={attention}",
                                  f"base_output_directory={out_dir}", *extra])
    train_compile.validate_config(config)
    mesh = train_compile.get_topology_mesh(config)
    args, kwargs, state_shardings, _, model = train_compile.get_shaped_inputs(mesh, config)
    params_shardings, state_shardings = sharding.maybe_update_params_sharding_with_opt(config, state_shardings)
    input_shardings = sharding.build_zero1_input_state_mesh_shardings(config, state_shardings, params_shardings)
    data_sharding = sharding.get_input_data_sharding(config, mesh)
    func, in_shard, out_shard, static, donate = maxtext_utils.get_functional_train_with_signature(
        train.train_step, data_sharding, input_shardings, model, config, params_shardings)
    compiled = train_compile.jit_and_compile(func, args, kwargs, mesh, in_shard, out_shard, static, donate,
                                             config, logical_axis_rules(config.logical_axis_rules))
    keys = [(jax.tree_util.keystr(path), leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(args[0])[0]]
    params = sum(leaf.size for k, leaf in keys if k.startswith("['model']") and "['rngs']" not in k)
    settings = {k: getattr(config, k) for k in ("emb_dim", "mlp_dim", "num_decoder_layers", "num_query_heads",
                                                "num_kv_heads", "head_dim", "vocab_size", "max_target_length",
                                                "global_batch_size_to_train_on", "remat_policy", "attention",
                                                "scan_layers", "packing")}
    return compiled, mesh, params, settings


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--skip-llada", action="store_true", help="compile only the MaxText plans")
    p.add_argument("--only", choices=[a for _, a in VARIANTS], action="append",
                   help="compile only these MaxText attentions (autoselected = splash on TPU)")
    p.add_argument("--out", type=Path, default=None, help="write the JSON here")
    p.add_argument("--markdown", type=Path, default=None, help="write the Markdown table here")
    p.add_argument("overrides", nargs="*", help="key=value overrides for MaxText's config")
    args = p.parse_args(argv)

    # As train_compile.main: TPU RNG ops partitioned without replication (read when libtpu loads;
    # llada-jax's threefry RNG emits no RngBitGenerator op, so its plan is unaffected).
    os.environ["LIBTPU_INIT_ARGS"] = (os.environ.get("LIBTPU_INIT_ARGS", "")
                                      + " --xla_tpu_spmd_rng_bit_generator_unsafe=true").strip()
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # compiling only: skip libtpu's host lock
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    import llada_jax  # noqa: F401  (before JAX starts: keeps the absent TPU backend out)

    with contextlib.redirect_stdout(sys.stderr):  # MaxText prints notes on import: keep stdout to the result
        train_compile = require_maxtext()
    import jax
    from llada_jax.config import load_config
    from llada_jax.model.sharding import make_mesh
    from llada_jax.planning.compile_check import compile_check, plan_report
    from llada_jax.planning.topology import topology_devices, topology_kwargs
    from maxtext.utils import accelerator_to_spec_map

    config = load_config(REPO / LLADA_CONFIG)
    devices = topology_devices(TOPOLOGY)
    llada_order = device_layout(make_mesh(config.mesh, devices).devices.flat)
    rows, reports = [], {}
    if not args.skip_llada:  # first: MaxText flips global JAX settings (mesh axis types, PRNG)
        t0 = time.perf_counter()
        r = compile_check(config, TOPOLOGY)
        rows.append({**plan_row("llada-jax", TOPOLOGY, r, time.perf_counter() - t0), "attention": "splash (auto)",
                     "params": r["params"], "link_gib": r["link_bytes_per_chip"] / GIB})
        reports["llada-jax"] = r
        gc.collect()

    hw = accelerator_to_spec_map.get_system_characteristics(MAXTEXT_TOPOLOGY)
    mt_kwargs = {"topology_name": hw.topology_name, "chip_config_name": hw.chip_config_name,
                 "chips_per_host_bounds": tuple(hw.chips_per_host_bounds), "wrap": tuple(hw.wrap)}
    ours = {k: tuple(v) if isinstance(v, (list, tuple)) else v
            for k, v in topology_kwargs(TOPOLOGY).items() if k in mt_kwargs}
    topology = {"llada_jax": ours, "maxtext": mt_kwargs, "same_description": ours == mt_kwargs}

    out_dir = tempfile.mkdtemp(prefix="maxtext_anchor_")
    prng = jax.config.jax_default_prng_impl
    for name, attention in VARIANTS:
        if args.only and attention not in args.only:
            continue
        jax.config.update("jax_default_prng_impl", "unsafe_rbg")  # as train_compile.main
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):
            compiled, mesh, params, settings = compile_maxtext(train_compile, attention, args.overrides, out_dir)
        seconds = time.perf_counter() - t0
        jax.config.update("jax_default_prng_impl", prng)
        mt_devices = list(mesh.devices.flat)
        mesh_shape = {k: v for k, v in mesh.shape.items() if v > 1}
        r = plan_report(config, compiled, mt_devices, mesh_shape)
        topology["same_devices"] = sorted(device_layout(mt_devices)) == sorted(device_layout(devices))
        topology["same_mesh_order"] = device_layout(mt_devices) == llada_order
        rows.append({**plan_row(name, TOPOLOGY, r, seconds), "attention": attention, "params": params,
                     "link_gib": r["link_bytes_per_chip"] / GIB, "maxtext_settings": settings})
        reports[name] = r
        del compiled
        gc.collect()
        jax.clear_caches()

    shutil.rmtree(out_dir, ignore_errors=True)
    result = {"plans": rows, "topology": topology, "versions": versions(), "maxtext_args": list(MAXTEXT_ARGS),
              "overrides": args.overrides, "issue_reference_gib": ISSUE_REFERENCE,
              "loops_without_trip_count": {k: r["loops_without_trip_count"] for k, r in reports.items()}}
    table = markdown(rows, result["versions"], topology)
    print(json.dumps(result, default=str))
    print(table)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    if args.markdown:
        args.markdown.write_text(table + "\n")
    return result


def markdown(rows: list[dict], versions: dict, topology: dict) -> str:
    """One row per plan: memory, each collective kind, total collectives, HBM traffic, compile time.

    The roofline floor is left to the JSON: all three are compute-bound on the same analytic FLOPs.
    """
    kinds = sorted({k for r in rows for k in r["collectives"]})
    head = ("| plan | attention | params | memory per chip (args / temp / total), GiB | "
            + " | ".join(f"{k} GiB (x executions)" for k in kinds)
            + " | collectives total, GiB | HBM traffic per chip per step, GiB | compile s |")
    lines = [head, "|" + "---|" * (7 + len(kinds))]
    for r in rows:
        coll = [f"{r['collectives'][k]['gib']:.2f} (x{r['collectives'][k]['executions']})" if k in r["collectives"]
                else "-" for k in kinds]
        lines.append(f"| {r['plan']} | {r['attention']} | {r['params'] / 1e9:.2f}B "
                     f"| {r['args_gib']:.2f} / {r['temp_gib']:.2f} / {r['total_gib']:.2f} | " + " | ".join(coll)
                     + f" | {r['collective_gib']:.2f} | {r['hbm_traffic_gib']:.0f} | {r['compile_s']:.0f} |")
    same = "same" if topology["same_description"] else "DIFFERENT"
    lines.append(f"\n{TOPOLOGY} ({MAXTEXT_TOPOLOGY}): {same} device description for both "
                 f"({topology['maxtext']}); " + ", ".join(f"{k} {v}" for k, v in versions.items() if v))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
