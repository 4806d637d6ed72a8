"""compile-check: AOT compile of the real train step for a small TPU topology on this CPU host."""

import json
import subprocess
import sys

import pytest

from llada_jax.config import load_config
from llada_jax.planning.compile_check import format_report, format_search, grad_accum_choices, recompute_flops_per_token

from conftest import REPO

TINY = REPO / "configs" / "tiny.yaml"
OVERRIDES = ["train.steps=10", "train.warmup_steps=1", "train.decay_steps=1", "train.batch_size=8",
             "train.seq_len=64", "mesh.fsdp=2", "mesh.tensor=2", "model.remat_policy=full"]


def _tiny_flops_per_token(seq):
    # configs/tiny.yaml: d 96, 2 layers, 4 heads of 24, 2 kv heads, mlp 256, vocab 512; full attention.
    d, layers, kv, m, v = 96, 2, 2 * 24, 256, 512
    return 2 * layers * (2 * d * d + 2 * d * kv + 3 * d * m) + 2 * d * v + 2 * layers * 2 * seq * d


def test_recompute_flops_per_policy():
    model = load_config(TINY).model
    head = 2 * 96 * 512  # the output head is never rerun
    assert recompute_flops_per_token(model, 64, "full") == _tiny_flops_per_token(64) - head
    assert recompute_flops_per_token(model, 64, "dots_no_batch") == 2 * 2 * 2 * 64 * 96  # q.k and p.v
    assert recompute_flops_per_token(model, 64, "dots") == 0
    assert recompute_flops_per_token(model, 64, "none") == 0
    # A fused kernel (splash, cuDNN) is no matmul to the policy: 'dots' reruns it like 'dots_no_batch'.
    for policy in ("full", "dots_no_batch", "none"):
        assert recompute_flops_per_token(model, 64, policy, True) == recompute_flops_per_token(model, 64, policy)
    assert recompute_flops_per_token(model, 64, "dots", True) == 2 * 2 * 2 * 64 * 96


def test_fused_attention_follows_the_platform_and_the_splash_tiling():
    from llada_jax.planning.compile_check import fused_attention_in

    auto = load_config(TINY).model.replace(attention_impl="auto", dtype="bfloat16")
    assert fused_attention_in(auto, 256, "tpu") and not fused_attention_in(auto, 200, "tpu")
    assert fused_attention_in(auto, 200, "gpu") and not fused_attention_in(auto, 256, "cpu")
    assert not fused_attention_in(auto.replace(attention_impl="xla"), 256, "tpu")


def test_grad_accum_choices_keep_every_row_shard_busy():
    assert grad_accum_choices(256, 64) == [1, 2, 4]
    assert grad_accum_choices(8, 2) == [1, 2, 4]
    assert grad_accum_choices(12, 4) == [1]


def _cli(*args, status=0):
    pytest.importorskip("libtpu", reason="the 'tpu' extra (libtpu) compiles for TPU topologies")
    proc = subprocess.run([sys.executable, "-m", "llada_jax.cli", "compile-check", "--config", str(TINY), *args],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == status, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]) if "--json" in args else proc.stdout


