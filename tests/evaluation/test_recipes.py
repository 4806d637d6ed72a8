"""Evaluation recipes: the release's settings as data, validation, presets and the run summary."""

import csv
from pathlib import Path

import pytest

from conftest import REPO
from llada_jax.config import ConfigError
from llada_jax.evaluation.recipes import (SUMMARY_COLUMNS, load_recipe, parse_preset, preset_settings,
                                          summary_lines, write_summary)

BASE = REPO / "configs" / "eval" / "llada-8b-base-lm-eval.yaml"
INSTRUCT = REPO / "configs" / "eval" / "llada-8b-instruct-opencompass.yaml"


def test_base_recipe_holds_the_release_lm_eval_commands():
    rows = load_recipe(BASE).rows
    # eval_llada_lm_eval.sh, one line per benchmark: (num_fewshot, cfg, mc_num, batch_size).
    ppl = {"gpqa_main_n_shot": (5, 0.5, 128, 8), "truthfulqa_mc2": (0, 2.0, 128, 8), "arc_challenge": (0, 0.5, 128, 8),
           "hellaswag": (0, 0.5, 128, 8), "winogrande": (5, 0.0, 128, 8), "piqa": (0, 0.5, 128, 8),
           "mmlu": (5, 0.0, 1, 1), "cmmlu": (5, 0.0, 1, 1), "ceval-valid": (5, 0.0, 1, 1)}
    gen = ("bbh", "gsm8k", "minerva_math", "humaneval", "mbpp")
    assert list(rows) == list(ppl) + list(gen)
    for name, (shots, cfg, mc, b) in ppl.items():
        r = rows[name]
        assert (r.task, r.num_fewshot, r.sample.cfg_scale, r.mc_num, r.ll_batch_size, r.check_greedy) == \
            (name, shots, cfg, mc, b, False)
    for name in gen:
        r = rows[name]
        assert (r.num_fewshot, r.sample.gen_length, r.sample.steps, r.sample.block_length) == (None, 1024, 1024, 1024)
        assert r.sample.remasking == "low_confidence" and r.sample.cfg_scale == 0.0 and not r.apply_chat_template
    assert rows["humaneval"].confirm_run_unsafe_code and rows["mbpp"].confirm_run_unsafe_code
    assert not rows["gsm8k"].confirm_run_unsafe_code
    args = rows["truthfulqa_mc2"].model_args()
    assert (args["cfg_scale"], args["mc_num"], args["ll_batch_size"], args["check_greedy"]) == (2.0, 128, 8, False)


def test_instruct_recipe_holds_the_release_opencompass_settings():
    rows = load_recipe(INSTRUCT).rows
    # opencompass/examples/llada_instruct_gen_*.py eval_cfg: (gen_length, gen_blocksize, gen_steps,
    # diff_confidence_eos_eot_inf, diff_logits_eos_inf); remasking is dllm.py's default.
    want = {"mmlu": (3, 3, 3, False, False), "mmlu_pro": (256, 256, 256, False, False),
            "hellaswag": (3, 3, 3, False, False), "arc_challenge": (512, 512, 512, False, False),
            "gsm8k": (512, 512, 512, True, False), "math": (512, 512, 512, True, False),
            "gpqa": (64, 64, 64, True, False), "humaneval": (512, 512, 512, False, True),
            "mbpp": (256, 256, 256, True, False), "ifeval": (512, 512, 512, True, False),
            "gsm8k_block8": (256, 8, 256, False, False), "math_block64": (512, 64, 512, False, False)}
    assert list(rows) == list(want)
    for name, (g, b, s, conf, logits) in want.items():
        x = rows[name].sample
        assert (x.gen_length, x.block_length, x.steps, x.confidence_eos_eot_inf, x.logits_eos_inf) == \
            (g, b, s, conf, logits), name
        assert x.remasking == "low_confidence" and x.temperature == 0.0 and x.cfg_scale == 0.0
        assert rows[name].apply_chat_template
    assert rows["gsm8k_block8"].task == "gsm8k" and rows["math"].task == "minerva_math"
    assert rows["gsm8k"].source == "llada_instruct_gen_gsm8k_length512_block512_confidence.py"


