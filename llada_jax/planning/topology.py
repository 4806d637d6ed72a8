"""TPU topologies described as the hardware is, the chips' bandwidths, and the roofline floor.

`topology_kwargs("v5p:4x4x4")` gives the arguments of `jax.experimental.topologies.get_topology_desc`
that describe a slice the way a real pod is wired (as MaxText's ahead-of-time compile does): v4
and v5p chips run as one megacore device, four chips to a host (2x2x1), and a full cube (every
dimension >= 4) is a torus with wraparound links on all three axes; v5e and v6e slices are 2D,
four chips to a host, with wraparound on a dimension of 16 (the full 16x16 pod). Without the wrap
XLA plans FSDP weight gathers as zero-fill + all-reduce (about 1.5x the traffic).

`roofline` turns a step's per-chip FLOPs, HBM bytes and collective bytes into the shortest step
time the chip allows (each resource at its peak, perfectly overlapped) and the MFU ceiling that
floor implies.
"""

from __future__ import annotations

import math
import os
from typing import Any

from llada_jax.training.metrics import hbm_bytes, peak_tflops

# Chip family accepted in a topology name -> the name libtpu knows it by, and its layout.
_FAMILIES = {
    "v4": ("v4", 3), "v5p": ("v5", 3), "v5": ("v5", 3),
    "v5e": ("v5e", 2), "v5litepod": ("v5e", 2), "v6e": ("v6e", 2),
}

# Per-chip bandwidths in bytes/s, matched as a lower-case substring of `device_kind` (first match
# wins). Peak FLOP/s and HBM capacity come from training.metrics (PEAK_TFLOPS, HBM_BYTES).
# HBM: the chip's HBM bandwidth; ICI: bidirectional inter-chip bandwidth of the chip, all links.
CHIP_BANDWIDTH: tuple[tuple[str, float, float], ...] = (
    # Cloud TPU docs, "TPU v6e": HBM 1640 GBps, bidirectional ICI 800 GBps per chip (4 ports).
    ("v6 lite", 1640e9, 800e9),
    # Cloud TPU docs, "TPU v5e": HBM2 819 GBps, bidirectional ICI 400 GBps per chip (4 ports).
    ("v5 lite", 819e9, 400e9),
    ("v5e", 819e9, 400e9),
    # Cloud TPU docs, "TPU v5p": HBM2e 2765 GBps, bidirectional ICI 1200 GBps per chip (6 ports).
    ("v5p", 2765e9, 1200e9),
    ("v5", 2765e9, 1200e9),
    # Cloud TPU docs, "TPU v4": HBM2 1200 GBps; ICI: 6 links of 45 GB/s each way (Austin et al.,
    # "How to Scale Your Model", TPU chapter) = 540 GBps bidirectional per chip.
    ("v4", 1200e9, 540e9),
)


def parse_topology(topology: str) -> tuple[str, tuple[int, ...]]:
    """'v5p:4x4x4' -> ('v5', (4, 4, 4)): libtpu's family name and the chip grid."""
    if ":" not in topology:
        raise ValueError(f"topology '{topology}': expected <chip>:<shape>, e.g. v5p:4x4x4 or v5e:4x4")
    chip, shape = topology.split(":", 1)
    if chip.lower() not in _FAMILIES:
        raise ValueError(f"topology '{topology}': unknown chip '{chip}' (one of {', '.join(_FAMILIES)})")
    family, ndim = _FAMILIES[chip.lower()]
    try:
        dims = tuple(int(d) for d in shape.lower().split("x"))
    except ValueError:
        dims = ()
    if len(dims) != ndim or min(dims, default=0) < 1:
        example = "4x4x4" if ndim == 3 else "8x8"
        raise ValueError(f"topology '{topology}': {chip} slices have {ndim} dimensions, e.g. {chip}:{example}")
    return family, dims


