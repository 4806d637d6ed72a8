"""Schedule sweeps and the eval command: files written, resume, skipped cells, errors before compiling."""

import csv
import json

import numpy as np
import pytest

from _eval_helpers import save_checkpoint, train_task_tokenizer
from llada_jax.evaluation import evaluate as ev
from llada_jax.cli.main import main
from llada_jax.config import ConfigError, SampleConfig
from llada_jax.evaluation.sweep import (COLUMNS, CSV_NAME, PLOT_CALLS, PLOT_SPEED, TABLE_NAME, grid_cells, parse_grid,
                             run_sweep)
from llada_jax.evaluation.tasks import load_task

BASE = SampleConfig(gen_length=8, steps=4, block_length=4)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_cfg, tiny_params):
    d = tmp_path_factory.mktemp("sweep")
    tok_path, tok = train_task_tokenizer(d)
    ckpt = save_checkpoint(d / "ckpt", tiny_cfg, tiny_params, tok_path)
    return d, tok, ckpt


def test_parse_grid_types_and_errors():
    g = parse_grid(["steps=8,16", "threshold=none,0.9", "remasking=low_confidence,margin", "cache=none,prefix",
                    "logits_eos_inf=true,false"])
    assert g == {"steps": (8, 16), "threshold": (None, 0.9), "remasking": ("low_confidence", "margin"),
                 "cache": (None, "prefix"), "logits_eos_inf": (True, False)}
    with pytest.raises(ConfigError, match="'stepz' is not a sampler option.*did you mean 'steps'"):
        parse_grid(["stepz=8"])
    with pytest.raises(ConfigError, match="grid steps: expected an integer, got 'abc'"):
        parse_grid(["steps=8,abc"])
    with pytest.raises(ConfigError, match="grid threshold: expected a number"):
        parse_grid(["threshold=high"])
    with pytest.raises(ConfigError, match="did you mean 'margin'"):
        parse_grid(["remasking=margn"])
    with pytest.raises(ConfigError, match="not allowed"):
        parse_grid(["steps=none"])
    with pytest.raises(ConfigError, match="expected name=value"):
        parse_grid(["steps"])
    with pytest.raises(ConfigError, match="repeated"):
        parse_grid(["steps=8,8"])


def test_invalid_combinations_are_skipped_with_a_reason():
    cells = grid_cells(BASE, parse_grid(["block_length=3,4", "steps=2,3"]))
    assert len(cells) == 4
    reasons = {(c.settings["block_length"], c.settings["steps"]): c.reason for c in cells}
    assert "not divisible by block_length=3" in reasons[(3, 2)]
    assert "steps: 3 is not divisible by the number of blocks 2" in reasons[(4, 3)]
    assert reasons[(4, 2)] == "" and [c.sample is not None for c in cells] == [False, False, True, False]


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_two_by_two_sweep_writes_files_and_resumes(setup, tiny_cfg, tiny_params, monkeypatch):
    d, tok, _ = setup
    task = load_task("reverse", num_examples=6, seed=0)
    out = d / "sweep_out"
    grid = ["steps=2,4", "threshold=none,0.9"]
    seen = []
    run_sweep(tiny_params, tiny_cfg, tok, task, grid, out, base=BASE, batch_size=4,
              on_cell=lambda row, i, n: seen.append((i, n)))
    assert seen == [(0, 4), (1, 4), (2, 4), (3, 4)]
    table = _read_csv(out / CSV_NAME)
    assert list(table[0]) == list(COLUMNS) and len(table) == 4
    assert [(r["steps"], r["threshold"]) for r in table] == [("2", "none"), ("2", "0.9"), ("4", "none"), ("4", "0.9")]
    assert all(r["status"] == "ok" for r in table)
    # Fixed schedules make exactly `steps` model calls; a threshold run makes between blocks and gen_length.
    assert float(table[0]["model_calls"]) == 2 and float(table[2]["model_calls"]) == 4
    assert 2 <= float(table[1]["model_calls"]) <= 8
    # With a threshold, steps is unused: the steps=4 cell is the steps=2 run.
    assert table[3]["compiled"] == "shared" and table[3]["model_calls"] == table[1]["model_calls"]
    # Accuracy equals an independent evaluation of the same setting on the same examples and seed.
    direct = ev.evaluate(tiny_params, tiny_cfg, tok, task, BASE.replace(steps=2), batch_size=4)
    assert float(table[0]["accuracy"]) == direct.accuracy
    md = (out / TABLE_NAME).read_text().strip().splitlines()
    assert md[0] == "| steps | threshold | accuracy | model calls/answer | tokens/s | seconds | note |"
    assert len(md) == 2 + 4
    for name in (PLOT_CALLS, PLOT_SPEED):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000

    def no_work(*a, **k):
        raise AssertionError("a finished cell was run again")

    monkeypatch.setattr(ev, "generate_answers", no_work)
    again = run_sweep(tiny_params, tiny_cfg, tok, task, grid, out, base=BASE, batch_size=4)
    assert [r["key"] for r in again] == [r["key"] for r in table]
    assert len(_read_csv(out / CSV_NAME)) == 4


