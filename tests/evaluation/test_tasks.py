"""Task suites: scorers on hand-made outputs, deterministic generators, file formats and errors."""

import json

import pytest

from llada_jax.evaluation.tasks import (SYNTHETIC, Example, Task, exact_match, extract_number, load_task, numeric_match)


def test_exact_match_normalizes_whitespace_only():
    assert exact_match("  1 2\n 3 ", ["1 2 3"])
    assert exact_match("b", ["a", "b"])
    assert not exact_match("1 2 3 4", ["1 2 3"])
    assert not exact_match("123", ["1 2 3"])
    assert not exact_match("", ["1"])


def test_numeric_scorer_gsm8k_style():
    ref = ["Natalia sold 48/2 = 24 clips in May.\nShe sold 48+24 = 72 clips.\n#### 72"]
    assert extract_number(ref[0]) == 72
    assert numeric_match("so the answer is 72.", ref)
    assert numeric_match("First 3 then #### 72 done", ref)
    assert not numeric_match("72 then 73", ref)          # last number counts
    assert not numeric_match("no number here", ref)
    assert numeric_match("it costs $1,234", ["1234"])
    assert numeric_match("-5", ["#### -5"])
    assert numeric_match("2.50", ["2.5"])
    assert extract_number("x") is None


def test_task_score_and_accuracy():
    task = Task("t", (Example("p", ("a",)), Example("q", ("b", "c"))), "exact")
    assert task.kind == "generate"
    assert task.accuracy(["a", "c"]) == 1.0
    assert task.accuracy([" a ", "a"]) == 0.5
    with pytest.raises(ValueError, match="2 examples"):
        task.accuracy(["a"])
    choice = Task("c", (Example("p", ("x",), ("x", "y"), 0), Example("q", ("y",), ("x", "y"), 1)), "choice")
    assert choice.kind == "choice"
    assert choice.accuracy([0, 0]) == 0.5


def _check_synthetic(name, ex):
    """Independent re-derivation of each synthetic task's reference from its prompt."""
    ref = ex.references[0]
    if name == "reverse":
        assert ref.split() == ex.prompt.split(": ")[1].split()[::-1]
    elif name == "copy":
        assert ref == ex.prompt.split(": ")[1]
    elif name == "sort":
        assert ref.split() == sorted(ex.prompt.split(": ")[1].split())
    elif name == "addition":
        a, b = ex.prompt.rstrip("=").split("+")
        assert int(ref) == int(a) + int(b)
    elif name == "infill":
        full, gapped = ex.prompt.split(": ")[1].split(" | ")
        full, gapped = full.split(), gapped.split()
        holes = [i for i, t in enumerate(gapped) if t == "_"]
        assert holes and holes == list(range(holes[0], holes[-1] + 1))
        assert 0 < holes[0] and holes[-1] < len(full) - 1
        assert ref.split() == [full[i] for i in holes]


@pytest.mark.parametrize("name", sorted(SYNTHETIC))
def test_synthetic_generators_deterministic_and_right(name):
    a = load_task(name, num_examples=50, seed=7)
    b = load_task(name, num_examples=50, seed=7)
    c = load_task(name, num_examples=50, seed=8)
    assert a == b and len(a.examples) == 50
    assert a.examples != c.examples
    for ex in a.examples:
        _check_synthetic(name, ex)
        assert a.score(ex.references[0], ex)


def test_synthetic_options_and_fixed_examples():
    t = load_task("reverse", num_examples=20, seed=0, min_len=3, max_len=3)
    assert all(len(e.prompt.split(": ")[1].split()) == 3 for e in t.examples)
    # The first example of seed 0 is pinned: the same everywhere (PCG64).
    assert load_task("addition", num_examples=1, seed=0).examples[0] == Example("850+636=", ("1486",))
    with pytest.raises(ValueError, match="bad option"):
        load_task("reverse", lenght=3)