def test_compile_check_tiny_on_v4_2x2x1_json():
    r = _cli("--topology", "v4:2x2x1", "--json", *OVERRIDES)
    assert r["num_devices"] == 4 and r["device_kind"] == "TPU v4"
    assert r["topology_kwargs"] == {"topology_name": "v4:2x2x1", "chip_config_name": "megacore",
                                    "chips_per_host_bounds": [2, 2, 1], "num_slices": 1, "wrap": [False] * 3}
    assert r["mesh"] == {"data": 1, "fsdp": 2, "tensor": 2}
    m = r["memory_per_chip"]
    assert m["total"] == m["arguments"] + m["outputs"] - m["aliased"] + m["temporaries"] + m["code"]
    assert m["arguments"] > 0 and m["hbm"] == 32 << 30 and r["fits"] is True
    fl = r["flops_per_chip"]
    tokens = 8 * 64
    assert fl["model"] == pytest.approx(3 * tokens * _tiny_flops_per_token(64) / 4, rel=1e-9)
    assert fl["recompute"] == pytest.approx(tokens * (_tiny_flops_per_token(64) - 2 * 96 * 512) / 4, rel=1e-9)
    # fsdp x tensor sharding needs collectives: weights gathered (per scanned layer), gradients reduced
    c = r["collectives"]
    assert c["all-gather"]["executions"] >= 2 and c["all-gather"]["bytes"] > 0
    assert r["loops_without_trip_count"] == []
    assert r["collective_bytes_per_chip"] == pytest.approx(sum(v["bytes"] for v in c.values()))
    rl, chip = r["roofline"], r["chip"]
    assert chip["peak_flops"] == 275e12 and chip["hbm_bandwidth"] == 1200e9
    assert rl["compute_s"] == pytest.approx((fl["model"] + fl["recompute"]) / 275e12)
    assert rl["ici_s"] == pytest.approx(r["link_bytes_per_chip"] / chip["ici_bandwidth"])
    assert rl["hbm_s"] == pytest.approx(r["hbm_bytes_per_chip"] / chip["hbm_bandwidth"])
    assert rl["floor_s"] == max(rl["compute_s"], rl["hbm_s"], rl["ici_s"]) > 0
    assert rl["mfu_ceiling"] == pytest.approx(fl["model"] / (rl["floor_s"] * 275e12))
    text = format_report(r)
    assert "FITS" in text and "temporaries" in text and "roofline floor" in text


def test_compile_check_search_marks_the_fastest_plan_that_fits():
    s = _cli("--topology", "v4:2x2x1", "--json", "--search", "--policies", "full,dots", "--grad-accum", "2",
             *OVERRIDES)
    plans = s["plans"]
    assert [(p["remat_policy"], p["grad_accum"]) for p in plans] == [("full", 2), ("dots", 2)]
    assert all(p["fits"] for p in plans)
    assert plans[0]["flops_per_chip"]["recompute"] > 0 and plans[1]["flops_per_chip"]["recompute"] == 0
    floors = [p["roofline"]["floor_s"] for p in plans]
    assert s["best"] == floors.index(min(floors))
    table = format_search(s).splitlines()
    assert table[2 + s["best"]].startswith("*") and sum(line.startswith("*") for line in table) == 2


# Rows of 65536 tokens without remat: the attention scores alone are far beyond a v4 chip's 32 GiB.
HUGE = [*OVERRIDES[:4], "train.seq_len=65536", "model.max_seq_len=65536", "mesh.fsdp=2", "mesh.tensor=2",
        "model.attention_impl=xla", "model.remat_policy=none"]


def test_a_plan_the_compiler_refuses_for_lack_of_hbm_does_not_fit():
    r = _cli("--topology", "v4:2x2x1", "--json", *HUGE, status=1)
    m = r["memory_per_chip"]
    assert r["fits"] is False and "RESOURCE_EXHAUSTED" in r["compile_error"]
    assert m["required"] > m["hbm"] == 32 << 30 and m["total"] is None and r["roofline"]["floor_s"] is None
    assert r["flops_per_chip"]["model"] > 0  # what the plan computes is known without compiling it
    text = _cli("--topology", "v4:2x2x1", "--search", "--policies", "none", "--grad-accum", "1", *HUGE, status=1)
    assert "refused by the compiler: out of HBM" in text and text.strip().endswith("no plan fits"), text
    assert "DOES NOT FIT: the compiler needs" in format_report(r)


def test_unknown_topology_is_a_clear_error():
    proc = subprocess.run([sys.executable, "-m", "llada_jax.cli", "compile-check", "--config", str(TINY),
                           "--topology", "v5p:4x4"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "v5p slices have 3 dimensions" in proc.stderr
