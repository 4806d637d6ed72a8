"""Schedule sweeps: every combination of a grid of sampler options on the same examples and seeds.

A grid maps `SampleConfig` field names to lists of values (`parse_grid` turns
`steps=8,16 threshold=none,0.9` into one, rejecting unknown keys and wrong-typed values
before anything is compiled). Each cell is a `SampleConfig`; a combination the sampler
refuses (e.g. `block_length` not dividing `gen_length`) is recorded as skipped with the
reason. With a threshold the number of steps is unused, so cells differing only in `steps`
share one run. Cells whose sampler plan (static shapes and options) was already compiled in
this process skip the warm-up batch: settings that differ only in traced values
(`threshold`, `temperature`, `cfg_scale`) reuse one compiled function.

Results go to `results.csv` (one row per cell, appended as each finishes, so a re-run skips
finished cells: a cell is the same when the checkpoint, task, examples, seed, batch and every
sampler option are), `results.md` (a Markdown table) and two PNG plots: accuracy against model
calls per answer and against tokens/s, one line per schedule family (every grid option but
`steps`).
"""

from __future__ import annotations

import csv
import io
import dataclasses
import difflib
import itertools
import typing
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from llada_jax.config import REMASKING, SAMPLE_FIELDS, ConfigError, SampleConfig
from llada_jax.config.base import NONE_WORDS, check_choice, coerce, format_value

RUN_FIELDS = ("checkpoint", "task", "num_examples", "seed", "batch_size", "chat")
METRICS = ("accuracy", "model_calls", "tokens_per_s", "seconds", "compile_seconds")
COLUMNS = ("key", "run_key") + RUN_FIELDS + SAMPLE_FIELDS + ("family", "status", "reason", "compiled") + METRICS
CSV_NAME, TABLE_NAME = "results.csv", "results.md"
PLOT_CALLS, PLOT_SPEED = "accuracy_vs_model_calls.png", "accuracy_vs_tokens_per_s.png"


def _coerce_value(name: str, raw) -> Any:
    hint = typing.get_type_hints(SampleConfig)[name]
    if isinstance(raw, str) and raw.strip().lower() in NONE_WORDS and type(None) not in typing.get_args(hint):
        raise ConfigError(f"grid {name}: 'none' is not allowed (it is not optional)")
    value = coerce(raw, hint, f"grid {name}")  # optional fields read 'none' as None
    if name == "remasking":
        check_choice("grid", name, value, REMASKING)
    if name == "cache" and value is not None:
        check_choice("grid", name, value, ("none", "prefix", "dual"))
    return value


def parse_grid(items: Sequence[str] | Mapping[str, Sequence]) -> dict[str, tuple]:
    """`["steps=8,16", "threshold=none,0.9"]` (or a mapping) -> {name: values}, validated."""
    if isinstance(items, Mapping):
        pairs = [(k, list(v) if isinstance(v, (list, tuple)) else [v]) for k, v in items.items()]
    else:
        pairs = []
        for item in items:
            if "=" not in item:
                raise ConfigError(f"grid item '{item}': expected name=value1,value2,...")
            name, raw = item.split("=", 1)
            pairs.append((name.strip(), [v.strip() for v in raw.split(",")]))
    grid: dict[str, tuple] = {}
    for name, values in pairs:
        if name not in SAMPLE_FIELDS:
            close = difflib.get_close_matches(name, SAMPLE_FIELDS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"grid key '{name}' is not a sampler option{hint}; options: {', '.join(SAMPLE_FIELDS)}")
        if name in grid:
            raise ConfigError(f"grid key '{name}' given twice")
        if not values or any(v == "" for v in values):
            raise ConfigError(f"grid {name}: empty value")
        coerced = tuple(_coerce_value(name, v) for v in values)
        if len(set(coerced)) != len(coerced):
            raise ConfigError(f"grid {name}: repeated value in {values}")
        grid[name] = coerced
    if not grid:
        raise ConfigError("grid: no options given")
    return grid


