"""Shared setup of the evaluation tests: a tiny tokenizer trained on task text and a checkpoint."""

import shutil
from pathlib import Path

from llada_jax.evaluation.tasks import load_task


def train_task_tokenizer(directory: Path):
    """A 300-piece sentencepiece model on the synthetic tasks' text (ids match configs/tiny.yaml)."""
    from llada_jax.io.tokenizer import load_tokenizer, train_tokenizer

    lines = []
    for name in ("reverse", "copy", "sort", "addition", "infill"):
        for e in load_task(name, num_examples=50, seed=1).examples:
            lines += [e.prompt, e.references[0]]
    corpus = directory / "corpus.txt"
    corpus.write_text("\n".join(lines * 4))
    path = train_tokenizer([corpus], directory / "tok", 300)
    return path, load_tokenizer(path)


def save_checkpoint(directory: Path, cfg, params, tokenizer_path: Path) -> Path:
    """A params export holding its tokenizer, as `llada-jax eval --checkpoint` expects."""
    from llada_jax.io.checkpoint import save_params

    save_params(directory, cfg, params)
    shutil.copy(tokenizer_path, directory / "tokenizer.model")
    return directory