def test_jsonl_task(tmp_path):
    f = tmp_path / "qa.jsonl"
    f.write_text('{"prompt": "2+2?", "answer": "#### 4"}\n\n{"question": "color?", "answers": ["red", "Red"]}\n')
    t = load_task("jsonl", path=f, num_examples=None)
    assert [e.prompt for e in t.examples] == ["2+2?", "color?"]
    assert t.scorer == "exact" and t.score("Red", t.examples[1])
    num = load_task("jsonl", path=f, scorer="numeric")
    assert num.score("the answer is 4", num.examples[0])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "answer": "b"}\n{"prompt": "a",\n')
    with pytest.raises(ValueError, match="bad.jsonl:2: not valid JSON"):
        load_task("jsonl", path=bad)
    missing = tmp_path / "m.jsonl"
    missing.write_text('{"prompt": "a"}\n')
    with pytest.raises(ValueError, match="record 1: missing 'answer'"):
        load_task("jsonl", path=missing)


def test_choice_task(tmp_path):
    f = tmp_path / "mc.jsonl"
    rows = [{"question": "sky?", "choices": ["blue", "green"], "answer": 0},
            {"prompt": "grass?", "choices": ["blue", "green"], "answer": "green"}]
    f.write_text("\n".join(json.dumps(r) for r in rows))
    t = load_task("choice", path=f)
    assert t.kind == "choice"
    assert [e.label for e in t.examples] == [0, 1]
    assert t.examples[1].choices == ("blue", "green") and t.examples[1].references == ("green",)
    f.write_text(json.dumps({"prompt": "x", "choices": ["a", "b"], "answer": 2}))
    with pytest.raises(ValueError, match="outside"):
        load_task("choice", path=f)


def test_poem_tasks_both_directions(tmp_path):
    f = tmp_path / "poems.json"
    f.write_text(json.dumps([["床前明月光", "疑是地上霜", "举头望明月"], {"lines": ["one", "two"]}]))
    fwd = load_task("poem-forward", path=f)
    rev = load_task("poem-reverse", path=f)
    assert [(e.prompt, e.references[0]) for e in fwd.examples] == [
        ("next line: 床前明月光", "疑是地上霜"), ("next line: 疑是地上霜", "举头望明月"), ("next line: one", "two")]
    assert [(e.prompt, e.references[0]) for e in rev.examples] == [
        ("previous line: 疑是地上霜", "床前明月光"), ("previous line: 举头望明月", "疑是地上霜"),
        ("previous line: two", "one")]
    sub = load_task("poem-forward", path=f, num_examples=2, seed=1)
    assert sub == load_task("poem-forward", path=f, num_examples=2, seed=1) and len(sub.examples) == 2
    f.write_text(json.dumps([["only one line"]]))
    with pytest.raises(ValueError, match="poem 0"):
        load_task("poem-forward", path=f)


def test_task_errors(tmp_path):
    with pytest.raises(ValueError, match="did you mean 'reverse'"):
        load_task("revers")
    with pytest.raises(ValueError, match="needs a task file"):
        load_task("jsonl")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_task("choice", path=tmp_path / "nope.jsonl")
    with pytest.raises(ValueError, match="takes no task file"):
        load_task("copy", path=tmp_path / "x")
    with pytest.raises(ValueError, match="scorer"):
        load_task("copy", scorer="fuzzy")
    with pytest.raises(ValueError, match="num_examples"):
        load_task("copy", num_examples=0)


def test_release_couplet_file_prompts_scoring_and_defaults(tmp_path):
    # The release's data/poem_data.json format: a JSON list of {"first", "second", "source"}.
    f = tmp_path / "poem_data.json"
    f.write_text(json.dumps([{"first": "窈窕淑女", "second": "君子好逑", "source": "诗经•周南•关雎"},
                             {"first": "今我来思", "second": "雨雪霏霏", "source": "诗经•小雅•采薇"}],
                            ensure_ascii=False), encoding="utf-8")
    fwd = load_task("poem-forward", path=f)
    rev = load_task("poem-reverse", path=f)
    # eval_reverse.py: first + "的下一句是什么？" / second + "的上一句是什么？", then " 直接输出句子即可。"
    assert [(e.prompt, e.references) for e in fwd.examples] == [
        ("窈窕淑女的下一句是什么？ 直接输出句子即可。", ("君子好逑",)),
        ("今我来思的下一句是什么？ 直接输出句子即可。", ("雨雪霏霏",))]
    assert [(e.prompt, e.references) for e in rev.examples] == [
        ("君子好逑的上一句是什么？ 直接输出句子即可。", ("窈窕淑女",)),
        ("雨雪霏霏的上一句是什么？ 直接输出句子即可。", ("今我来思",))]
    # Right when the reference line is contained in the output (`answer in out`).
    assert fwd.scorer == rev.scorer == "contains"
    assert fwd.correct(["君子好逑。", "雨雪霏"]) == 1
    assert fwd.correct(["下一句是：君子好逑", "“雨雪霏霏”"]) == 2
    assert rev.correct(["君子好逑", "今我来思"]) == 1
    # The release's sampler defaults: gen_length 28, block_length 28, steps = gen_length.
    assert fwd.sample_defaults == rev.sample_defaults == {"gen_length": 28, "steps": 28, "block_length": 28}
    assert load_task("reverse").sample_defaults == {}
    # A file of poems (lists of lines) keeps its own prompts, exact match and no defaults.
    g = tmp_path / "poems.json"
    g.write_text(json.dumps([["one", "two"]]))
    plain = load_task("poem-forward", path=g)
    assert plain.scorer == "exact" and plain.sample_defaults == {}
    f.write_text(json.dumps([{"first": "窈窕淑女", "second": "君子好逑"}, {"first": "今我来思"}], ensure_ascii=False),
                 encoding="utf-8")
    with pytest.raises(ValueError, match="couplet 1 must be an object with non-empty 'first' and 'second'"):
        load_task("poem-reverse", path=f)
