"""Collective and HBM traffic per step from compiled HLO text, against hand counts."""

import pytest

from llada_jax.planning.hlo_stats import array_bytes, group_size, hlo_step_stats, parse_hlo, trip_count

# A combined all-reduce of six arrays (the tuple's text holds an /*index=5*/ comment), an async
# all-gather (start/done pair), a fusion, and a scanned layer: a while loop (known trip count 32)
# whose body calls a computation that holds an all-gather and a nested while (trip count from its
# condition: i < 5 with i starting at 2, so 3 trips) holding a reduce-scatter.
HLO = """HloModule jit_train_step, entry_computation_layout={()->f32[]}

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %s = f32[] add(%a, %b)
}

%inner_cond (p: (s32[], f32[64])) -> pred[] {
  %p = (s32[], f32[64]) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %n = s32[] constant(5)
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}

%inner_body (p: (s32[], f32[64])) -> (s32[], f32[64]) {
  %p = (s32[], f32[64]) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %x = f32[64]{0} get-tuple-element(%p), index=1
  %rs = f32[16]{0} reduce-scatter(%x), replica_groups=[2,4]<=[8], dimensions={0}, to_apply=%add
  %one = s32[] constant(1)
  %j = s32[] add(%i, %one)
  %y = f32[64]{0} broadcast(%rs), dimensions={}
  ROOT %t = (s32[], f32[64]) tuple(%j, %y)
}

%layer (w: bf16[8,128]) -> bf16[32,128] {
  %w = bf16[8,128]{1,0} parameter(0)
  %ag = bf16[32,128]{1,0} all-gather(%w), replica_groups=mesh['data'=2,'fsdp'=4] {'fsdp'}, dimensions={0}
  %two = s32[] constant(2)
  %z = f32[64]{0} broadcast(%two), dimensions={}
  %init = (s32[], f32[64]) tuple(%two, %z)
  %loop = (s32[], f32[64]) while(%init), condition=%inner_cond, body=%inner_body
  ROOT %r = bf16[32,128]{1,0} copy(%ag)
}

%outer_cond (p: (s32[], bf16[8,128])) -> pred[] {
  %p = (s32[], bf16[8,128]) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %n = s32[] constant(32)
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}

%outer_body (p: (s32[], bf16[8,128])) -> (s32[], bf16[8,128]) {
  %p = (s32[], bf16[8,128]) parameter(0)
  %w = bf16[8,128]{1,0} get-tuple-element(%p), index=1
  %g = bf16[32,128]{1,0} call(%w), to_apply=%layer
  %i = s32[] get-tuple-element(%p), index=0
  ROOT %t = (s32[], bf16[8,128]) tuple(%i, %w)
}

%fused_exp (x: f32[1024]) -> f32[1024] {
  %x = f32[1024]{0} parameter(0)
  ROOT %e = f32[1024]{0} exponential(%x)
}

ENTRY %main (a0: f32[1024], w0: bf16[8,128]) -> f32[] {
  %a0 = f32[1024]{0} parameter(0)
  %w0 = bf16[8,128]{1,0} parameter(1)
  %ar = (f32[1024]{0}, f32[16]{0}, bf16[8]{0}, f32[4]{0}, f32[4]{0}, /*index=5*/f32[2]{0}) all-reduce(%a0, %a0, %a0, %a0, %a0, %a0), replica_groups={{0,1,2,3,4,5,6,7}}, to_apply=%add
  %ags = (f32[1024]{0}, f32[8192]{0}) all-gather-start(%a0), replica_groups={}, dimensions={0}
  %agd = f32[8192]{0} all-gather-done(%ags)
  %f = f32[1024]{0} fusion(%a0), kind=kLoop, calls=%fused_exp
  %zero = s32[] constant(0)
  %init = (s32[], bf16[8,128]) tuple(%zero, %w0)
  %loop = (s32[], bf16[8,128]) while(%init), condition=%outer_cond, body=%outer_body, backend_config={"known_trip_count":{"n":"32"}}
  ROOT %out = f32[] constant(0)
}
"""


def test_array_bytes_sums_tuple_elements_past_index_comments():
    t = "(f32[1024]{0}, f32[16]{0}, bf16[8]{0}, f32[4]{0}, f32[4]{0}, /*index=5*/f32[2]{0})"
    assert array_bytes(t) == [4096, 64, 16, 16, 16, 8]
    assert array_bytes("bf16[4,8]{1,0:T(8,128)(2,1)}") == [64]
    assert array_bytes("f32[8]{0:S(1)}", hbm_only=True) == [0.0]  # on-chip memory space


def test_group_sizes_of_each_replica_group_syntax():
    assert group_size("replica_groups=mesh['data'=2,'fsdp'=4,'tensor'=2] {'fsdp','tensor'}, x=1", 16) == 8
    assert group_size("replica_groups=[2,4]<=[8], dimensions={0}", 8) == 4
    assert group_size("replica_groups={{0,1,2},{3,4,5}}, to_apply=%add", 6) == 3
    assert group_size("replica_groups={}, dimensions={0}", 8) == 8


