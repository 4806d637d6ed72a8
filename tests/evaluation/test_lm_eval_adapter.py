"""The lm-eval adapter: methods on lm-eval Instances; local tasks end to end through the CLI (subprocess)."""

import json
import os

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")   # local JSON files only: nothing to download
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

lm_eval = pytest.importorskip("lm_eval")

from _eval_helpers import save_checkpoint, train_task_tokenizer  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.api.registry import get_model  # noqa: E402

from llada_jax.evaluation import lm_eval_adapter  # noqa: E402
from llada_jax.inference.likelihood import log_likelihood  # noqa: E402
from llada_jax.inference.sampling import generate  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_cfg, tiny_params):
    d = tmp_path_factory.mktemp("lm_eval")
    tok_path, tok = train_task_tokenizer(d)
    ckpt = save_checkpoint(d / "ckpt", tiny_cfg, tiny_params, tok_path)
    lm = lm_eval_adapter.LladaJaxLM(params=tiny_params, model_config=tiny_cfg, tokenizer=tok, gen_length=8, steps=4,
                                    block_length=4, mc_num=8, ll_batch_size=4, batch_size=4,
                                    check_greedy=False)
    return d, tok, ckpt, lm


def _inst(kind, args, i=0):
    return Instance(request_type=kind, doc={}, arguments=args, idx=i, metadata=("t", i, 1))


def test_registered_under_llada_jax():
    assert get_model("llada_jax") is lm_eval_adapter.LladaJaxLM


def test_loglikelihood_matches_the_estimator_and_greedy_check(setup, tiny_cfg, tiny_params):
    _, tok, _, lm = setup
    reqs = [("copy: 1 2 3 ", "1 2 3"), ("copy: 4 5 6", " 6 5 4"), ("", "7 7")]
    out = lm.loglikelihood([_inst("loglikelihood", r, i) for i, r in enumerate(reqs)])
    assert [g for _, g in out] == [False] * 3   # check_greedy=False reports False, as the release
    for i, ((ctx, cont), (ll, _)) in enumerate(zip(reqs, out)):
        p, a = lm.encode_pair(ctx, cont)
        assert p[0] == tok.bos_id and p + a == [tok.bos_id] + tok.encode(ctx + cont)
        want = log_likelihood(tiny_params, tiny_cfg, p, a, mc_num=8, batch_size=4,
                              key=jax.random.fold_in(lm.key, i))
        assert ll == pytest.approx(want, rel=2e-5)
    # The release's trailing-space rule: the context's trailing space moves into the continuation.
    assert lm.encode_pair("copy: 1 2 3 ", "1 2 3") == lm.encode_pair("copy: 1 2 3", " 1 2 3")
    # is_greedy: true exactly for the continuation that one-token-a-step greedy unmasking writes.
    prompt = [tok.bos_id] + tok.encode("reverse: 1 2")
    greedy = np.asarray(generate(tiny_params, tiny_cfg, np.array([prompt]), steps=3, gen_length=3,
                                 block_length=3))[0, len(prompt):]
    other = greedy.copy()
    other[0] = 10 if greedy[0] != 10 else 11
    assert lm.greedy_matches([(prompt, list(greedy)), (prompt, list(other))]) == [True, False]


def test_generate_until_stops(setup, tiny_cfg, tiny_params):
    _, tok, _, lm = setup
    ctx = "copy: 5 6 7"
    full = lm.generate_until([_inst("generate_until", (ctx, {"until": []}))])[0]
    ids = np.array([[tok.bos_id] + tok.encode(ctx)])
    raw = np.asarray(generate(tiny_params, tiny_cfg, ids, steps=4, gen_length=8, block_length=4,
                              key=jax.random.fold_in(lm.key, 0)))[0, ids.shape[1]:]
    from llada_jax.evaluation.evaluate import decode_answer

    assert full == decode_answer(tok, raw, (tiny_cfg.eos_token_id, tiny_cfg.eot_token_id))
    if len(full) >= 3:
        stop = full[1:3]
        cut = lm.generate_until([_inst("generate_until", (ctx, {"until": [stop]}))])[0]
        assert cut == full.split(stop, 1)[0]
    with pytest.raises(NotImplementedError, match="perplexity"):
        lm.loglikelihood_rolling([_inst("loglikelihood_rolling", ("text",))])


def test_bad_model_args(setup):
    _, _, ckpt, _ = setup
    with pytest.raises(ValueError, match="unknown option.*stepz"):
        lm_eval_adapter.LladaJaxLM(checkpoint=str(ckpt), stepz=3)
    with pytest.raises(ValueError, match="checkpoint=DIR is required"):
        lm_eval_adapter.LladaJaxLM()


TASKS = """
task: tiny_copy_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n"]
metric_list:
  - metric: exact_match
"""

CHOICE = """
task: tiny_copy_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{prompt}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
"""