def topology_kwargs(topology: str, num_slices: int = 1) -> dict[str, Any]:
    """`get_topology_desc` keyword arguments describing `topology` (x `num_slices` over DCN)."""
    family, dims = parse_topology(topology)
    if isinstance(num_slices, bool) or not isinstance(num_slices, int) or num_slices < 1:
        raise ValueError(f"num_slices: must be a positive integer (slices joined over DCN), got {num_slices!r}")
    single_chip = math.prod(dims) == 1
    if len(dims) == 3:  # v4 / v5p: megacore chips, torus when the slice is a full cube or more
        torus = all(d >= 4 for d in dims)
        wrap = (torus, torus, torus)
        chip_config = "megacore"
    else:  # v5e / v6e: 2D slices; wraparound only along a full-pod dimension of 16
        wrap = (dims[0] == 16, dims[1] == 16, False)
        chip_config = "default"
    return {
        "topology_name": f"{family}:{'x'.join(map(str, dims))}",
        "chip_config_name": chip_config,
        "chips_per_host_bounds": (1, 1, 1) if single_chip else (2, 2, 1),
        "num_slices": num_slices,
        "wrap": wrap,
    }


def topology_devices(topology: str, num_slices: int = 1) -> list:
    """The devices of `topology` x `num_slices`, described as the hardware is (needs libtpu)."""
    kwargs = topology_kwargs(topology, num_slices)
    # Only compiling: do not take libtpu's one-process-per-host lock (a training job or another
    # compile-check may hold it).
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")  # no TPU VM here: nothing to look up
    from jax.experimental import topologies

    try:
        desc = topologies.get_topology_desc(platform="tpu", **kwargs)
    except Exception as e:  # libtpu missing, or a shape libtpu does not know
        import importlib.util

        hint = (" (libtpu is not installed: pip install 'llada-jax[tpu]')"
                if importlib.util.find_spec("libtpu") is None else "")
        raise ValueError(f"cannot describe TPU topology '{topology}'{hint}: {e}") from e
    return list(desc.devices)


def chip_spec(device_kind: str) -> dict[str, float | None]:
    """Peak bf16 FLOP/s, HBM bytes and HBM / ICI bandwidths (bytes/s) of a chip; None if unknown."""
    peak = peak_tflops(device_kind)
    spec = {"peak_flops": None if peak is None else peak * 1e12, "hbm_bytes": hbm_bytes(device_kind),
            "hbm_bandwidth": None, "ici_bandwidth": None}
    kind = device_kind.lower()
    for key, hbm_bw, ici_bw in CHIP_BANDWIDTH:
        if key in kind:
            spec["hbm_bandwidth"], spec["ici_bandwidth"] = hbm_bw, ici_bw
            break
    return spec


def roofline(*, flops: float, hbm_bytes_accessed: float, ici_bytes: float, model_flops: float,
             spec: dict[str, float | None]) -> dict[str, float | str | None]:
    """Floor on the step time per chip and the MFU ceiling it implies.

    Each term is the time one resource needs at its peak: compute (`flops` executed, recompute
    included), HBM traffic, and ICI traffic (`ici_bytes` sent and received by the chip). With
    perfect overlap the step takes the longest of them (`bound` names it); MFU counts only
    `model_flops` (no recompute), so the ceiling is model_flops / (floor * peak).
    """
    peak, hbm_bw, ici_bw = spec["peak_flops"], spec["hbm_bandwidth"], spec["ici_bandwidth"]
    if not (peak and hbm_bw and ici_bw):
        return {"compute_s": None, "hbm_s": None, "ici_s": None, "floor_s": None, "bound": None,
                "mfu_ceiling": None}
    times = {"compute": flops / peak, "hbm": hbm_bytes_accessed / hbm_bw, "ici": ici_bytes / ici_bw}
    bound = max(times, key=times.get)
    floor = times[bound]
    return {"compute_s": times["compute"], "hbm_s": times["hbm"], "ici_s": times["ici"], "floor_s": floor,
            "bound": bound, "mfu_ceiling": model_flops / (floor * peak) if floor > 0 else None}
