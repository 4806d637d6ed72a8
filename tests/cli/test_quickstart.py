"""The quickstart end to end at toy size: tokenizer, Grain pretraining, SFT from the pretraining run
folder, export, unmasking shown for both directions, resume; the commands it prints run as printed."""

import json
import shlex
import subprocess
import sys

import numpy as np
import pytest

from llada_jax.cli.options import trajectory_lines
from llada_jax.cli.quickstart import DEFAULT_CONFIG, DEMO_DIGITS, DIGITS, fit_schedule, run_quickstart, unmasking_frames
from llada_jax.config import ConfigError, ModelConfig, load_config
from llada_jax.evaluation.tasks import load_task

SMALL = ["model.d_model=64", "model.n_layers=2", "model.mlp_hidden_size=128", "train.batch_size=8",
         "train.seq_len=32", "train.warmup_steps=1", "train.decay_steps=1", "train.checkpoint_every_steps=2",
         "train.log_every=2"]


class _Tok:
    vocab_size = 20

    def decode(self, ids):
        return "".join({10: " a", 11: "b", 12: "\n"}.get(i, "?") for i in ids)


def test_trajectory_lines_and_frames_show_the_unmasking():
    cfg = ModelConfig(vocab_size=32, bos_token_id=1, mask_token_id=3, eos_token_id=2, eot_token_id=4, pad_token_id=2)
    traj = np.array([[3, 3, 3, 3], [10, 3, 3, 3], [10, 11, 12, 3], [10, 11, 12, 2]])  # [calls, G]
    lines = trajectory_lines(traj, _Tok(), cfg)
    assert lines == ["\u2591\u2591\u2591\u2591", " a\u2591\u2591\u2591", " ab\u23ce\u2591", " ab\u23ce<eos>"]
    assert unmasking_frames(lines, frames=3) == ["step   1/4: \u2591\u2591\u2591\u2591", "step   3/4:  ab\u23ce\u2591",
                                                 "step   4/4:  ab\u23ce<eos>"]


def test_short_runs_scale_the_schedule_or_name_the_key():
    settings = ["train.warmup_steps=30", "train.decay_steps=400"]
    extra, note = fit_schedule(DEFAULT_CONFIG, settings, 33)
    assert extra == ["train.steps=33", "train.warmup_steps=2", "train.decay_steps=30"]
    assert "set train.warmup_steps / train.decay_steps" in note
    train = load_config(DEFAULT_CONFIG, [*settings, *extra]).train
    assert train.warmup_steps + train.decay_steps <= train.steps == 33
    assert fit_schedule(DEFAULT_CONFIG, settings, 430) == (["train.steps=430"], None)
    extra, note = fit_schedule(DEFAULT_CONFIG, settings, 33, overrides=["train.warmup_steps=30"])
    assert note is None
    with pytest.raises(ConfigError, match="warmup_steps"):
        load_config(DEFAULT_CONFIG, [*settings, *extra])


def _cli(command: str) -> list[str]:
    argv = shlex.split(command)
    assert argv[0] == "llada-jax"
    return [sys.executable, "-m", "llada_jax.cli", *argv[1:]]


def test_quickstart_trains_exports_and_its_next_commands_run(tmp_path):
    lines = []
    first = run_quickstart(tmp_path, steps=4, sft_steps=4, overrides=SMALL, log=lines.append, progress=False)
    assert first["status"] == ("done", "done") and first["step"] == first["sft_step"] == 4
    assert first["resumed_from"] is None and len(first["losses"]) == 2 and len(first["sft_losses"]) == 2
    assert (tmp_path / "tokenizer.model").is_file() and (tmp_path / "run" / "4").is_dir()
    assert (tmp_path / "sft" / "4").is_dir()
    assert (tmp_path / "export" / "params").is_dir() and (tmp_path / "export" / "tokenizer.model").is_file()
    for run in ("run", "sft"):  # the training curves, as PNG files
        assert (tmp_path / run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    sft_config = load_config(tmp_path / "sft" / "config.yaml")
    assert sft_config.train.init_from == str(tmp_path / "run") and sft_config.train.objective == "sft"
    # SFT rows are as long as BOS + prompt + the sampled length (whatever train.seq_len the overrides set).
    from llada_jax.io.tokenizer import load_tokenizer

    prompt_tokens = 1 + len(load_tokenizer(tmp_path / "tokenizer.model").encode(f"copy: {DEMO_DIGITS}"))
    assert sft_config.train.seq_len == prompt_tokens + sft_config.sample.gen_length != 32

    # The SFT rows never hold a prompt that evaluation (and the printed eval command) scores.
    rows = [json.loads(line) for line in (tmp_path / "sft.jsonl").read_text().splitlines()]
    held_out = {e.prompt for name in ("copy", "reverse")
                for e in load_task(name, num_examples=64, seed=0, min_len=DIGITS, max_len=DIGITS).examples}
    assert rows and not held_out & {r["prompt"] for r in rows}
    assert {r["prompt"].split(":")[0] for r in rows} == {"copy", "reverse"}
    assert all(r["response"] == " ".join(reversed(r["prompt"].split(": ")[1].split()))
               for r in rows if r["prompt"].startswith("reverse"))

    # Both directions are shown unmasking, from all masked to the end.
    assert f"  copy: {DEMO_DIGITS}" in lines and f"  reverse: {DEMO_DIGITS}" in lines
    assert not {f"copy: {DEMO_DIGITS}", f"reverse: {DEMO_DIGITS}"} & {r["prompt"] for r in rows}
    frames = [line.strip() for line in lines if line.startswith("    step")]
    assert len(frames) == 2 * 5 and frames[0].startswith("step   1/8: ") and frames[0].count("\u2591") == 7
    assert set(first["accuracy"]) == {"copy", "reverse"}

    # The printed next commands, run as printed (the `llada-jax` script is this Python's module).
    printed = [line.strip() for line in lines if line.startswith("  llada-jax ")]
    assert printed == first["next_commands"] and [c.split()[1] for c in printed] == ["generate", "eval", "sweep"]
    for command in printed:
        done = subprocess.run(_cli(command), capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{command}\n{done.stderr[-3000:]}"
        if " generate " in command:
            steps = [line for line in done.stdout.splitlines() if line.startswith("step ")]
            assert [line.count("\u2591") for line in steps] == list(range(7, -1, -1)) and "answer: " in done.stdout
        if " eval " in command:
            assert json.loads(done.stdout.splitlines()[0])["num_examples"] == 64
    assert (tmp_path / "sweep").is_dir()

    lines.clear()
    second = run_quickstart(tmp_path, steps=6, sft_steps=4, overrides=SMALL, log=lines.append, progress=False)
    assert second["resumed_from"] == 4 and second["step"] == 6
    assert second["sft_resumed_from"] == 4 and second["sft_step"] == 4
    assert "pretraining: resumed from step 4" in lines
    assert not any("training a sentencepiece tokenizer" in line for line in lines)  # reused
