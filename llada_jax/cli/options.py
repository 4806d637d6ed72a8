"""Flags and helpers shared by the commands that load a model: generate, eval, sweep, likelihood.

Each command module builds its parser from these, so a flag means the same in every command.
"""

from __future__ import annotations

from pathlib import Path

NEWLINE_MARK = "\u23ce"  # ⏎: a newline, so each step stays one line


def add_model_flags(p) -> None:
    """--checkpoint, --tokenizer and --mesh."""
    p.add_argument("--checkpoint", required=True, metavar="DIR",
                   help="training run folder (its latest step, or RUN@STEP), llada-jax params export, or HF LLaDA "
                        "directory; local or gs://...")
    p.add_argument("--tokenizer", default=None,
                   help="sentencepiece .model / tokenizer.json / directory (default: the checkpoint directory, "
                        "then the checkpoint config's train.tokenizer)")
    p.add_argument("--mesh", choices=("auto", "none"), default="auto",
                   help="auto: split the batch over all devices (data parallel) when there are several")


def add_sampler_flags(p) -> None:
    """One flag per `SampleConfig` field; unset flags keep the checkpoint's value."""
    g = p.add_argument_group("sampler (default: the checkpoint config's sample section)")
    g.add_argument("--gen-length", type=int)
    g.add_argument("--steps", type=int)
    g.add_argument("--block-length", type=int)
    g.add_argument("--temperature", type=float)
    g.add_argument("--cfg-scale", type=float)
    g.add_argument("--remasking", choices=("low_confidence", "random", "margin", "entropy"))
    g.add_argument("--threshold", help="confidence threshold in (0, 1], or none")
    g.add_argument("--cache", choices=("none", "prefix", "dual"))
    g.add_argument("--logits-eos-inf", action="store_true", default=None)
    g.add_argument("--confidence-eos-eot-inf", action="store_true", default=None)


def sample_flags(args) -> dict:
    """The sampler flags the user set (unset flags are absent)."""
    from llada_jax.config import SAMPLE_FIELDS

    return {k: getattr(args, k) for k in SAMPLE_FIELDS if getattr(args, k, None) is not None}


def base_sample(checkpoint: Path, args=None):
    """The sample section of the checkpoint's config (run or export; defaults for a HF directory), with flags applied."""
    from llada_jax.evaluation.evaluate import checkpoint_sample

    base = checkpoint_sample(checkpoint)
    changes = sample_flags(args) if args is not None else {}
    return base.replace(**changes) if changes else base


def checkpoint_tokenizer(args):
    """--tokenizer, else the one in the checkpoint directory, else its config's train.tokenizer."""
    from llada_jax.evaluation.evaluate import find_tokenizer

    return find_tokenizer(args.checkpoint, args.tokenizer)


def eval_mesh(choice: str):
    """A data-parallel mesh over every device (`--mesh auto` with several devices), else None."""
    import jax

    if choice == "none" or jax.device_count() == 1:
        return None
    from llada_jax.config import MeshConfig
    from llada_jax.model.sharding import make_mesh

    return make_mesh(MeshConfig(data=-1, fsdp=1, tensor=1))


def trajectory_lines(trajectory, tokenizer, cfg) -> list[str]:
    """One line per model call of one row's generated part (`[calls, G]`): masked positions as ░,
    newlines as ⏎, EOS / end-of-turn and ids past the tokenizer's vocabulary by name."""
    import numpy as np

    from llada_jax.inference.sampling import format_trajectory, trajectory_specials

    specials = trajectory_specials(trajectory, tokenizer.vocab_size, cfg)
    lines = format_trajectory(np.asarray(trajectory), tokenizer.decode, cfg.mask_token_id, specials=specials)
    return [line.replace("\n", NEWLINE_MARK) for line in lines]
