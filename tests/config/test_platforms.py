"""No TPU probe where there is no TPU: `import llada_jax` leaves the TPU backend out (GPUs and CPU
stay), unless JAX_PLATFORMS or a TPU says otherwise. (A CLI command's clean stderr: tests/cli.)"""

import importlib.util
import os
import subprocess
import sys

import pytest

from llada_jax.config.platforms import platforms_without_tpu, tpu_hardware_present

HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None
PROBE_NOISE = ("Failed to find host bounds", "unexpected worker hostname", "TPU_WORKER_HOSTNAMES", "libtpu")


def _env(**changes):
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    env.update(changes)
    return env


def _platforms_after_import(env) -> str:
    code = "import llada_jax, jax; print(jax.config.jax_platforms); print(jax.devices()[0].platform)"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert not any(s in done.stderr for s in PROBE_NOISE), done.stderr
    return done.stdout.split()


def test_tpu_environment_variables_count_as_a_tpu():
    assert tpu_hardware_present({"TPU_NAME": "my-v5p"})
    assert tpu_hardware_present({"JAX_FORCE_TPU_INIT": "1"})
    assert platforms_without_tpu().split(",")[-1] == "cpu"
    assert "tpu" not in platforms_without_tpu()


@pytest.mark.skipif(tpu_hardware_present(), reason="this machine has a TPU: JAX should look for it")
def test_import_leaves_the_tpu_out_without_a_tpu():
    platforms, device = _platforms_after_import(_env())
    assert device in ("cpu", "gpu")
    if HAS_LIBTPU:  # the case that printed the warnings: libtpu installed, no TPU
        assert platforms == platforms_without_tpu()
    else:
        assert platforms == "None"


def test_explicit_platforms_are_kept():
    platforms, device = _platforms_after_import(_env(JAX_PLATFORMS="cpu"))
    assert (platforms, device) == ("cpu", "cpu")
