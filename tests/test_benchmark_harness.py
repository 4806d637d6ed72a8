"""benchmarks/harness.py: the timing loop calls as documented, the table and the JSON file are what was given."""

import json
import sys

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))

from harness import add_output_args, emit, markdown_table, time_call  # noqa: E402


def test_time_call_counts_first_warmup_and_repeats():
    calls = []
    timing = time_call(lambda: calls.append(len(calls)) or len(calls), 4, warmup=2)
    assert len(calls) == 1 + 2 + 4 and timing.value == 7
    assert len(timing.times) == 4 and timing.min_s <= timing.median_s
    assert sorted(timing.times)[1] <= timing.median_s <= sorted(timing.times)[2]


def test_markdown_table_formats_and_marks_missing():
    rows = [{"mode": "exact", "ms": 1.23456}, {"mode": "dual"}]
    table = markdown_table(rows, [("mode", "mode", "s"), ("ms", "ms/step", ".2f")], title="t")
    assert table.splitlines() == ["t", "", "| mode | ms/step |", "|---|---|", "| exact | 1.23 |", "| dual | - |"]


def test_emit_prints_json_then_table_and_writes_json_out(tmp_path, capsys):
    import argparse

    args = add_output_args(argparse.ArgumentParser()).parse_args(["--json-out", str(tmp_path / "r.json")])
    emit({"a": 1, "path": tmp_path}, "TABLE", args.json_out)
    out = capsys.readouterr().out.splitlines()
    assert json.loads(out[0]) == {"a": 1, "path": str(tmp_path)} and out[1] == "TABLE"
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": 1, "path": str(tmp_path)}