def test_trip_count_from_condition_with_constant_start():
    comps, _ = parse_hlo(HLO)
    loop = next(i for i in comps["layer"] if i["op"] == "while")
    assert trip_count(loop, comps, "layer") == 3  # i = 2; i < 5
    outer = next(i for i in comps["main"] if i["op"] == "while")
    assert trip_count(outer, comps, "main") == 32


def test_collectives_counted_per_execution_with_bytes_by_hand():
    stats = hlo_step_stats(HLO, num_devices=8)
    c = stats["collectives"]
    assert stats["unknown_loops"] == []
    # all-reduce: one combined op of six arrays, 4096 + 64 + 16 + 16 + 16 + 8 bytes, groups of 8
    assert c["all-reduce"]["executions"] == 1
    assert c["all-reduce"]["bytes"] == 4216
    assert c["all-reduce"]["link_bytes"] == pytest.approx(2 * 2 * 7 / 8 * 4216)
    # all-gather: the async one (result half of its tuple: 8192 floats) once, the layer's 32 times
    assert c["all-gather"]["executions"] == 1 + 32
    assert c["all-gather"]["bytes"] == 32768 + 32 * 32 * 128 * 2
    assert c["all-gather"]["link_bytes"] == pytest.approx(2 * (7 / 8 * 32768 + 32 * 3 / 4 * 8192))
    # reduce-scatter in the nested loop: 32 outer trips x 3 inner trips, 64 bytes each, groups of 4
    assert c["reduce-scatter"]["executions"] == 96
    assert c["reduce-scatter"]["bytes"] == 96 * 64
    assert c["reduce-scatter"]["link_bytes"] == pytest.approx(96 * 2 * 3 * 64)


def test_unknown_trip_count_is_reported_and_counted_once():
    hlo = HLO.replace(', backend_config={"known_trip_count":{"n":"32"}}', "").replace(
        "%n = s32[] constant(32)", "%n = s32[] parameter(1)")
    stats = hlo_step_stats(hlo, num_devices=8)
    assert stats["unknown_loops"] == ["loop"]
    assert stats["collectives"]["all-gather"]["executions"] == 2


def test_conditional_counts_its_costliest_branch():
    hlo = """HloModule m

%small (p: f32[8]) -> f32[8] {
  %p = f32[8]{0} parameter(0)
  ROOT %ar = f32[8]{0} all-reduce(%p), replica_groups={{0,1}}, to_apply=%add
}

%big (p: f32[8]) -> f32[8] {
  %p = f32[8]{0} parameter(0)
  %g = f32[256]{0} all-gather(%p), replica_groups={{0,1}}, dimensions={0}
  ROOT %s = f32[8]{0} slice(%g), slice={[0:8]}
}

ENTRY %main (c: pred[], x: f32[8]) -> f32[8] {
  %c = pred[] parameter(0)
  %x = f32[8]{0} parameter(1)
  ROOT %r = f32[8]{0} conditional(%c, %x, %x), true_computation=%small, false_computation=%big
}
"""
    c = hlo_step_stats(hlo, num_devices=2)["collectives"]
    assert list(c) == ["all-gather"] and c["all-gather"]["executions"] == 1 and c["all-gather"]["bytes"] == 1024


def test_hbm_traffic_counts_fusion_operands_and_results_dynamic_slices_and_in_place_updates():
    hlo = """HloModule m

%read_slice (stack: f32[32,256], i: s32[]) -> f32[1,256] {
  %stack = f32[32,256]{1,0} parameter(0)
  %i = s32[] parameter(1)
  %z = s32[] constant(0)
  ROOT %ds = f32[1,256]{1,0} dynamic-slice(%stack, %i, %z), dynamic_slice_sizes={1,256}
}

%write_slice (stack: f32[32,256], row: f32[1,256], i: s32[]) -> f32[32,256] {
  %stack = f32[32,256]{1,0} parameter(0)
  %row = f32[1,256]{1,0} parameter(1)
  %i = s32[] parameter(2)
  %z = s32[] constant(0)
  ROOT %dus = f32[32,256]{1,0} dynamic-update-slice(%stack, %row, %i, %z)
}

%fused_exp (x: f32[1024]) -> f32[1024] {
  %x = f32[1024]{0} parameter(0)
  ROOT %e = f32[1024]{0} exponential(%x)
}

ENTRY %main (s: f32[32,256], a: f32[1024], i: s32[]) -> f32[32,256] {
  %s = f32[32,256]{1,0} parameter(0)
  %a = f32[1024]{0} parameter(1)
  %i = s32[] parameter(2)
  %e = f32[1024]{0} fusion(%a), kind=kLoop, calls=%fused_exp
  %r = f32[1,256]{1,0} fusion(%s, %i), kind=kLoop, calls=%read_slice
  ROOT %w = f32[32,256]{1,0} fusion(%s, %r, %i), kind=kLoop, calls=%write_slice
}
"""
    # exp: 4096 in + 4096 out; read: a 1024-byte row (+ 4-byte index) in, 1024 out;
    # in-place write: reads and writes only the update (1024-byte row + index)
    assert hlo_step_stats(hlo, num_devices=1)["hbm_bytes"] == 8192 + (1024 + 4 + 1024) + 2 * (1024 + 4)
