"""compile-check: AOT compile of the real train step for a small TPU topology on this CPU host."""

import json

import pytest

from llada_jax.training.compile_check import count_collectives, format_report

from conftest import REPO

pytest.importorskip("libtpu", reason="the 'tpu' extra (libtpu) compiles for TPU topologies")

OVERRIDES = ["train.steps=10", "train.warmup_steps=1", "train.decay_steps=1", "train.batch_size=8",
             "train.seq_len=64", "mesh.fsdp=2", "mesh.tensor=2"]


def test_count_collectives_parses_hlo():
    hlo = """
  %all-gather-start.1 = (f32[4]{0}, f32[8]{0}) all-gather-start(f32[4]{0} %p), replica_groups={{0,1}}
  %ar = f32[8]{0} all-reduce(f32[8]{0} %x), to_apply=%add
  %ar.2 = f32[8]{0} all-reduce-start(f32[8]{0} %y), to_apply=%add
  %done = f32[8]{0} all-reduce-done(f32[8]{0} %ar.2)
  %fusion = f32[8]{0} fusion(f32[8]{0} %all-reduce.3), kind=kLoop
"""
    assert count_collectives(hlo) == {"all-gather": 1, "all-reduce": 2}


def test_compile_check_tiny_on_v5e_2x2(capsys):
    from llada_jax.cli.main import main

    rc = main(["compile-check", "--config", str(REPO / "configs" / "tiny.yaml"), "--topology", "v5e:2x2", "--json",
               *OVERRIDES])
    assert rc == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["num_devices"] == 4 and report["device_kind"] == "TPU v5 lite"
    assert report["mesh"] == {"data": 1, "fsdp": 2, "tensor": 2}
    mem = report["memory_per_chip"]
    assert mem["arguments"] > 0 and mem["total"] >= mem["arguments"] and mem["hbm"] == 16 << 30
    assert report["fits"] is True
    assert report["flops_per_step_xla_per_chip"] > 0
    assert report["flops_per_step_model"] == pytest.approx(
        3 * 8 * 64 * _tiny_flops_per_token(64), rel=1e-9)
    # fsdp x tensor sharding needs collectives: weights gathered, gradients reduced
    assert report["collectives"].get("all-gather", 0) + report["collectives"].get("all-reduce", 0) > 0
    text = format_report(report)
    assert "FITS" in text and "temporaries" in text


def _tiny_flops_per_token(seq):
    # configs/tiny.yaml: d 96, 2 layers, 4 heads of 24, 2 kv heads, mlp 256, vocab 512; full attention.
    d, layers, kv, m, v = 96, 2, 2 * 24, 256, 512
    return 2 * layers * (2 * d * d + 2 * d * kv + 3 * d * m) + 2 * d * v + 2 * layers * 2 * seq * d


def test_unknown_topology_is_a_clear_error():
    from llada_jax.training.compile_check import topology_devices

    with pytest.raises(ValueError, match="expected <chip>:<shape>"):
        topology_devices("v5p")
