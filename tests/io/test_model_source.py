"""Model sources: a training run folder (latest step or RUN@STEP), a params export and a HF directory
load the same params the run saved; config, sampler settings and tokenizer come from the run's
config as from an export's; paths that are none of the three, and missing steps, fail in one line."""


import jax
import numpy as np
import pytest

from llada_jax.config import MeshConfig, SampleConfig, load_config
from llada_jax.io.checkpoint import save_params
from llada_jax.io.paths import as_path
from llada_jax.model.sharding import make_mesh, param_shardings
from llada_jax.io.run_checkpoint import TrainCheckpointer
from llada_jax.training.loop import load_initial_params
from llada_jax.io.model_source import (load_model, resolve_source, source_model_config, source_sample,
                                             source_tokenizer, split_step)
from llada_jax.training.step import init_state

from conftest import REPO


def _config(run_dir, tokenizer="", *extra):
    return load_config(REPO / "configs" / "tiny.yaml", [*extra, 
        "train.steps=4", "train.warmup_steps=1", "train.decay_steps=1", "train.batch_size=8", "train.seq_len=16",
        "train.tensorboard=false", f"train.checkpoint_dir={run_dir}", f"train.tokenizer={tokenizer}",
        "sample.gen_length=24", "sample.steps=12", "sample.block_length=8"])


def _host(tree):
    return jax.tree.map(np.asarray, jax.device_get(tree))


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_params):
    """A run folder with steps 2 and 4 (params P and 2P) whose config names a tokenizer, plus an export."""
    from llada_jax.io.tokenizer import train_tokenizer

    d = tmp_path_factory.mktemp("source")
    (d / "corpus.txt").write_text("\n".join(f"line {i} of the little corpus, {i * 7 % 13} words" for i in range(300)))
    tok = train_tokenizer([d / "corpus.txt"], d / "tok", 300)
    config = _config(d / "run", tok)
    mesh = make_mesh(MeshConfig(), jax.devices()[:1])
    ckpt = TrainCheckpointer(d / "run", config, async_save=False)
    with jax.set_mesh(mesh):
        for step, scale in ((2, 1.0), (4, 2.0)):
            params = jax.tree.map(lambda a: a * scale, tiny_params)
            ckpt.save(step, init_state(config, mesh, params))
    ckpt.close()
    save_params(d / "export", config, jax.tree.map(lambda a: a * 3.0, tiny_params))
    return d, config, tok


def test_split_step():
    assert split_step("runs/q/run@300") == (as_path("runs/q/run"), 300)
    assert split_step("runs/q/run")[1] is None and split_step("a@b")[1] is None


def test_run_folder_latest_and_named_step(run, tiny_params):
    d, config, _ = run
    latest = resolve_source(d / "run")
    assert (latest.kind, latest.step) == ("run", 4)
    assert resolve_source(f"{d / 'run'}@2").step == 2
    cfg, params = load_model(d / "run")
    assert cfg == config.model
    for got, want in zip(jax.tree.leaves(_host(params)), jax.tree.leaves(_host(tiny_params))):
        np.testing.assert_array_equal(got, 2.0 * want)
    _, params2 = load_model(f"{d / 'run'}@2")
    for got, want in zip(jax.tree.leaves(_host(params2)), jax.tree.leaves(_host(tiny_params))):
        np.testing.assert_array_equal(got, want)


def test_run_params_land_on_the_given_shardings(run, tiny_cfg):
    d, _, _ = run
    mesh = make_mesh(MeshConfig(data=1, fsdp=2, tensor=1), jax.devices()[:2])
    shardings = param_shardings(tiny_cfg, mesh)
    _, params = load_model(d / "run", shardings=shardings, param_dtype="bfloat16")
    for p, s in zip(jax.tree.leaves(params), jax.tree.leaves(shardings)):
        assert p.sharding == s and p.dtype == np.dtype("bfloat16")


def test_export_and_hf_dir(run, tiny_params, tmp_path):
    from llada_jax.io.hf import save_hf_checkpoint

    d, config, _ = run
    assert resolve_source(d / "export").kind == "export"
    _, params = load_model(d / "export")
    np.testing.assert_array_equal(_host(params)["ff_out"], 3.0 * np.asarray(tiny_params["ff_out"]))
    save_hf_checkpoint(tmp_path / "hf", config.model, tiny_params)
    assert resolve_source(tmp_path / "hf").kind == "hf"
    assert source_model_config(tmp_path / "hf").d_model == config.model.d_model
    assert source_sample(tmp_path / "hf") == SampleConfig()


def test_run_config_gives_sampler_and_tokenizer_like_an_export(run):
    d, config, tok = run
    assert source_sample(d / "run") == config.sample == source_sample(d / "export")
    assert source_sample(d / "run").gen_length == 24
    for where in (d / "run", f"{d / 'run'}@2", d / "export"):
        assert source_tokenizer(where).encode("line 3 of") == source_tokenizer(d, tok).encode("line 3 of")
    assert source_model_config(f"{d / 'run'}@2") == config.model


def test_init_from_a_run_step(run, tiny_params):
    d, config, _ = run
    mesh = make_mesh(MeshConfig(), jax.devices()[:2])
    params = load_initial_params(_config(d / "sft", "", f"train.init_from={d / 'run'}@2"), mesh)
    np.testing.assert_array_equal(_host(params)["ff_out"], np.asarray(tiny_params["ff_out"]))


def test_one_line_errors(run, tmp_path):
    d, _, _ = run
    with pytest.raises(FileNotFoundError, match=r"no checkpoint step 3; steps saved: 2, 4$"):
        resolve_source(f"{d / 'run'}@3")
    with pytest.raises(ValueError, match="@2 names a training step, but .* is a params export"):
        resolve_source(f"{d / 'export'}@2")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="not a model checkpoint; expected a training run folder"):
        resolve_source(tmp_path / "junk")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_source(tmp_path / "missing")
    (tmp_path / "empty_run").mkdir()
    (tmp_path / "empty_run" / "config.yaml").write_text((d / "run" / "config.yaml").read_text())
    (tmp_path / "empty_run" / "3.orbax-checkpoint-tmp-1").mkdir()
    with pytest.raises(FileNotFoundError, match="without a finished checkpoint step"):
        resolve_source(tmp_path / "empty_run")
