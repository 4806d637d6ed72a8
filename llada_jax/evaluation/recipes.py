"""Evaluation recipes: the settings the LLaDA release runs each benchmark with, as validated data.

A recipe is a YAML file (`configs/eval/*.yaml`):

    model: GSAI-ML/LLaDA-8B-Base        # what the release evaluated (informational)
    source: eval_llada_lm_eval.sh       # where the numbers come from (informational)
    apply_chat_template: false          # default of every row
    defaults: {cfg: 0.0, mc_num: 128, ...}   # settings every row starts from
    tasks:
      ROW: {task: LM_EVAL_TASK, num_fewshot: 5, cfg: 0.5, mc_num: 128, is_check_greedy: false, ...}

A row's `task` (the lm-eval task it runs) defaults to the row's name; a row may override
`apply_chat_template`, set `confirm_run_unsafe_code` (code tasks run the model's output) and
name its `source`. Settings are spelled as in the release or as
here; `ALIASES` maps the release's names (`cfg`, `gen_steps`, `gen_blocksize`,
`diff_confidence_eos_eot_inf`, `diff_logits_eos_inf`, `is_check_greedy`) to ours. Each row's
merged settings are validated when the file loads: a `SampleConfig` (gen_length, steps,
block_length, remasking, cfg_scale, ...) plus the likelihood settings (`mc_num`, its
minibatch `ll_batch_size`, `check_greedy`) and `num_fewshot` (null: the task's own default).

`preset_settings("FILE:ROW")` is one row's sampler settings, the starting point of a sweep.
`summary_lines` / `write_summary` turn lm-eval results into one table (CSV + Markdown).
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from llada_jax.config import SAMPLE_FIELDS, ConfigError, SampleConfig, did_you_mean
from llada_jax.config.base import coerce, format_value
from llada_jax.io.paths import read_text

# The release's option names -> ours (eval_llada.py, opencompass/models/dllm.py).
ALIASES = {
    "cfg": "cfg_scale",
    "gen_steps": "steps",
    "gen_blocksize": "block_length",
    "diff_confidence_eos_eot_inf": "confidence_eos_eot_inf",
    "diff_logits_eos_inf": "logits_eos_inf",
    "is_check_greedy": "check_greedy",
}
# Row settings besides the sampler's, with their types.
LIKELIHOOD_FIELDS = {"mc_num": int, "ll_batch_size": int, "check_greedy": bool}
ROW_FIELDS = {"task": str, "num_fewshot": int | None, "apply_chat_template": bool, "confirm_run_unsafe_code": bool,
              "source": str}
FILE_FIELDS = ("model", "source", "harness", "apply_chat_template", "defaults", "tasks")
SETTING_NAMES = tuple(SAMPLE_FIELDS) + tuple(LIKELIHOOD_FIELDS)
SUMMARY_CSV, SUMMARY_MD = "summary.csv", "summary.md"
SUMMARY_COLUMNS = ("row", "task", "metric", "value", "stderr", "settings", "seconds")


@dataclasses.dataclass(frozen=True)
class RecipeRow:
    """One benchmark run: the lm-eval task, its few-shot count and every model setting."""

    name: str
    task: str
    num_fewshot: int | None
    apply_chat_template: bool
    sample: SampleConfig
    mc_num: int
    ll_batch_size: int
    check_greedy: bool
    explicit: tuple = ()          # (name, value) of the settings the row itself gives, our names
    confirm_run_unsafe_code: bool = False   # code tasks (humaneval, mbpp) execute model output
    source: str = ""

    def model_args(self) -> dict:
        """Keyword arguments of the lm-eval adapter's model (`LladaJaxLM`) for this row."""
        return {**self.sample.to_dict(), "mc_num": self.mc_num, "ll_batch_size": self.ll_batch_size,
                "check_greedy": self.check_greedy}

    def settings_text(self) -> str:
        """The row's own settings as `name=value` words (what distinguishes it in a summary)."""
        words = [f"num_fewshot={format_value(self.num_fewshot)}"] if self.num_fewshot is not None else []
        words += [f"{k}={format_value(v)}" for k, v in self.explicit]
        if self.apply_chat_template:
            words.append("chat")
        return " ".join(words)


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A recipe file: its rows by name, in file order."""

    path: Path
    model: str
    source: str
    rows: dict

    def select(self, names: Sequence[str] | None = None) -> list[RecipeRow]:
        """The rows named (all of them when `names` is empty), in the order given."""
        if not names:
            return list(self.rows.values())
        out = []
        for name in names:
            if name not in self.rows:
                raise ConfigError(f"{self.path}: no task row '{name}'{did_you_mean(name, list(self.rows))}; "
                                  f"rows: {', '.join(self.rows)}")
            out.append(self.rows[name])
        return out


def _settings(raw: Mapping, where: str) -> dict:
    """Release or project spellings -> ours; unknown names refused (with a did-you-mean)."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a mapping of settings, got {raw!r}")
    out = {}
    known = SETTING_NAMES + tuple(ALIASES)
    for key, value in raw.items():
        name = ALIASES.get(key, key)
        if name not in SETTING_NAMES:
            raise ConfigError(f"{where}: unknown setting '{key}'{did_you_mean(str(key), known)}")
        if name in out:
            raise ConfigError(f"{where}: setting '{name}' given twice (as '{key}' and its other spelling)")
        out[name] = value
    return out


