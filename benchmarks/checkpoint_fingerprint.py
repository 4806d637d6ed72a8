"""What the checkpoint fingerprint adds per save: fingerprint time against save time.

    python benchmarks/checkpoint_fingerprint.py --config configs/tiny.yaml [--repeats 5] [overrides]

Builds the real train state of a config (params + AdamW moments, sharded over all local
devices by the config's mesh rules), then times `integrity.process_fingerprints(state)`, what a
save computes (an on-device pass over the shards this process owns, then 8 bytes per shard;
compiled once first), and a synchronous Orbax save of the same state to a temporary local directory. Prints one JSON line per measurement,
then a table. On a TPU/GPU, the fingerprint reads the state once at HBM bandwidth.
"""

from __future__ import annotations

import argparse
import tempfile

import jax

from harness import add_output_args, emit, machine, markdown_table, time_call


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("overrides", nargs="*")
    args = add_output_args(ap).parse_args(argv)

    import orbax.checkpoint as ocp

    from llada_jax.config import load_config
    from llada_jax.model.sharding import make_mesh
    from llada_jax.io.integrity import process_fingerprints
    from llada_jax.training.step import init_state

    config = load_config(args.config, args.overrides)
    mesh = make_mesh(config.mesh)
    with jax.set_mesh(mesh):
        state = init_state(config, mesh)
        jax.block_until_ready(state)
        nbytes = sum(x.nbytes for x in jax.tree.leaves(state))
        fp = time_call(lambda: process_fingerprints(state), args.repeats).median_s  # the first call compiles
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = ocp.StandardCheckpointer()
            counter = iter(range(10**6))

            def save():
                ckpt.save(f"{tmp}/{next(counter)}", state)
                ckpt.wait_until_finished()

            sv = time_call(save, args.repeats).median_s  # the first save is not timed
            ckpt.close()
    rows = [{"what": f"fingerprint ({nbytes / 1e6:.1f} MB state)", "seconds": fp, "gb_per_s": nbytes / fp / 1e9},
            {"what": "Orbax save, local, synchronous", "seconds": sv},
            {"what": "fingerprint / save", "ratio": fp / sv}]
    result = {"benchmark": "checkpoint_fingerprint", **machine(), "config": args.config, "overrides": args.overrides,
              "state_bytes": nbytes, "fingerprint_s": fp, "save_s": sv, "fingerprint_over_save": fp / sv}
    columns = [("what", "what", "s"), ("seconds", "seconds", ".4f"), ("gb_per_s", "GB/s", ".2f"), ("ratio", "ratio", ".3f")]
    title = f"{args.config}: {result['devices']} x {result['device']}"
    return emit(result, markdown_table(rows, columns, title), args.json_out)


if __name__ == "__main__":
    main()
