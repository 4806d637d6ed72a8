"""The quickstart: tokenizer, tiny LLaDA pretraining and sampling on the bundled Python docs.

Everything lands under one work directory:

    corpus/            one text file per `pydoc_data.topics` topic (no download)
    tokenizer.model    sentencepiece, special ids as configs/quickstart.yaml expects
    run/               Orbax checkpoints, config.yaml, metrics.jsonl, tb/ (TensorBoard)

The training goes through the full pipeline (Grain, the sharded step on the available devices,
Orbax checkpoints, progress bar). Run it again and it resumes from the latest checkpoint (or,
when training is complete, goes straight to sampling). Lines meant for the user go to `log`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"


def render(ids: Sequence[int], tokenizer, mask_id: int, mask_glyph: str = "\u2591") -> str:
    """Text of `ids` piece by piece, every masked position shown as `mask_glyph`."""
    specials = {tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id}
    out = bytearray()
    for i in ids:
        i = int(i)
        if i == mask_id:
            out += mask_glyph.encode()
        elif i not in specials:
            piece = tokenizer.id_to_piece(i)
            byte = re.fullmatch(r"<0x([0-9A-Fa-f]{2})>", piece)  # sentencepiece byte fallback
            out += bytes([int(byte.group(1), 16)]) if byte else piece.replace("\u2581", " ").encode()
    return out.decode("utf-8", errors="replace")


def unmasking_frames(trajectory: np.ndarray, tokenizer, mask_id: int, prompt_len: int, frames: int = 6) -> list[str]:
    """A few snapshots of row 0's generated part, from all masked to the final text."""
    calls = trajectory.shape[0]
    picks = sorted({0, *np.linspace(0, calls - 1, frames).round().astype(int).tolist()})
    return [f"step {c + 1:3d}/{calls}: " + render(trajectory[c, 0, prompt_len:], tokenizer, mask_id).replace("\n", "\u23ce")
            for c in picks]


def run_quickstart(workdir: str | Path = "runs/quickstart", *, steps: int | None = None,
                   prompt: str = "The for statement", overrides: Sequence[str] = (),
                   config_path: str | Path = DEFAULT_CONFIG, log: Callable[[str], None] = lambda s: None,
                   progress: bool = True) -> dict:
    """Train (or resume) the quickstart model and sample from `prompt`; returns a summary dict."""
    import jax

    from llada_jax.config import load_config
    from llada_jax.data import write_default_corpus
    from llada_jax.training.loop import make_dataset, run_training
    from llada_jax.inference.sampling import generate
    from llada_jax.io.tokenizer import load_tokenizer, train_tokenizer

    workdir = Path(workdir).absolute()
    tok_path, run_dir = workdir / "tokenizer.model", workdir / "run"
    settings = [f"train.tokenizer={tok_path}", f"train.checkpoint_dir={run_dir}", f"data.files=[{workdir / 'corpus'}]"]
    if steps is not None:
        settings.append(f"train.steps={steps}")
    config = load_config(config_path, [*settings, *overrides])
    corpus = write_default_corpus(workdir / "corpus")
    log(f"corpus: {len(corpus)} documents of the Python docs in {workdir / 'corpus'}")
    if not tok_path.is_file():
        log(f"training a sentencepiece tokenizer ({config.model.vocab_size} pieces)...")
        train_tokenizer(corpus, tok_path.with_suffix(""), config.model.vocab_size)
    tokenizer = load_tokenizer(tok_path)
    log(f"model: {config.model.num_params() / 1e6:.2f}M params; {config.train.steps} steps of "
        f"{config.train.batch_size} x {config.train.seq_len} tokens on {jax.device_count()} "
        f"{jax.devices()[0].platform} device(s); run dir {run_dir}")
    result = run_training(config, make_dataset(config, tokenizer), progress=progress)
    if result.resumed_from is not None:
        log(f"resumed from step {result.resumed_from}")
    losses = [r["loss"] for r in _read_losses(run_dir)]
    if losses:
        log(f"loss: first logged {losses[0]:.3f}, last {losses[-1]:.3f}")

    params = jax.device_get(result.state.params)
    sc = config.sample
    prompt_ids = np.asarray([[tokenizer.bos_id, *tokenizer.encode(prompt)]], np.int32)
    tokens, trajectory = generate(params, config.model, prompt_ids, steps=sc.steps, gen_length=sc.gen_length,
                                  block_length=sc.block_length, temperature=sc.temperature,
                                  remasking=sc.remasking, return_trajectory=True)
    p = prompt_ids.shape[1]
    log(f"sampling {sc.gen_length} tokens in {sc.steps} steps after: {prompt!r}")
    for line in unmasking_frames(np.asarray(trajectory), tokenizer, config.model.mask_token_id, p):
        log("  " + line)
    text = tokenizer.decode(np.asarray(tokens)[0, p:].tolist())
    log(f"result: {prompt}{text}")
    return {"status": result.status, "step": result.step, "resumed_from": result.resumed_from,
            "losses": losses, "sample": text, "run_dir": str(run_dir)}


def _read_losses(run_dir: Path) -> list[dict]:
    from llada_jax.training.metrics import read_metrics

    return [r for r in read_metrics(run_dir) if "loss" in r and "skipped" not in r]