def test_presets_and_row_selection():
    s = preset_settings(f"{INSTRUCT}:gsm8k_block8")
    assert (s["gen_length"], s["block_length"], s["steps"], s["confidence_eos_eot_inf"]) == (256, 8, 256, False)
    assert parse_preset("a/b.yaml:gsm8k") == (Path("a/b.yaml"), "gsm8k")
    with pytest.raises(ValueError, match="expected RECIPE_FILE:ROW"):
        parse_preset("configs/eval/x.yaml")
    recipe = load_recipe(BASE)
    assert [r.name for r in recipe.select(["gsm8k", "piqa"])] == ["gsm8k", "piqa"]
    with pytest.raises(ConfigError, match="no task row 'gsm8' \\(did you mean 'gsm8k'\\?\\)"):
        recipe.select(["gsm8"])


@pytest.mark.parametrize("text, message", [
    ("tasks:\n  t: {gen_lenght: 8}\n", "tasks.t: unknown setting 'gen_lenght' (did you mean 'gen_length'?)"),
    ("tasks:\n  t: {gen_length: 8, block_length: 3}\n", "not divisible by block_length=3"),
    ("tasks:\n  t: {mc_num: 12, ll_batch_size: 8}\n", "tasks.t.mc_num: 12 is not a multiple of ll_batch_size=8"),
    ("tasks:\n  t: {num_fewshot: -1}\n", "tasks.t.num_fewshot: must be >= 0"),
    ("tasks:\n  t: {num_fewshot: five}\n", "tasks.t.num_fewshot: expected an integer"),
    ("tasks:\n  t: {cfg: 0.5, cfg_scale: 1.0}\n", "setting 'cfg_scale' given twice"),
    ("tasks:\n  t: {remasking: low_confidance}\n", "did you mean 'low_confidence'"),
    ("task:\n  t: {}\n", "unknown key 'task' (did you mean 'tasks'?)"),
    ("model: x\n", "'tasks' must be a non-empty mapping"),
    ("defaults: {stepz: 4}\ntasks:\n  t: {}\n", "defaults: unknown setting 'stepz' (did you mean 'steps'?)"),
])
def test_bad_recipes_name_file_row_and_field(tmp_path, text, message):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_recipe(f)
    assert message in str(e.value) and str(f) in str(e.value)


def test_missing_recipe_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="recipe file .*nope.yaml does not exist"):
        load_recipe(tmp_path / "nope.yaml")


def test_summary_from_lm_eval_results(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("tasks:\n  gen: {task: copy_gen, num_fewshot: 2, gen_length: 8, gen_blocksize: 4, gen_steps: 8}\n"
                 "  grp: {task: my_group, cfg: 0.5, mc_num: 4, ll_batch_size: 2}\n")
    rows = load_recipe(f).rows
    results = {"results": {"copy_gen": {"alias": "copy_gen", "exact_match,none": 0.25, "exact_match_stderr,none": 0.1,
                                        "exact_match,flexible": 0.5, "exact_match_stderr,flexible": "N/A"},
                           "sub_a": {"acc,none": 0.1}},
               "groups": {"my_group": {"acc,none": 0.75, "acc_stderr,none": 0.05}}}
    lines = summary_lines(rows["gen"], results, 12.345) + summary_lines(rows["grp"], results, 3.0)
    assert [(x["row"], x["metric"], x["value"], x["stderr"]) for x in lines] == [
        ("gen", "exact_match", 0.25, 0.1), ("gen", "exact_match (flexible)", 0.5, None), ("grp", "acc", 0.75, 0.05)]
    assert lines[0]["settings"] == "num_fewshot=2 gen_length=8 block_length=4 steps=8" and lines[0]["seconds"] == 12.35
    assert lines[2]["settings"] == "cfg_scale=0.5 mc_num=4 ll_batch_size=2"
    csv_path, md_path = write_summary(lines, tmp_path / "out")
    with open(csv_path, newline="") as fh:
        table = list(csv.DictReader(fh))
    assert list(table[0]) == list(SUMMARY_COLUMNS) and len(table) == 3 and table[1]["stderr"] == ""
    md = md_path.read_text().splitlines()
    assert md[0] == "| task | metric | value | stderr | settings | seconds |"
    assert md[2] == "| gen (copy_gen) | exact_match | 0.2500 | 0.1000 | num_fewshot=2 gen_length=8 block_length=4 " \
                    "steps=8 | 12.3 |"
    with pytest.raises(KeyError, match="no results for task 'copy_gen'"):
        summary_lines(rows["gen"], {"results": {}}, 1.0)
