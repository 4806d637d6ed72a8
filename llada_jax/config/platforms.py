"""Which JAX platforms to start: leave the TPU backend out on a machine that has no TPU.

With libtpu installed (the `test` and `tpu` extras), JAX tries the TPU backend first on every
start, and libtpu then prints warnings on a machine without one (`Failed to find host bounds
for accelerator type`, `E0000 ... unexpected worker hostname ...`) and may wait on a metadata
server. `skip_absent_tpu()` runs when `llada_jax` is imported, before any backend starts: when
`JAX_PLATFORMS` is unset, libtpu is installed and there is no TPU hardware (`/dev/accel*`,
`/dev/vfio/*`, a Google PCI device, or the TPU environment variables of a TPU VM), it sets
`JAX_PLATFORMS` (or `jax_platforms`, when JAX is already imported) to the GPU platforms present
(CUDA, ROCm) plus `cpu`, so `import llada_jax` itself still imports no JAX. AOT compiles for a TPU
topology (`compile-check`) load libtpu themselves and do not need the TPU backend.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import sys
from pathlib import Path
from typing import Mapping

# Set on TPU VMs (or by users who point libtpu at a TPU); any one of them means: let JAX look.
TPU_ENV_VARS = ("TPU_NAME", "TPU_ACCELERATOR_TYPE", "TPU_WORKER_ID", "TPU_WORKER_HOSTNAMES", "TPU_CHIPS_PER_HOST_BOUNDS",
                "TPU_HOST_BOUNDS", "TPU_PROCESS_BOUNDS", "CLOUD_TPU_TASK_ID", "JAX_FORCE_TPU_INIT")
GOOGLE_PCI_VENDOR = "0x1ae0"
GPU_PLUGINS = {"cuda": ("jax_cuda13_plugin", "jax_cuda12_plugin", "jax_plugins.xla_cuda13", "jax_plugins.xla_cuda12"),
               "rocm": ("jax_rocm7_plugin", "jax_rocm6_plugin", "jax_plugins.xla_rocm7", "jax_plugins.xla_rocm6")}
GPU_DEVICES = {"cuda": "/dev/nvidia[0-9]*", "rocm": "/dev/kfd"}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def tpu_hardware_present(environ: Mapping[str, str] = os.environ) -> bool:
    """TPU device files, a Google PCI device, or a TPU VM's environment variables."""
    if any(environ.get(v) for v in TPU_ENV_VARS):
        return True
    if glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"):
        return True
    for vendor in glob.glob("/sys/bus/pci/devices/*/vendor"):
        try:
            if Path(vendor).read_text().strip() == GOOGLE_PCI_VENDOR:
                return True
        except OSError:
            continue
    return False


def platforms_without_tpu() -> str:
    """`jax_platforms` for this machine without the TPU backend: GPUs with a JAX plugin, then CPU."""
    gpus = [name for name, modules in GPU_PLUGINS.items()
            if glob.glob(GPU_DEVICES[name]) and any(_installed(m) for m in modules)]
    return ",".join([*gpus, "cpu"])


def skip_absent_tpu(environ: Mapping[str, str] = os.environ) -> str | None:
    """Keep JAX from probing for a TPU that is not there; returns the platforms set (None: untouched)."""
    if environ.get("JAX_PLATFORMS") or not _installed("libtpu") or tpu_hardware_present(environ):
        return None
    platforms = platforms_without_tpu()
    if "jax" not in sys.modules:  # JAX reads the variable when it is imported: no JAX import here
        os.environ["JAX_PLATFORMS"] = platforms
        return platforms
    import jax

    if getattr(jax.config, "jax_platforms", None):  # chosen in code already
        return None
    jax.config.update("jax_platforms", platforms)
    return platforms
