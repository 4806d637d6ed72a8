"""What the checkpoint fingerprint adds per save: fingerprint time against save time.

    python benchmarks/checkpoint_fingerprint.py --config configs/tiny.yaml [--repeats 5] [overrides]

Builds the real train state of a config (params + AdamW moments, sharded over all local
devices by the config's mesh rules), then times `integrity.array_fingerprints(state)` (the
on-device pass plus fetching 8 bytes per array; compiled once first) and a synchronous Orbax
save of the same state to a temporary local directory. Prints one JSON line per measurement,
then a table. On a TPU/GPU, the fingerprint reads the state once at HBM bandwidth.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import jax


def _time(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()

    import orbax.checkpoint as ocp

    from llada_jax.config import load_config
    from llada_jax.model.sharding import make_mesh
    from llada_jax.io.integrity import array_fingerprints
    from llada_jax.training.step import init_state

    config = load_config(args.config, args.overrides)
    mesh = make_mesh(config.mesh)
    with jax.set_mesh(mesh):
        state = init_state(config, mesh)
        jax.block_until_ready(state)
        nbytes = sum(x.nbytes for x in jax.tree.leaves(state))
        array_fingerprints(state)  # compile
        fp = _time(lambda: array_fingerprints(state), args.repeats)
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = ocp.StandardCheckpointer()
            counter = iter(range(10**6))

            def save():
                ckpt.save(f"{tmp}/{next(counter)}", state)
                ckpt.wait_until_finished()

            save()
            sv = _time(save, args.repeats)
            ckpt.close()
    device = jax.devices()[0].device_kind
    rows = [{"what": "fingerprint", "seconds": fp, "state_bytes": nbytes, "gb_per_s": nbytes / fp / 1e9},
            {"what": "orbax_save_local", "seconds": sv, "state_bytes": nbytes},
            {"what": "fingerprint_over_save", "ratio": fp / sv}]
    for r in rows:
        print(json.dumps({**r, "config": args.config, "devices": jax.device_count(), "device": device}))
    print(f"\n| what | seconds | note |\n|---|---|---|")
    print(f"| fingerprint ({nbytes / 1e6:.1f} MB state, {jax.device_count()} x {device}) | {fp:.4f} | "
          f"{nbytes / fp / 1e9:.2f} GB/s |")
    print(f"| Orbax save, local, synchronous | {sv:.4f} | |")
    print(f"| fingerprint / save | {fp / sv:.3f} | |")


if __name__ == "__main__":
    main()
