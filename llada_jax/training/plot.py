"""Training curves of a run as one PNG: loss, learning rate, gradient norm, tokens/s, MFU, time split.

Reads `RUN/metrics.jsonl` (`read_metrics`). The validation curves (`eval/loss`, the ELBO bound
`eval/elbo_nats`) join the loss panel when the run has them; the time panel shows the share of
each logging interval's wall time per category (`time/*`). A resumed run logs replayed steps
again: the last record of a step wins. Uses matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

from pathlib import Path

from llada_jax.training.metrics import read_metrics
from llada_jax.training.timing import CATEGORIES


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of `key`, the last record of each step, in step order."""
    by_step = {r["step"]: r[key] for r in records if isinstance(r.get(key), (int, float))}
    steps = sorted(by_step)
    return steps, [float(by_step[s]) for s in steps]


def plot_training_curves(run_dir: str | Path, out_path: str | Path) -> Path:
    """Write the curves of the run in `run_dir` to the PNG `out_path`; returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir, out_path = Path(run_dir), Path(out_path)
    if out_path.is_dir():  # savefig would write out_path.png beside it
        raise IsADirectoryError(f"{out_path} is a directory; expected the PNG file to write")
    records = [r for r in read_metrics(run_dir) if "step" in r]
    if not any("loss" in r for r in records):
        raise FileNotFoundError(f"{run_dir}/metrics.jsonl: no training records to plot")
    train = [r for r in records if "lr" in r]  # logging-interval records (not skipped-step or eval lines)
    fig, axes = plt.subplots(2, 3, figsize=(15, 8), constrained_layout=True)
    ax = axes[0, 0]
    ax.plot(*_series(train, "loss"), label="train loss")
    for key, label in (("eval/loss", "eval loss"), ("eval/elbo_nats", "eval ELBO bound (nats/token)")):
        steps, values = _series(records, key)
        if steps:
            ax.plot(steps, values, marker="o", markersize=3, label=label)
    ax.set_title("loss")
    ax.legend()
    for ax, key, title in ((axes[0, 1], "lr", "learning rate"), (axes[0, 2], "grad_norm", "gradient norm"),
                           (axes[1, 0], "tokens_per_s", "tokens/s"), (axes[1, 1], "mfu", "MFU")):
        steps, values = _series(train, key)
        if steps:
            ax.plot(steps, values)
        else:
            ax.text(0.5, 0.5, "not logged (unknown device peak)" if key == "mfu" else "not logged",
                    ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title)
    ax = axes[1, 2]
    steps, wall = _series(train, "time/wall")
    if steps:
        bottom = [0.0] * len(steps)
        for name in CATEGORIES:
            s, values = _series(train, f"time/{name}")
            if s != steps or not any(values):
                continue
            share = [v / w if w > 0 else 0.0 for v, w in zip(values, wall)]
            ax.bar(steps, share, bottom=bottom, label=name, width=0.8 * (steps[1] - steps[0] if len(steps) > 1 else 1))
            bottom = [b + v for b, v in zip(bottom, share)]
        ax.legend(fontsize="small")
    ax.set_title("share of wall time")
    for ax in axes.flat:
        ax.set_xlabel("step")
    fig.suptitle(str(run_dir))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path