@dataclasses.dataclass(frozen=True)
class Cell:
    """One combination: its settings, the validated config (None if skipped) and why not."""

    settings: dict
    sample: SampleConfig | None
    reason: str = ""

    @property
    def run_sample(self) -> SampleConfig | None:
        """The config actually run: with a threshold, `steps` is unused and set to the block count."""
        if self.sample is None or self.sample.threshold is None:
            return self.sample
        return dataclasses.replace(self.sample, steps=self.sample.gen_length // self.sample.block_length)


def grid_cells(base: SampleConfig | Mapping, grid: Mapping[str, Sequence]) -> list[Cell]:
    """Every combination of `grid` applied to `base`, in grid order; invalid ones carry a reason.

    `base` may be a mapping of settings that is not valid on its own (e.g. a `gen_length` that
    only the grid's `block_length` divides): each cell is validated after the grid applies.
    """
    names = list(grid)
    base = {**SampleConfig().to_dict(), **(base.to_dict() if isinstance(base, SampleConfig) else dict(base))}
    cells = []
    for values in itertools.product(*(grid[n] for n in names)):
        settings = {**base, **dict(zip(names, values))}
        try:
            sample = SampleConfig.from_dict(settings, where="cell")
            cells.append(Cell(sample.to_dict(), sample))   # typed values (a flag's "0.9" -> 0.9)
        except ConfigError as e:
            cells.append(Cell(settings, None, str(e).removeprefix("cell.").removeprefix("cell: ")))
    return cells


def family_of(settings: Mapping, grid_names: Sequence[str]) -> str:
    """The plot line of a cell: its grid options except `steps` (or 'all' if only steps vary)."""
    parts = [f"{n}={format_value(settings[n])}" for n in grid_names if n != "steps"]
    return ", ".join(parts) or "all"


def cell_key(run: Mapping, settings: Mapping) -> str:
    """The identity of a cell for resuming: run fields and every sampler option."""
    return ";".join(f"{k}={format_value(run[k])}" for k in RUN_FIELDS) + ";" + \
        ";".join(f"{k}={format_value(settings[k])}" for k in SAMPLE_FIELDS)


def read_rows(path) -> list[dict]:
    """Rows of an existing results CSV (empty if none; local or on a bucket); one with other columns is refused."""
    from llada_jax.io.paths import as_path, is_file

    if not is_file(path):
        return []
    reader = csv.DictReader(io.StringIO(as_path(path).read_text(), newline=""))
    rows = list(reader)
    if reader.fieldnames and list(reader.fieldnames) != list(COLUMNS):
        raise ValueError(f"{path}: its columns are not this version's ({', '.join(COLUMNS)}); "
                         f"sweep into a new --out directory")
    return rows


def count_cells(rows: Sequence[Mapping]) -> str:
    """What a sweep call did with its cells: run now, shared a run, skipped, found in results.csv."""
    earlier = sum(bool(r.get("resumed")) for r in rows)
    now = [r for r in rows if not r.get("resumed")]
    ran = sum(r.get("compiled") in ("new", "reused") for r in now)
    shared = sum(r.get("compiled") == "shared" for r in now)
    skipped = sum(r.get("status") == "skipped" for r in now)
    return f"{ran} run now, {shared} shared a run, {skipped} skipped, {earlier} already in {CSV_NAME}"


def _append_row(path, row: Mapping) -> None:
    from llada_jax.io.paths import AppendFile, as_path, is_file

    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    if not is_file(path) or as_path(path).stat().length == 0:
        writer.writeheader()
    writer.writerow({k: format_value(row.get(k)) for k in COLUMNS})
    out = AppendFile(path)
    out.write(buffer.getvalue())
    out.close()


def run_sweep(params: Any, cfg, tokenizer, task, grid: Mapping[str, Sequence], out_dir: str | Path, *,
              base: SampleConfig | Mapping | None = None, batch_size: int = 16, seed: int = 0, chat: bool = True,
              mesh=None, on_cell: Callable[[dict, int, int], None] | None = None, checkpoint: str = "") -> list[dict]:
    """Run every cell not already in `out_dir/results.csv`; write the table and plots; return this grid's rows.

    `checkpoint` names the model in the resume key, so one `out_dir` can hold several models'
    cells. Rows found in the CSV come back with `resumed=True` (see `count_cells`).
    """
    from llada_jax.evaluation.evaluate import encode_prompts, generate_answers, place_params, score_generation
    from llada_jax.inference.sampling import make_plan

    if task.kind != "generate":
        raise ValueError(f"task '{task.name}' is scored by likelihood; sweeps compare sampler settings")
    base = base or SampleConfig()
    grid = parse_grid(grid)
    from llada_jax.io.paths import as_path

    out_dir = as_path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / CSV_NAME
    cells = grid_cells(base, grid)
    run = dict(checkpoint=str(checkpoint), task=task.name, num_examples=len(task.examples), seed=seed,
               batch_size=batch_size, chat=chat)
    done = {r["key"]: r for r in read_rows(csv_path)}
    by_run: dict[str, dict] = {r["run_key"]: {**{m: r[m] for m in METRICS}, "label": f"steps={r['steps']}"}
                               for r in done.values() if r.get("status") == "ok" and r.get("compiled") != "shared"}

    prompts = encode_prompts(tokenizer, [e.prompt for e in task.examples], chat=chat, pad_id=cfg.pad_token_id)
    for c in cells:  # prompt + answer must fit the context: refuse before compiling anything
        if c.sample is not None and prompts.ids.shape[1] + c.sample.gen_length > cfg.max_seq_len:
            raise ValueError(f"prompts ({prompts.ids.shape[1]} tokens) + gen_length {c.sample.gen_length} exceed "
                             f"the model's max_seq_len {cfg.max_seq_len}")
    placed = None
    compiled_plans: set = set()
    rows = []
    for index, cell in enumerate(cells):
        key = cell_key(run, cell.settings)
        row = {"key": key, **run, **cell.settings, "family": family_of(cell.settings, list(grid))}
        if key in done:
            rows.append({**done[key], "resumed": True})
        elif cell.sample is None:
            row.update(status="skipped", reason=cell.reason)
            _append_row(csv_path, row)
            rows.append(row)
        else:
            run_key = cell_key(run, cell.run_sample.to_dict())
            row["run_key"] = run_key
            if run_key in by_run:
                row.update({m: by_run[run_key][m] for m in METRICS}, status="ok", compiled="shared",
                           reason=f"same run as {by_run[run_key]['label']} (steps unused with a threshold)")
            else:
                if placed is None:
                    placed = place_params(params, cfg, mesh)
                sample = cell.run_sample
                plan = make_plan(cfg, (batch_size, prompts.ids.shape[1]), (batch_size, prompts.ids.shape[1]),
                                 key=True, **sample.to_dict())
                fresh = plan not in compiled_plans
                gen = generate_answers(placed, cfg, prompts, sample, batch_size=batch_size, seed=seed, mesh=mesh,
                                       warmup=fresh)
                compiled_plans.add(plan)
                result = score_generation(task, tokenizer, cfg, gen, sample.gen_length)
                row.update(status="ok", reason="", compiled="new" if fresh else "reused",
                           **{m: getattr(result, m) for m in METRICS})
                by_run[run_key] = {**{m: row[m] for m in METRICS},
                                   "label": f"steps={cell.settings['steps']}"}
            _append_row(csv_path, row)
            rows.append(row)
        if on_cell is not None:
            on_cell(rows[-1], index, len(cells))
    write_table(rows, out_dir / TABLE_NAME, list(grid))
    plot_rows(rows, out_dir, list(grid))
    return rows


def _num(row: Mapping, name: str) -> float | None:
    v = row.get(name)
    if v in (None, "", "none"):
        return None
    return float(v)


def write_table(rows: Sequence[Mapping], path: Path, grid_names: Sequence[str]) -> Path:
    """Markdown table: the grid options, then accuracy, model calls per answer, tokens/s, seconds."""
    head = list(grid_names) + ["accuracy", "model calls/answer", "tokens/s", "seconds", "note"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        if r.get("status") == "skipped":
            metrics = ["-", "-", "-", "-", f"skipped: {r.get('reason', '')}"]
        else:
            metrics = [f"{_num(r, 'accuracy'):.3f}", f"{_num(r, 'model_calls'):g}",
                       f"{_num(r, 'tokens_per_s'):.1f}", f"{_num(r, 'seconds'):.2f}", r.get("reason", "") or ""]
        lines.append("| " + " | ".join([format_value(r[n]) for n in grid_names] + metrics) + " |")
    path.write_text("\n".join(lines) + "\n")
    return path


def plot_rows(rows: Sequence[Mapping], out_dir: Path, grid_names: Sequence[str]) -> tuple[Path, Path]:
    """Accuracy against model calls per answer and against tokens/s, one line per family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r.get("status") != "skipped"]
    families: dict[str, list] = {}
    for r in ok:
        families.setdefault(r["family"], []).append(r)
    paths = []
    for x_name, x_label, file in (("model_calls", "model calls per answer", PLOT_CALLS),
                                  ("tokens_per_s", "tokens / s", PLOT_SPEED)):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for fam, members in families.items():
            pts = sorted((_num(r, x_name), _num(r, "accuracy")) for r in members)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=fam)
        ax.set_xlabel(x_label)
        ax.set_ylabel("accuracy")
        if x_name == "model_calls":
            ax.set_xscale("log", base=2)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        if families:
            ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
        path = out_dir / file
        with path.open("wb") as f:  # through a file object: out_dir may be on a bucket
            fig.savefig(f, format="png", dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths[0], paths[1]