def _row(name: str, raw: Any, file_defaults: dict, chat_default: bool, where: str) -> RecipeRow:
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {raw!r}")
    fields = {k: coerce(raw[k], ROW_FIELDS[k], f"{where}.{k}") for k in ROW_FIELDS if k in raw}
    own = _settings({k: v for k, v in raw.items() if k not in ROW_FIELDS}, where)
    merged = {**file_defaults, **own}
    sample = SampleConfig.from_dict({k: v for k, v in merged.items() if k in SAMPLE_FIELDS}, where=where)
    lik = {k: coerce(merged.get(k, d), LIKELIHOOD_FIELDS[k], f"{where}.{k}")
           for k, d in (("mc_num", 128), ("ll_batch_size", 16), ("check_greedy", True))}
    for k in ("mc_num", "ll_batch_size"):
        if lik[k] <= 0:
            raise ConfigError(f"{where}.{k}: must be positive, got {lik[k]}")
    if lik["mc_num"] % lik["ll_batch_size"]:
        raise ConfigError(f"{where}.mc_num: {lik['mc_num']} is not a multiple of ll_batch_size={lik['ll_batch_size']}")
    fewshot = fields.get("num_fewshot")
    if fewshot is not None and fewshot < 0:
        raise ConfigError(f"{where}.num_fewshot: must be >= 0, got {fewshot}")
    explicit = tuple((k, getattr(sample, k) if k in SAMPLE_FIELDS else lik[k]) for k in own)
    return RecipeRow(name, fields.get("task", name), fewshot, fields.get("apply_chat_template", chat_default),
                     sample, lik["mc_num"], lik["ll_batch_size"], lik["check_greedy"], explicit,
                     fields.get("confirm_run_unsafe_code", False), fields.get("source", ""))


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file; every error names the file and the row."""
    path = Path(path)
    text = read_text(path, "recipe file")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with a 'tasks' section")
    for key in data:
        if key not in FILE_FIELDS:
            raise ConfigError(f"{path}: unknown key '{key}'{did_you_mean(str(key), FILE_FIELDS)}")
    tasks = data.get("tasks")
    if not isinstance(tasks, dict) or not tasks:
        raise ConfigError(f"{path}: 'tasks' must be a non-empty mapping of rows")
    defaults = _settings(data.get("defaults") or {}, f"{path}: defaults")
    chat = coerce(data.get("apply_chat_template", False), bool, f"{path}: apply_chat_template")
    rows = {str(name): _row(str(name), raw, defaults, chat, f"{path}: tasks.{name}") for name, raw in tasks.items()}
    return Recipe(path, str(data.get("model", "")), str(data.get("source", "")), rows)


def parse_preset(spec: str) -> tuple[Path, str]:
    """`FILE:ROW` -> (file, row name)."""
    file, sep, row = str(spec).rpartition(":")
    if not sep or not file or not row:
        raise ValueError(f"--preset {spec!r}: expected RECIPE_FILE:ROW, "
                         f"e.g. configs/eval/llada-8b-base-lm-eval.yaml:gsm8k")
    return Path(file), row


def preset_settings(spec: str) -> dict:
    """The sampler settings of recipe row `FILE:ROW` (a dict of `SampleConfig` fields)."""
    path, row = parse_preset(spec)
    return load_recipe(path).select([row])[0].sample.to_dict()


# ---------------------------------------------------------------------------------------------
# Summary of a recipe run.

def summary_lines(row: RecipeRow, results: Mapping, seconds: float) -> list[dict]:
    """One line per metric of `row`'s task in lm-eval's `results` (its group entry when a group)."""
    table = results.get("groups", {}).get(row.task) or results.get("results", {}).get(row.task)
    if table is None:
        raise KeyError(f"lm-eval returned no results for task '{row.task}' (row '{row.name}')")
    lines = []
    for key, value in table.items():
        metric, _, filt = key.partition(",")
        if not filt or metric.endswith("_stderr") or not isinstance(value, (int, float)):
            continue
        stderr = table.get(f"{metric}_stderr,{filt}")
        lines.append({"row": row.name, "task": row.task, "metric": metric if filt == "none" else f"{metric} ({filt})",
                      "value": float(value), "stderr": float(stderr) if isinstance(stderr, (int, float)) else None,
                      "settings": row.settings_text(), "seconds": round(float(seconds), 2)})
    return lines


def write_summary(lines: Sequence[Mapping], out_dir: str | Path) -> tuple[Path, Path]:
    """`summary.csv` and `summary.md`: task, metric, value, settings, time of every row run."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out_dir / SUMMARY_CSV, out_dir / SUMMARY_MD
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=SUMMARY_COLUMNS)
        writer.writeheader()
        for line in lines:
            writer.writerow({k: "" if line.get(k) is None else line[k] for k in SUMMARY_COLUMNS})
    head = ["task", "metric", "value", "stderr", "settings", "seconds"]
    md = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for line in lines:
        task = line["row"] if line["row"] == line["task"] else f"{line['row']} ({line['task']})"
        stderr = "" if line.get("stderr") is None else f"{line['stderr']:.4f}"
        md.append(f"| {task} | {line['metric']} | {line['value']:.4f} | {stderr} | {line['settings']} | "
                  f"{line['seconds']:.1f} |")
    md_path.write_text("\n".join(md) + "\n")
    return csv_path, md_path
