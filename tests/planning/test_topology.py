"""TPU topologies described as the hardware is, chip specs, and the roofline arithmetic."""

import pytest

from llada_jax.planning.topology import chip_spec, parse_topology, roofline, topology_kwargs


@pytest.mark.parametrize("topology, expected", [
    # v5p / v4: megacore chips, 2x2x1 per host, a torus once every dimension is >= 4
    ("v5p:4x4x4", ("v5:4x4x4", "megacore", (2, 2, 1), (True, True, True))),
    ("v5p:4x4x8", ("v5:4x4x8", "megacore", (2, 2, 1), (True, True, True))),
    ("v5p:2x4x4", ("v5:2x4x4", "megacore", (2, 2, 1), (False, False, False))),
    ("v4:2x2x1", ("v4:2x2x1", "megacore", (2, 2, 1), (False, False, False))),
    ("v4:4x4x4", ("v4:4x4x4", "megacore", (2, 2, 1), (True, True, True))),
    # v5e / v6e: 2D, default chip config, wraparound along a full-pod dimension of 16
    ("v5e:8x8", ("v5e:8x8", "default", (2, 2, 1), (False, False, False))),
    ("v5e:8x16", ("v5e:8x16", "default", (2, 2, 1), (False, True, False))),
    ("v5litepod:16x16", ("v5e:16x16", "default", (2, 2, 1), (True, True, False))),
    ("v6e:16x16", ("v6e:16x16", "default", (2, 2, 1), (True, True, False))),
    ("v6e:1x1", ("v6e:1x1", "default", (1, 1, 1), (False, False, False))),
])
def test_topology_kwargs_per_generation(topology, expected):
    kw = topology_kwargs(topology, num_slices=2)
    assert (kw["topology_name"], kw["chip_config_name"], kw["chips_per_host_bounds"], kw["wrap"]) == expected
    assert kw["num_slices"] == 2


@pytest.mark.parametrize("bad, message", [
    ("v5p", "expected <chip>:<shape>"),
    ("v9:2x2", "unknown chip 'v9'"),
    ("v5p:4x4", "3 dimensions"),
    ("v5e:4x4x4", "2 dimensions"),
    ("v5e:4xa", "2 dimensions"),
])
def test_bad_topology_names_are_clear_errors(bad, message):
    with pytest.raises(ValueError, match=message):
        parse_topology(bad)


def test_chip_spec_by_device_kind():
    v5p = chip_spec("TPU v5")
    assert v5p == {"peak_flops": 459e12, "hbm_bytes": 95 << 30, "hbm_bandwidth": 2765e9, "ici_bandwidth": 1200e9}
    v5e = chip_spec("TPU v5 lite")
    assert (v5e["peak_flops"], v5e["hbm_bytes"], v5e["hbm_bandwidth"]) == (197e12, 16 << 30, 819e9)
    assert chip_spec("TPU v6 lite")["ici_bandwidth"] == 800e9
    assert chip_spec("cpu") == {"peak_flops": None, "hbm_bytes": None, "hbm_bandwidth": None, "ici_bandwidth": None}


def test_roofline_worked_example():
    # A chip of 100 TFLOP/s, 1 TB/s HBM, 0.5 TB/s ICI; a step of 40 TFLOP executed (30 of them model
    # FLOPs, 10 recompute), 0.2 TB through HBM, 0.3 TB over the links:
    # compute 0.4 s, HBM 0.2 s, ICI 0.6 s -> ICI-bound, floor 0.6 s, MFU ceiling 30 / (0.6 * 100) = 50%.
    spec = {"peak_flops": 100e12, "hbm_bytes": 1 << 30, "hbm_bandwidth": 1e12, "ici_bandwidth": 0.5e12}
    r = roofline(flops=40e12, hbm_bytes_accessed=0.2e12, ici_bytes=0.3e12, model_flops=30e12, spec=spec)
    assert r["compute_s"] == pytest.approx(0.4) and r["hbm_s"] == pytest.approx(0.2)
    assert r["ici_s"] == pytest.approx(0.6) and r["floor_s"] == pytest.approx(0.6)
    assert r["bound"] == "ici" and r["mfu_ceiling"] == pytest.approx(0.5)
    # without the links' traffic the same step is compute-bound at 0.4 s: 75%
    r = roofline(flops=40e12, hbm_bytes_accessed=0.2e12, ici_bytes=0.0, model_flops=30e12, spec=spec)
    assert (r["bound"], r["floor_s"], r["mfu_ceiling"]) == ("compute", pytest.approx(0.4), pytest.approx(0.75))


def test_roofline_unknown_chip_has_no_floor():
    spec = chip_spec("cpu")
    r = roofline(flops=1.0, hbm_bytes_accessed=1.0, ici_bytes=1.0, model_flops=1.0, spec=spec)
    assert r["floor_s"] is None and r["mfu_ceiling"] is None