def test_sweep_uses_the_device_mesh(setup, tiny_cfg, tiny_params):
    import jax

    from llada_jax.config import MeshConfig
    from llada_jax.model.sharding import make_mesh

    d, tok, _ = setup
    mesh = make_mesh(MeshConfig(data=-1, fsdp=1, tensor=1))
    assert mesh.devices.size == jax.device_count() == 8
    task = load_task("copy", num_examples=8, seed=3)
    rows = run_sweep(tiny_params, tiny_cfg, tok, task, ["steps=2"], d / "mesh_out", base=BASE, batch_size=8,
                     mesh=mesh)
    plain = ev.evaluate(tiny_params, tiny_cfg, tok, task, BASE.replace(steps=2), batch_size=8)
    assert float(rows[0]["accuracy"]) == plain.accuracy


def test_bad_grid_and_context_rejected_before_compiling(setup, tiny_cfg, tiny_params, monkeypatch):
    d, tok, _ = setup

    def no_compile(*a, **k):
        raise AssertionError("compiled before validating")

    monkeypatch.setattr(ev, "generate_answers", no_compile)
    task = load_task("reverse", num_examples=4)
    with pytest.raises(ConfigError, match="not a sampler option"):
        run_sweep(tiny_params, tiny_cfg, tok, task, ["temprature=0.5"], d / "bad", base=BASE)
    with pytest.raises(ValueError, match="exceed the model's max_seq_len"):
        run_sweep(tiny_params, tiny_cfg, tok, task, ["gen_length=8,256", "steps=64"], d / "bad", base=BASE)


def test_cli_eval_and_errors(setup, capsys):
    d, _, ckpt = setup
    code = main(["eval", "--checkpoint", str(ckpt), "--task", "copy", "--num-examples", "4", "--batch-size", "4",
                 "--gen-length", "8", "--steps", "4", "--block-length", "4", "--output", str(d / "eval.json"),
                 "--task-option", "min_len=3", "--task-option", "max_len=3"])
    out = capsys.readouterr().out
    assert code == 0 and "copy: accuracy" in out and "4 model calls/answer" in out
    for summary in (json.loads(out.splitlines()[0]), json.loads((d / "eval.json").read_text())):
        assert summary["model_calls"] == 4 and type(summary["model_calls"]) is int
    assert (d / "eval.json").is_file()
    # Bad grid key: rejected before the (missing) checkpoint is even opened.
    code = main(["sweep", "--checkpoint", str(d / "missing"), "--task", "copy", "--grid", "stepz=2",
                 "--out", str(d / "x")])
    assert code == 2 and "did you mean 'steps'" in capsys.readouterr().err
    code = main(["eval", "--checkpoint", str(ckpt), "--task", "copy", "--task-option", "min_len=x"])
    assert code == 2 and "expected KEY=INTEGER" in capsys.readouterr().err
    code = main(["eval", "--checkpoint", str(ckpt), "--task", "jsonl", "--task-file", str(d / "nope.jsonl")])
    err = capsys.readouterr().err
    assert code == 2 and "task file" in err and "nope.jsonl does not exist" in err


def test_choice_task_by_likelihood(setup, tiny_cfg, tiny_params):
    d, tok, _ = setup
    f = d / "mc.jsonl"
    f.write_text('{"prompt": "copy: 1 2", "choices": ["1 2", "7 7 7"], "answer": 0}\n'
                 '{"prompt": "copy: 3", "choices": ["9", "3"], "answer": 1}\n')
    task = load_task("choice", path=f)
    res = ev.evaluate(tiny_params, tiny_cfg, tok, task, BASE, mc_num=8, ll_batch_size=4)
    # The pick is the argmax of the (seeded) estimates computed directly.
    import jax

    from llada_jax.inference.likelihood import log_likelihood_batch

    prompts, answers = [], []
    for e in task.examples:
        for c in e.choices:
            prompts.append(ev.encode_prompt(tok, e.prompt))
            answers.append(tok.encode(c))
    scores = log_likelihood_batch(tiny_params, tiny_cfg, prompts, answers, mc_num=8, batch_size=4,
                                  keys=jax.random.split(jax.random.key(0), 4))
    assert res.outputs == (int(np.argmax(scores[:2])), int(np.argmax(scores[2:])))


