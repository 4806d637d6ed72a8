"""The pieces of benchmarks/posttrain_example.py: disjoint digit sets, the Wilson interval, VRPO pairs."""

import importlib.util
import math
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "posttrain_example.py"
spec = importlib.util.spec_from_file_location("posttrain_example", SCRIPT)
example = importlib.util.module_from_spec(spec)
spec.loader.exec_module(example)


def test_digit_splits_are_disjoint_seeded_and_reversed():
    sizes = {"heldout": 128, "grpo": 300, "vrpo": 300, "sft": 3000}
    splits = example.digit_splits(sizes, seed=3)
    assert {k: len(v) for k, v in splits.items()} == sizes
    prompts = [r["prompt"] for rows in splits.values() for r in rows]
    assert len(set(prompts)) == len(prompts)                 # no prompt in two sets (nor twice in one)
    for rows in splits.values():
        for r in rows:
            digits = r["prompt"].removeprefix("reverse ")
            assert r["prompt"] == f"reverse {digits}" and digits.isdigit()
            assert example.MIN_DIGITS <= len(digits) <= example.MAX_DIGITS
            assert r["answer"] == "".join(reversed(digits))
    lengths = {len(r["answer"]) for r in splits["sft"]}
    assert lengths == set(range(example.MIN_DIGITS, example.MAX_DIGITS + 1))
    assert example.digit_splits(sizes, seed=3) == splits      # same seed, same sets
    assert example.digit_splits(sizes, seed=4)["heldout"] != splits["heldout"]
    with pytest.raises(ValueError, match="distinct strings"):
        example.digit_splits({"a": 100}, min_digits=1, max_digits=2)


def test_wilson_interval_worked_values_and_definition():
    # Worked values (Wilson 1927; e.g. Newcombe 1998, table I): 5/10 and 0/10 at 95%.
    lo, hi = example.wilson_interval(5, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.2366, 0.7634)
    lo, hi = example.wilson_interval(0, 10)
    assert lo == 0.0 and round(hi, 4) == 0.2775
    z = 1.959964
    for k, n in ((3, 40), (17, 128), (250, 256)):
        lo, hi = example.wilson_interval(k, n)
        p = k / n
        assert lo < p < hi
        for end in (lo, hi):   # the endpoints are the p with |p_hat - p| = z sqrt(p (1 - p) / n)
            assert math.isclose((p - end) ** 2, z * z * end * (1 - end) / n, rel_tol=1e-9)
        mirror = example.wilson_interval(n - k, n)
        assert math.isclose(mirror[0], 1 - hi) and math.isclose(mirror[1], 1 - lo)
    with pytest.raises(ValueError, match="wilson_interval"):
        example.wilson_interval(5, 4)


def test_preference_pairs_keep_the_models_wrong_answers():
    rows = [example.reverse_example(d) for d in ("1234", "98765", "4444", "55012")]
    outputs = ["4321", "56788", " ", " 21055 "]              # right, wrong, empty, right up to whitespace
    assert example.preference_pairs(rows, outputs) == [
        {"prompt": "reverse 98765", "chosen": "56789", "rejected": "56788"}]
    with pytest.raises(ValueError, match="3 outputs for 4 prompts"):
        example.preference_pairs(rows, outputs[:3])