def _local_tasks(d):
    """tiny_copy_gen / tiny_copy_choice over a local JSONL file (written once per module)."""
    tasks = d / "cli_tasks"
    if not tasks.is_dir():
        tasks.mkdir()
        data = d / "cli_copy.jsonl"
        rows = [{"prompt": f"copy: {a} {b}", "answer": f"{a} {b}", "choices": [f"{a} {b}", f"{b} {a} 0"], "label": 0}
                for a, b in [(1, 2), (3, 4), (5, 6), (7, 8)]]
        data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
        (tasks / "gen.yaml").write_text(TASKS.format(data=data))
        (tasks / "choice.yaml").write_text(CHOICE.format(data=data))
    return tasks


def _cli(*args, cwd):
    import subprocess
    import sys

    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-m", "llada_jax.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=900)


def test_cli_lm_eval_as_documented_and_help(setup):
    """`llada-jax lm-eval --model llada_jax --model_args ... --tasks ... --include_path ... --batch_size ...`."""
    d, _, ckpt, _ = setup
    tasks = _local_tasks(d)
    out = d / "cli_results"
    res = _cli("lm-eval", "--model", "llada_jax", "--model_args",
               f"checkpoint={ckpt},gen_length=8,steps=4,block_length=4,mc_num=4,ll_batch_size=4",
               "--tasks", "tiny_copy_gen,tiny_copy_choice", "--include_path", str(tasks), "--batch_size", "4",
               "--output_path", str(out), cwd=d)
    assert res.returncode == 0, res.stderr[-3000:]
    files = list(out.rglob("results_*.json"))
    assert len(files) == 1
    results = json.loads(files[0].read_text())["results"]
    assert set(results) == {"tiny_copy_gen", "tiny_copy_choice"}
    help_ = _cli("lm-eval", "--help", cwd=d)
    assert help_.returncode == 0, help_.stderr[-3000:]
    for flag in ("--recipe", "--checkpoint", "--model_args", "--include_path", "--batch_size", "--tasks"):
        assert flag in help_.stdout, flag
    assert "unrecognized arguments" not in help_.stderr


RECIPE = """
model: tiny
apply_chat_template: false
defaults: {{mc_num: 4, ll_batch_size: 2, is_check_greedy: false}}
tasks:
  gen: {{task: tiny_copy_gen, num_fewshot: 1, gen_length: 8, gen_blocksize: 4, gen_steps: 4}}
  choice: {{task: tiny_copy_choice, num_fewshot: 0, cfg: 0.5}}
  unused: {{task: no_such_task}}
"""


def test_cli_recipe_runs_each_row_with_its_settings(setup):
    import csv

    d, _, ckpt, _ = setup
    tasks = _local_tasks(d)
    recipe = d / "recipe.yaml"
    recipe.write_text(RECIPE.format())
    out = d / "recipe_out"
    res = _cli("lm-eval", "--recipe", str(recipe), "--checkpoint", str(ckpt), "--tasks", "gen,choice",
               "--include_path", str(tasks), "--out", str(out), "--batch_size", "4", cwd=d)
    assert res.returncode == 0, res.stderr[-3000:]
    with open(out / "summary.csv", newline="") as f:
        summary = list(csv.DictReader(f))
    assert [(r["row"], r["task"], r["metric"]) for r in summary] == [
        ("gen", "tiny_copy_gen", "exact_match"), ("choice", "tiny_copy_choice", "acc")]
    assert summary[0]["settings"] == "num_fewshot=1 gen_length=8 block_length=4 steps=4"
    assert summary[1]["settings"] == "num_fewshot=0 cfg_scale=0.5"
    assert all(float(r["seconds"]) > 0 for r in summary)
    md = (out / "summary.md").read_text()
    assert md.startswith("| task | metric | value | stderr | settings | seconds |") and "gen (tiny_copy_gen)" in md
    for row, task, shots, args in (("gen", "tiny_copy_gen", 1, {"gen_length": 8, "block_length": 4, "steps": 4}),
                                   ("choice", "tiny_copy_choice", 0, {"cfg_scale": 0.5, "mc_num": 4})):
        saved = json.loads((out / f"{row}.json").read_text())
        assert saved["n-shot"][task] == shots                        # the row's few-shot count reached lm-eval
        assert {k: saved["llada_jax_recipe_row"]["model_args"][k] for k in args} == args
        value = [r for r in summary if r["row"] == row][0]
        assert float(value["value"]) == pytest.approx(saved["results"][task][f"{value['metric']},none"])
    assert not (out / "unused.json").exists()
    # A row name that is not in the recipe fails before the model loads, with a suggestion.
    bad = _cli("lm-eval", "--recipe", str(recipe), "--checkpoint", str(d / "missing"), "--tasks", "gne", cwd=d)
    assert bad.returncode == 2 and "no task row 'gne' (did you mean 'gen'?)" in bad.stderr
