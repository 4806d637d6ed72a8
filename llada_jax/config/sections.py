"""The run's configuration: the frozen sections (model, sample, train, mesh, data, vrpo, grpo) and YAML loading.

A YAML file holds one mapping per section (`model:`, `sample:`, ... as registered in
`SECTIONS`); a file without sections is read as a model config. Overrides are dotted
`section.key=value` strings (a bare model key is accepted), with values parsed as YAML
scalars. Sections missing from the file take their defaults.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from llada_jax.config.base import NONE_WORDS, ConfigBase, ConfigError, did_you_mean

__all__ = ["ConfigError", "ModelConfig", "SampleConfig", "TrainConfig", "MeshConfig", "DataConfig", "VrpoConfig", "GrpoConfig", "Config",
           "Section", "SECTIONS", "SAMPLE_FIELDS", "load_config", "config_from_dict", "section_of"]


class Section(ConfigBase):
    """A config section registered in `SECTIONS`: it can load itself from a YAML file."""

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: Sequence[str] = ()):
        """Load this section of a YAML file (see `load_config`)."""
        return getattr(load_config(path, overrides), section_of(cls))


DTYPES = ("float32", "bfloat16", "float16")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
ATTENTION_IMPLS = ("xla", "splash", "cudnn", "auto")


@dataclasses.dataclass(frozen=True)
class ModelConfig(Section):
    """The mask predictor's architecture (docs/semantics.md, The model) and how it is computed."""

    vocab_size: int = 126464
    d_model: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int = 32
    mlp_hidden_size: int = 12288
    rope_theta: float = 500000.0
    rms_norm_eps: float = 1e-5
    max_seq_len: int = 4096
    weight_tying: bool = False
    mask_token_id: int = 126336
    bos_token_id: int = 126080
    eos_token_id: int = 126081
    eot_token_id: int = 126348
    pad_token_id: int = 126081
    dtype: str = "bfloat16"          # compute dtype
    param_dtype: str = "float32"     # storage dtype of the parameters
    remat_policy: str = "none"       # one of REMAT_POLICIES
    attention_impl: str = "xla"      # one of ATTENTION_IMPLS (model/attention.py)
    loss_chunk_size: int = 512       # positions per output-head chunk in the loss / likelihood (logits held at a time)
    init_std: float = 0.02

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def validate(self, where: str | None = None) -> None:
        w = where or "ModelConfig"
        self.check_positive(w, "vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "mlp_hidden_size",
                            "max_seq_len", "loss_chunk_size")
        if self.d_model % self.n_heads:
            raise ConfigError(f"{w}.d_model: {self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.head_dim % 2:
            raise ConfigError(f"{w}.n_heads: head_dim d_model/n_heads={self.head_dim} must be even for rotary embeddings")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(f"{w}.n_heads: {self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        for name in ("mask_token_id", "bos_token_id", "eos_token_id", "eot_token_id", "pad_token_id"):
            v = getattr(self, name)
            if not 0 <= v < self.vocab_size:
                raise ConfigError(f"{w}.{name}: {v} is outside the vocabulary [0, {self.vocab_size})")
        if self.rope_theta <= 0 or self.rms_norm_eps <= 0:
            raise ConfigError(f"{w}: rope_theta and rms_norm_eps must be positive")
        for name, options in (("dtype", DTYPES), ("param_dtype", DTYPES), ("remat_policy", REMAT_POLICIES),
                              ("attention_impl", ATTENTION_IMPLS)):
            self.check_choice(w, name, options)

    def num_params(self) -> int:
        """Parameter count (embeddings and head included)."""
        d, m, L = self.d_model, self.mlp_hidden_size, self.n_layers
        kv = self.n_kv_heads * self.head_dim
        per_layer = 2 * d + d * d * 2 + 2 * d * kv + 3 * d * m
        head = 0 if self.weight_tying else self.vocab_size * d
        return self.vocab_size * d + L * per_layer + d + head

    def flops_per_token(self, seq_len: int, backward: bool = False) -> float:
        """Matmul FLOPs per token of a forward (x3 with the backward), full bidirectional attention."""
        d, m, L = self.d_model, self.mlp_hidden_size, self.n_layers
        kv = self.n_kv_heads * self.head_dim
        dense = 2 * L * (d * d * 2 + 2 * d * kv + 3 * d * m) + 2 * d * self.vocab_size
        attention = 2 * L * 2 * seq_len * d  # q.k and p.v over every key: no causal halving
        total = dense + attention
        return float(total * (3 if backward else 1))


REMASKING = ("low_confidence", "random", "margin", "entropy")
THRESHOLD_REMASKING = ("low_confidence", "margin")
CACHES = (None, "prefix", "dual")  # None: no cache ("none" is read as None)


@dataclasses.dataclass(frozen=True)
class SampleConfig(Section):
    """Default sampler settings (docs/semantics.md, Sampling); the CLI and sweeps start from these."""

    gen_length: int = 128
    steps: int = 128
    block_length: int = 32
    temperature: float = 0.0
    cfg_scale: float = 0.0
    remasking: str = "low_confidence"
    logits_eos_inf: bool = False
    confidence_eos_eot_inf: bool = False
    threshold: float | None = None
    cache: str | None = None

    def __post_init__(self):
        if isinstance(self.cache, str) and self.cache.strip().lower() in NONE_WORDS:
            object.__setattr__(self, "cache", None)  # one spelling of "no cache" for every consumer

    def validate(self, where: str | None = None) -> None:
        w = where or "SampleConfig"
        self.check_positive(w, "gen_length", "steps", "block_length")
        if self.gen_length % self.block_length:
            raise ConfigError(f"{w}.gen_length: {self.gen_length} is not divisible by block_length={self.block_length}")
        blocks = self.gen_length // self.block_length
        if self.steps % blocks:
            raise ConfigError(f"{w}.steps: {self.steps} is not divisible by the number of blocks {blocks}")
        if self.temperature < 0 or self.cfg_scale < 0:
            raise ConfigError(f"{w}: temperature and cfg_scale must be >= 0")
        if self.threshold is not None and not 0.0 < self.threshold <= 1.0:
            raise ConfigError(f"{w}.threshold: {self.threshold} is outside (0, 1]")
        self.check_choice(w, "remasking", REMASKING)
        if self.threshold is not None and self.remasking not in THRESHOLD_REMASKING:
            raise ConfigError(f"{w}.threshold: needs remasking in {', '.join(THRESHOLD_REMASKING)} (a confidence "
                              f"in [0, 1]), got '{self.remasking}'")
        if self.cache is not None:
            self.check_choice(w, "cache", ("none", "prefix", "dual"))


# The sampler's keyword arguments, in order (`generate(..., **sample.to_dict())`).
SAMPLE_FIELDS = tuple(f.name for f in dataclasses.fields(SampleConfig))


OBJECTIVES = ("pretrain", "sft", "vrpo", "grpo")
REFERENCE_OBJECTIVES = ("vrpo", "grpo")  # post-training: a frozen reference model, the starting point (train.init_from)
DECAY_SHAPES = ("linear", "cosine", "sqrt")


@dataclasses.dataclass(frozen=True)
class TrainConfig(Section):
    """One training run: objective, batch, AdamW with a warmup-stable-decay schedule, checkpoints, logs.

    The learning rate rises linearly over `warmup_steps`, stays at `learning_rate` for the stable
    phase (`steps - warmup_steps - decay_steps`), then falls to `final_learning_rate` over
    `decay_steps` with `decay_shape`. `batch_size` is global (all hosts); `grad_accum` splits it
    into that many sequential microbatches.
    """

    objective: str = "pretrain"          # one of OBJECTIVES
    steps: int = 1000
    batch_size: int = 8
    seq_len: int = 256
    grad_accum: int = 1
    learning_rate: float = 4e-4
    final_learning_rate: float = 4e-5
    warmup_steps: int = 100
    decay_steps: int = 100
    decay_shape: str = "linear"          # one of DECAY_SHAPES
    adam_b1: float = 0.9
    adam_b2: float = 0.95
    adam_eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float = 1.0               # global-norm clip; 0 disables
    noise_eps: float = 1e-3              # p_mask = (1 - eps) t + eps
    random_length_prob: float = 0.01     # pretraining batches cut to U{1..L} (docs/semantics.md, Training objectives)
    seed: int = 0
    init_from: str | None = None         # run folder (or RUN@STEP), params export or HF dir to start from
    tokenizer: str | None = None         # sentencepiece .model, tokenizer.json or a directory with one
    checkpoint_dir: str = "runs/train"
    checkpoint_every_steps: int = 500    # 0: never by step count
    checkpoint_every_minutes: float = 0.0  # 0: never by wall time
    max_to_keep: int = 3
    async_checkpointing: bool = True
    log_every: int = 10
    tensorboard: bool = True
    max_bad_steps: int = 10              # consecutive non-finite steps before the run stops
    peak_tflops: float | None = None     # per-device peak for MFU; None: look up the device table
    eval_every: int = 0                  # validation every N steps (and at the last); 0: never
    eval_batches: int = 8                # global batches of `batch_size` rows in the fixed validation set
    profile_steps: tuple[int, ...] | None = None  # [start, stop]: trace optimizer steps start..stop (1-based)
    profile_on_demand_steps: int = 3     # steps traced after SIGUSR1 or a touched RUN/PROFILE file
    input_wait_warning: float = 0.1      # warn when input wait exceeds this share of step time; 0: never

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    def validate(self, where: str | None = None) -> None:
        w = where or "TrainConfig"
        self.check_choice(w, "objective", OBJECTIVES)
        self.check_choice(w, "decay_shape", DECAY_SHAPES)
        self.check_positive(w, "steps", "batch_size", "seq_len", "grad_accum", "log_every", "max_to_keep",
                            "max_bad_steps")
        self.check_nonnegative(w, "warmup_steps", "decay_steps", "checkpoint_every_steps", "checkpoint_every_minutes",
                               "weight_decay", "grad_clip", "learning_rate", "final_learning_rate")
        if self.warmup_steps + self.decay_steps > self.steps:
            raise ConfigError(f"{w}: warmup_steps + decay_steps = {self.warmup_steps + self.decay_steps} "
                              f"exceeds steps={self.steps}")
        if self.batch_size % self.grad_accum:
            raise ConfigError(f"{w}.batch_size: {self.batch_size} is not divisible by grad_accum={self.grad_accum}")
        if not 0.0 <= self.random_length_prob <= 1.0 or not 0.0 < self.noise_eps < 1.0:
            raise ConfigError(f"{w}: random_length_prob must be in [0, 1] and noise_eps in (0, 1)")
        if self.peak_tflops is not None:
            self.check_positive(w, "peak_tflops")
        self.check_nonnegative(w, "eval_every", "input_wait_warning")
        self.check_positive(w, "eval_batches", "profile_on_demand_steps")
        if self.profile_steps is not None:
            p = self.profile_steps
            if len(p) != 2 or not 1 <= p[0] <= p[1]:
                raise ConfigError(f"{w}.profile_steps: expected [start, stop] with 1 <= start <= stop, got {list(p)}")
        if self.objective == "grpo" and self.eval_every > 0:
            raise ConfigError(f"{w}.eval_every: objective grpo has no validation loss in the loop; score held-out "
                              f"prompts with `llada-jax eval` on the run instead")
        if self.objective in REFERENCE_OBJECTIVES and not self.init_from:
            raise ConfigError(f"{w}.init_from: objective {self.objective} needs the starting model (an SFT run folder "
                              f"or RUN@STEP, a params export or a HF dir), which is also its frozen reference")


VRPO_ALLOCATIONS = ("optimal", "one_timestep")


@dataclasses.dataclass(frozen=True)
class VrpoConfig(Section):
    """VRPO (LLaDA 1.5): DPO whose log-likelihoods are ELBO estimates, with the paper's variance reduction.

    Each response's ELBO is the mean of `n_samples` SFT-style samples (t ~ U(0, 1), response
    positions masked with p_mask = (1 - eps) t + eps, -sum masked CE / p_mask). `allocation`:
    "optimal" draws n timesteps with one mask each (the paper's optimal allocation), "one_timestep"
    one timestep with n masks. `antithetic`: policy and reference score the same timesteps and
    masks for the same response (false: independent draws). `coupled`: the chosen and rejected
    responses of a pair share their timesteps and masks too. `sft_weight`: the chosen responses'
    SFT loss (-ELBO / answer length) added with this weight, against DPO's likelihood displacement.
    """

    beta: float = 0.1               # DPO temperature on the ELBO differences
    n_samples: int = 8              # ELBO samples per response (the paper's budget n)
    allocation: str = "optimal"     # one of VRPO_ALLOCATIONS
    antithetic: bool = True
    coupled: bool = False           # a pair's chosen and rejected responses share timesteps and masks
    sft_weight: float = 0.0         # weight of the chosen responses' SFT loss added to the DPO loss (0: none)

    def validate(self, where: str | None = None) -> None:
        w = where or "VrpoConfig"
        self.check_positive(w, "beta", "n_samples")
        if not self.sft_weight >= 0:
            raise ConfigError(f"{w}.sft_weight: {self.sft_weight} must be >= 0")
        self.check_choice(w, "allocation", VRPO_ALLOCATIONS)


GRPO_REWARDS = ("exact", "contains", "numeric")  # or "module:function(prompt, completion, answer) -> float"


@dataclasses.dataclass(frozen=True)
class GrpoConfig(Section):
    """diffu-GRPO (d1): G rollouts per prompt, group-normalised rewards, one-step log-probabilities.

    Rollouts use the `sample:` section's sampler settings (gen_length, steps, block_length,
    remasking, ...) at this section's `temperature`; a row is the prompt left-padded to
    `train.seq_len - sample.gen_length` positions, then the completion. `train.batch_size` counts
    completions (batch_size / G prompts a rollout). Each rollout batch serves `mu` optimizer steps.
    """

    num_generations: int = 4        # G completions per prompt
    beta: float = 0.04              # weight of the KL term to the reference
    clip_eps: float = 0.2           # ratio clipped to [1 - eps, 1 + eps]
    p_mask: float = 0.15            # prompt masking rate of the one-step log-probability estimate
    mu: int = 2                     # inner gradient steps per rollout batch
    reward: str = "exact"           # one of GRPO_REWARDS or "module:function"
    temperature: float = 0.9        # rollout sampling temperature
    scale_advantages: bool = False  # also divide by the group's reward std + 1e-4 (GRPO); d1: mean-centred only

    def validate(self, where: str | None = None) -> None:
        w = where or "GrpoConfig"
        self.check_positive(w, "num_generations", "mu")
        self.check_nonnegative(w, "beta", "temperature")
        if self.num_generations < 2:
            raise ConfigError(f"{w}.num_generations: group-normalised advantages need at least 2, "
                              f"got {self.num_generations}")
        if not 0.0 < self.clip_eps < 1.0:
            raise ConfigError(f"{w}.clip_eps: must be in (0, 1), got {self.clip_eps}")
        if not 0.0 <= self.p_mask < 1.0:
            raise ConfigError(f"{w}.p_mask: must be in [0, 1), got {self.p_mask}")
        if self.reward not in GRPO_REWARDS and ":" not in self.reward:
            raise ConfigError(f"{w}.reward: '{self.reward}' is not one of {', '.join(GRPO_REWARDS)} nor a "
                              f"'module:function'{did_you_mean(self.reward, GRPO_REWARDS)}")


@dataclasses.dataclass(frozen=True)
class MeshConfig(Section):
    """Device mesh sizes per slice (ICI) and across slices (DCN); one -1 per group fills the rest."""

    data: int = 1
    fsdp: int = -1
    tensor: int = 1
    dcn_data: int = 1
    dcn_fsdp: int = 1
    dcn_tensor: int = 1

    def validate(self, where: str | None = None) -> None:
        w = where or "MeshConfig"
        for group in (("data", "fsdp", "tensor"), ("dcn_data", "dcn_fsdp", "dcn_tensor")):
            values = [getattr(self, n) for n in group]
            for n, v in zip(group, values):
                if v == 0 or v < -1:
                    raise ConfigError(f"{w}.{n}: must be positive or -1 (fill), got {v}")
            if values.count(-1) > 1:
                raise ConfigError(f"{w}: at most one of {', '.join(group)} may be -1")


DATA_FORMATS = ("auto", "text", "jsonl", "arrayrecord", "parquet")


@dataclasses.dataclass(frozen=True)
class DataConfig(Section):
    """Training data: where documents/rows come from and how they are read (`llada_jax.data`)."""

    files: tuple[str, ...] = ()       # files, directories or glob patterns
    format: str = "auto"              # one of DATA_FORMATS; auto: by extension (.jsonl, .arrayrecord, .parquet, else text)
    text_unit: str = "file"           # text files: a document per "file" or per blank-line "paragraph"
    text_field: str = "text"          # JSONL (and JSON ArrayRecord) field / Parquet column that holds a document
    record_format: str = "text"       # ArrayRecord records: utf-8 "text" or "json" objects
    shuffle: bool = True              # shuffle documents (SFT: rows) by seed, differently each epoch
    shuffle_window: int = 0           # pretraining: also shuffle packed rows within windows of N (0: off)
    num_epochs: int | None = None     # None: repeat forever
    worker_count: int = 0             # Grain worker processes (mp_prefetch); 0: in this process
    worker_buffer_size: int = 2       # batches buffered per worker
    read_threads: int = 2             # threads reading and tokenizing documents in each process
    prefetch_buffer_size: int = 64    # documents buffered by the reading threads
    chat_template: str = "llada"      # SFT: "llada", "plain", or a format string with {role} and {content}
    generation_prompt: str = ""       # custom chat template: text after the prompt's messages
    response_suffix: str = ""         # custom chat template: text after the response, before EOS
    prompt_field: str = "prompt"      # SFT JSONL fields / Parquet columns
    response_field: str = "response"
    messages_field: str = "messages"
    chosen_field: str = "chosen"      # preference rows (VRPO): the preferred and the dispreferred response
    rejected_field: str = "rejected"
    answer_field: str = "answer"      # prompt rows (GRPO): the reference answer the reward scores against
    too_long: str = "drop"            # SFT rows longer than seq_len: "drop" or "truncate" (both counted)
    on_error: str = "raise"           # malformed rows: "raise" (with file:line) or "skip" (counted)
    eval_files: tuple[str, ...] = ()  # validation data (same formats as `files`)
    eval_fraction: float = 0.0        # or: hold out this share of the documents (SFT: rows) of `files`

    def validate(self, where: str | None = None) -> None:
        w = where or "DataConfig"
        for name, options in (("format", DATA_FORMATS), ("text_unit", ("file", "paragraph")),
                              ("record_format", ("text", "json")), ("too_long", ("drop", "truncate")),
                              ("on_error", ("raise", "skip"))):
            self.check_choice(w, name, options)
        if self.num_epochs is not None and self.num_epochs <= 0:
            raise ConfigError(f"{w}.num_epochs: must be positive or null (repeat forever), got {self.num_epochs}")
        self.check_nonnegative(w, "shuffle_window", "worker_count", "read_threads")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ConfigError(f"{w}.eval_fraction: must be in [0, 1), got {self.eval_fraction}")
        if self.eval_fraction > 0 and self.eval_files:
            raise ConfigError(f"{w}: set eval_files or eval_fraction, not both")
        self.check_positive(w, "worker_buffer_size", "prefetch_buffer_size")
        if self.chat_template not in ("llada", "plain") and "{content}" not in self.chat_template:
            raise ConfigError(f"{w}.chat_template: expected 'llada', 'plain' or a format string containing "
                              f"{{content}} (and optionally {{role}}), got {self.chat_template!r}")
        if self.chat_template not in ("llada", "plain"):
            try:
                self.chat_template.format(role="user", content="x")
            except (KeyError, IndexError, ValueError) as e:
                raise ConfigError(f"{w}.chat_template: bad format string {self.chat_template!r} ({e!r}); "
                                  f"only {{role}} and {{content}} are filled, write literal braces as {{{{ }}}}") from None


# Section name -> dataclass: the sections a config file may hold.
SECTIONS: dict[str, type] = {"model": ModelConfig, "sample": SampleConfig, "train": TrainConfig, "mesh": MeshConfig,
                              "data": DataConfig, "vrpo": VrpoConfig, "grpo": GrpoConfig}


def section_of(cls: type) -> str:
    """The section name under which `cls` is registered in `SECTIONS`."""
    for name, c in SECTIONS.items():
        if c is cls:
            return name
    raise ConfigError(f"{cls.__name__} is not a registered config section")


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override '{item}': expected section.key=value")
    key, raw = item.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override '{item}': empty key")
    value = yaml.safe_load(raw) if raw.strip() else None
    return parts, value


def parse_yaml_text(text: str, where: str) -> Any:
    """`yaml.safe_load(text)`; a syntax error is a ConfigError naming `where`, line and column."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        at = f" line {mark.line + 1}, column {mark.column + 1}:" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{where}:{at} invalid YAML ({problem})") from None


def _read_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not a YAML config (byte {e.start} is not UTF-8 text)") from None
    loaded = parse_yaml_text(text, str(p)) or {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level")
    # Sectioned when any top-level value is a mapping; a flat file is a model config.
    sectioned = any(k in SECTIONS or isinstance(v, dict) for k, v in loaded.items())
    return loaded if sectioned else {"model": loaded}


def _build(data: Mapping[str, Any], overrides: Sequence[str], where: str, prefix: str) -> "Config":
    """Check the section names, apply the overrides, and build every section (defaults where absent)."""
    for k, v in data.items():
        if k not in SECTIONS:
            raise ConfigError(f"{where}: unknown section '{k}'{did_you_mean(k, list(SECTIONS))}")
        if v is not None and not isinstance(v, Mapping):
            raise ConfigError(f"{where}: section '{k}' must be a mapping")
    sections = {k: dict(v or {}) for k, v in data.items()}
    for item in overrides:
        parts, value = _parse_override(item)
        if parts[0] not in SECTIONS:
            # A bare key is a model key when it names one: `n_layers=2`.
            if len(parts) == 1 and parts[0] in {f.name for f in dataclasses.fields(ModelConfig)}:
                parts = ["model"] + parts
            else:
                raise ConfigError(
                    f"override '{item}': unknown section '{parts[0]}'{did_you_mean(parts[0], list(SECTIONS))}"
                )
        if len(parts) != 2:
            raise ConfigError(f"override '{item}': expected section.key=value")
        sections.setdefault(parts[0], {})[parts[1]] = value
    return Config(tuple((name, cls.from_dict(sections.get(name), where=f"{prefix}{name}"))
                        for name, cls in SECTIONS.items()))


@dataclasses.dataclass(frozen=True)
class Config:
    """All sections of a run; sections missing from the file take their defaults."""

    sections: tuple[tuple[str, Any], ...]

    def __getattr__(self, name: str):
        for k, v in object.__getattribute__(self, "sections"):
            if k == name:
                return v
        raise AttributeError(f"config has no section '{name}'{did_you_mean(name, list(SECTIONS))}")

    def to_dict(self) -> dict:
        return {k: v.to_dict() for k, v in self.sections}

    def replace(self, **sections) -> "Config":
        items = dict(self.sections)
        for k, v in sections.items():
            if k not in SECTIONS:
                raise ConfigError(f"unknown section '{k}'")
            items[k] = v
        return Config(tuple(items.items()))


def config_from_dict(data: Mapping[str, Any], overrides: Sequence[str] = ()) -> Config:
    """Build a full `Config` from a dict of sections (as written by `Config.to_dict`)."""
    return _build(data, overrides, "config", "")


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Load a YAML config (sections as in `SECTIONS`) and apply dotted `key=value` overrides."""
    data = _read_yaml(path) if path is not None else {}
    where = str(path) if path else "config"
    return _build(data, overrides, where, f"{where}:")
