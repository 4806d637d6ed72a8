"""Test-wide setup: 8 simulated CPU devices, set before JAX starts a backend."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in flags:
    os.environ["XLA_FLAGS"] = (flags + " --xla_force_host_platform_device_count=8").strip()

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def signal_on_line(proc, prefix: str, sig) -> list[str]:
    """Read a worker's stdout until a line starts with `prefix`, then send it `sig`; the lines read."""
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith(prefix):
            proc.send_signal(sig)
            break
    return lines


@pytest.fixture(scope="session")
def tiny_cfg():
    """configs/tiny.yaml in float32: the shared tiny model config of the suite."""
    from llada_jax.config import ModelConfig

    return ModelConfig.from_yaml(REPO / "configs" / "tiny.yaml")


@pytest.fixture(scope="session")
def tiny_params(tiny_cfg):
    import jax

    from llada_jax.model.transformer import init_params

    return init_params(tiny_cfg, jax.random.key(0))


@pytest.fixture(scope="session")
def gcs_server():
    """fake-gcs-server for the whole session (see tests/gcs_emulator.py)."""
    import gcs_emulator

    server = gcs_emulator.start()
    yield server
    server.stop()


@pytest.fixture
def bucket(gcs_server):
    """A fresh, empty `gs://` bucket on the session's emulator."""
    import gcs_emulator

    return gcs_emulator.new_bucket()