def test_cli_eval_reversal_runs_as_the_release(setup, tiny_cfg, tiny_params, capsys):
    """poem-forward on the release's couplet format: chat-template prompts, 28/28/28, `answer in out`."""
    import jax

    from llada_jax.inference.sampling import generate

    d, tok, ckpt = setup
    f = d / "poem_data.json"
    f.write_text(json.dumps([{"first": "1 2", "second": "3 4", "source": "a"},
                             {"first": "5 6", "second": "7 8", "source": "b"}]), encoding="utf-8")
    out_file = d / "poem.json"
    code = main(["eval", "--checkpoint", str(ckpt), "--task", "poem-forward", "--task-file", str(f),
                 "--num-examples", "all", "--output", str(out_file), "--mesh", "none"])
    assert code == 0, capsys.readouterr().err
    got = json.loads(out_file.read_text())
    assert (got["sample"]["gen_length"], got["sample"]["steps"], got["sample"]["block_length"]) == (28, 28, 28)
    assert got["model_calls"] == 28
    # The same answers from the library: chat template of the release's prompt, 28 tokens in 28 steps.
    task = load_task("poem-forward", path=f)
    prompts = ev.encode_prompts(tok, [e.prompt for e in task.examples], pad_id=tiny_cfg.pad_token_id)
    assert list(prompts.ids[0][prompts.mask[0]]) == tok.chat_prompt(
        [{"role": "user", "content": "1 2的下一句是什么？ 直接输出句子即可。"}])
    ids = generate(tiny_params, tiny_cfg, prompts.ids, prompts.mask, steps=28, gen_length=28, block_length=28,
                   key=jax.random.fold_in(jax.random.key(0), 0))
    want = [ev.decode_answer(tok, row, (tiny_cfg.eos_token_id, tiny_cfg.eot_token_id))
            for row in np.asarray(ids)[:, prompts.ids.shape[1]:]]
    assert got["outputs"] == want
    assert got["correct"] == sum(ref in o for ref, o in zip(["3 4", "7 8"], want))
    # Flags override the task's defaults.
    code = main(["eval", "--checkpoint", str(ckpt), "--task", "poem-reverse", "--task-file", str(f),
                 "--gen-length", "8", "--block-length", "8", "--steps", "4", "--mesh", "none"])
    summary = json.loads(capsys.readouterr().out.splitlines()[-2])
    assert code == 0 and (summary["sample"]["gen_length"], summary["sample"]["steps"]) == (8, 4)
    assert summary["model_calls"] == 4


def test_cli_sweep_preset_counts_and_checkpoint_key(setup, capsys):
    import shutil

    d, _, ckpt = setup
    recipe = d / "recipe.yaml"
    recipe.write_text("tasks:\n  tiny: {gen_length: 8, gen_blocksize: 4, gen_steps: 8}\n")
    out = d / "preset_sweep"
    common = ["--task", "copy", "--num-examples", "4", "--batch-size", "4", "--mesh", "none", "--no-progress",
              "--out", str(out)]
    code = main(["sweep", "--checkpoint", str(ckpt), "--preset", f"{recipe}:tiny", "--grid", "steps=2,4", *common])
    text = capsys.readouterr().out
    assert code == 0 and "2 cells: 2 run now, 0 shared a run, 0 skipped, 0 already in results.csv" in text
    rows = _read_csv(out / CSV_NAME)
    assert [(r["gen_length"], r["block_length"], r["steps"]) for r in rows] == [("8", "4", "2"), ("8", "4", "4")]
    assert rows[0]["model_calls"] == "2" and rows[1]["model_calls"] == "4"   # integers, not 2.0
    # A re-run says nothing ran; the same grid on another checkpoint is new work (the key names it).
    code = main(["sweep", "--checkpoint", str(ckpt), "--preset", f"{recipe}:tiny", "--grid", "steps=2,4", *common])
    assert code == 0 and "2 cells: 0 run now, 0 shared a run, 0 skipped, 2 already in results.csv" in \
        capsys.readouterr().out
    other = shutil.copytree(ckpt, d / "ckpt_copy")
    code = main(["sweep", "--checkpoint", str(other), "--preset", f"{recipe}:tiny", "--grid", "steps=2,4", *common])
    assert code == 0 and "2 run now" in capsys.readouterr().out
    rows = _read_csv(out / CSV_NAME)
    assert len(rows) == 4 and {r["checkpoint"] for r in rows} == {str(ckpt.resolve()), str(other.resolve())}
    # Flags override the preset; an unknown row is named with a suggestion.
    code = main(["sweep", "--checkpoint", str(ckpt), "--preset", f"{recipe}:tiny", "--block-length", "8",
                 "--grid", "steps=2", *common])
    assert code == 0 and _read_csv(out / CSV_NAME)[-1]["block_length"] == "8"
    capsys.readouterr()
    code = main(["sweep", "--checkpoint", str(ckpt), "--preset", f"{recipe}:tiy", "--grid", "steps=2", *common])
    assert code == 2 and "no task row 'tiy' (did you mean 'tiny'?)" in capsys.readouterr().err


def test_cli_sweep_gen_length_checked_after_the_grid(setup, capsys):
    d, _, ckpt = setup
    # The checkpoint's block_length (32) does not divide 8; the grid's block lengths do.
    code = main(["sweep", "--checkpoint", str(ckpt), "--task", "copy", "--num-examples", "4", "--batch-size", "4",
                 "--gen-length", "8", "--steps", "4", "--grid", "block_length=4,8", "--mesh", "none",
                 "--no-progress", "--out", str(d / "after_grid")])
    assert code == 0, capsys.readouterr().err
    rows = _read_csv(d / "after_grid" / CSV_NAME)
    assert [(r["block_length"], r["status"]) for r in rows] == [("4", "ok"), ("8", "ok")]
    code = main(["eval", "--checkpoint", str(ckpt), "--task", "copy", "--gen-length", "8"])
    assert code == 2 and "not divisible by block_length=32" in capsys.readouterr().err
