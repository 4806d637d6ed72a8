"""The quickstart end to end at toy size: tokenizer, Grain pretraining, checkpoints, sampling, resume."""

import numpy as np

from llada_jax.cli.quickstart import render, run_quickstart, unmasking_frames

SMALL = ["model.d_model=64", "model.n_layers=2", "model.mlp_hidden_size=128", "train.batch_size=8",
         "train.seq_len=32", "train.warmup_steps=1", "train.decay_steps=1", "train.checkpoint_every_steps=2",
         "train.log_every=2", "sample.gen_length=16", "sample.steps=8", "sample.block_length=8"]


class _Tok:
    bos_id, eos_id, pad_id = 1, 2, 2

    def id_to_piece(self, i):
        return {10: "\u2581a", 11: "b", 12: "<0x0A>"}.get(i, "?")


def test_render_and_frames_show_the_unmasking():
    assert render([1, 10, 3, 11, 12, 2], _Tok(), mask_id=3) == " a\u2591b\n"
    traj = np.array([[[1, 3, 3, 3]], [[1, 10, 3, 3]], [[1, 10, 11, 12]]])  # [calls, B, L]
    frames = unmasking_frames(traj, _Tok(), mask_id=3, prompt_len=1, frames=3)
    assert frames == ["step   1/3: \u2591\u2591\u2591", "step   2/3:  a\u2591\u2591", "step   3/3:  ab\u23ce"]


def test_quickstart_trains_samples_and_resumes(tmp_path):
    lines = []
    first = run_quickstart(tmp_path, steps=4, overrides=SMALL, log=lines.append, progress=False)
    assert first["status"] == "done" and first["step"] == 4 and first["resumed_from"] is None
    assert (tmp_path / "tokenizer.model").is_file() and (tmp_path / "run" / "4").is_dir()
    assert any(line.startswith("  step") for line in lines) and lines[-1].startswith("result: The for statement")
    assert isinstance(first["sample"], str) and len(first["losses"]) == 2

    lines.clear()
    second = run_quickstart(tmp_path, steps=6, overrides=SMALL, log=lines.append, progress=False)
    assert second["resumed_from"] == 4 and second["step"] == 6
    assert "resumed from step 4" in lines
    assert not any("training a sentencepiece tokenizer" in line for line in lines)  # reused
