"""Tokenizers: sentencepiece (train and load) and an adapter for a Hugging Face `tokenizer.json`.

Both expose one small interface, so data pipelines, samplers and the CLI work the same with the
project's own sentencepiece models and with LLaDA-8B's BPE tokenizer:
`vocab_size`, `bos_id`, `eos_id`, `mask_id`, `eot_id`, `pad_id`, `header_start_id`,
`header_end_id`, `encode(text)` (no BOS/EOS added), `decode(ids)` (special tokens dropped),
`id_to_piece(i)` and `chat_prompt(messages)` (LLaDA's chat template, docs/semantics.md (The model)).

Special tokens are found by their strings, never by hard-coded ids. This module does not
import grain (the GPU image has none).
"""

from __future__ import annotations

import io
import os
import re
from typing import Iterable, Mapping, Sequence

from llada_jax.io.paths import as_path, is_file, is_remote, path_str, write_bytes

# Special-token strings of LLaDA's chat format; header/EoT strings are shared by both backends.
MASK_TOKEN = "<|mdm_mask|>"
EOT_TOKEN = "<|eot_id|>"
HEADER_START_TOKEN = "<|start_header_id|>"
HEADER_END_TOKEN = "<|end_header_id|>"
# LLaDA-8B's tokenizer.json names BOS/EOS like this; sentencepiece uses <s> / </s>.
HF_BOS_TOKEN = "<|startoftext|>"
HF_EOS_TOKEN = "<|endoftext|>"

# Ids reserved by `train_tokenizer` (and used by configs/tiny.yaml).
RESERVED_IDS = {"unk": 0, "bos": 1, "eos": 2, "mask": 3, "eot": 4, "header_start": 5, "header_end": 6}
_USER_SYMBOLS = (MASK_TOKEN, EOT_TOKEN, HEADER_START_TOKEN, HEADER_END_TOKEN)  # ids 3..6, in order


def chat_template_text(messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = True) -> str:
    """LLaDA's chat template as text, without the leading BOS (which is added as an id)."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise ValueError(f"chat messages must be a list of {{'role', 'content'}} dicts, got {type(messages).__name__}")
    parts = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ValueError(f"chat message {i} must be a dict with string 'role' and 'content', got {m!r}")
        parts.append(f"{HEADER_START_TOKEN}{m['role']}{HEADER_END_TOKEN}\n\n{m['content'].strip()}{EOT_TOKEN}")
    if add_generation_prompt:
        parts.append(f"{HEADER_START_TOKEN}assistant{HEADER_END_TOKEN}\n\n")
    return "".join(parts)


class Tokenizer:
    """The shared interface; subclasses set the ids and implement `_encode`, `_decode`, `id_to_piece`."""

    vocab_size: int
    bos_id: int
    eos_id: int
    pad_id: int
    mask_id: int
    eot_id: int
    header_start_id: int
    header_end_id: int

    @property
    def special_ids(self) -> frozenset[int]:
        """Ids that `decode` drops: BOS, EOS/pad, mask, end-of-turn and the header markers."""
        return frozenset((self.bos_id, self.eos_id, self.pad_id, self.mask_id, self.eot_id,
                          self.header_start_id, self.header_end_id))

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special-token strings in it map to their ids; no BOS/EOS added."""
        if not isinstance(text, str):
            raise ValueError(f"encode expects a str, got {type(text).__name__}")
        return self._encode(text)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids` with the special tokens dropped.

        Ids past the tokenizer's vocabulary are dropped too: a model's embedding may be larger
        than its tokenizer (LLaDA-8B's is), and an untrained model can produce them.
        """
        specials = self.special_ids
        ids = [int(i) for i in ids]
        return self._decode([i for i in ids if i not in specials and 0 <= i < self.vocab_size])

    def chat_prompt(self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = True) -> list[int]:
        """BOS + LLaDA's chat template of `messages` (+ the assistant header) as ids."""
        return [self.bos_id] + self.encode(chat_template_text(messages, add_generation_prompt))

    def _encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def _decode(self, ids: list[int]) -> str:
        raise NotImplementedError

    def id_to_piece(self, i: int) -> str:
        raise NotImplementedError

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(vocab_size={self.vocab_size}, bos={self.bos_id}, eos={self.eos_id}, "
                f"mask={self.mask_id}, eot={self.eot_id}, pad={self.pad_id})")


class SentencePieceTokenizer(Tokenizer):
    """A sentencepiece model; BOS/EOS are its control symbols, the chat/mask tokens user symbols."""

    def __init__(self, model: str | os.PathLike | bytes):
        import sentencepiece as spm

        if isinstance(model, bytes):
            self._proto = model
        else:
            path = as_path(model)
            if not is_file(path):
                raise FileNotFoundError(f"sentencepiece model {path_str(path)} does not exist")
            self._proto = path.read_bytes()
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(self._proto)
        except RuntimeError:  # sentencepiece's parse error names neither the file nor the cause
            where = "sentencepiece model" if isinstance(model, bytes) else path_str(path)
            raise ValueError(f"{where}: not a sentencepiece model (the file does not parse as one)") from None
        self.vocab_size = int(self._sp.vocab_size())
        self.bos_id = self._control_id(self._sp.bos_id(), "BOS")
        self.eos_id = self._control_id(self._sp.eos_id(), "EOS")
        pad = self._sp.pad_id()
        self.pad_id = int(pad) if pad >= 0 else self.eos_id
        self.mask_id = self._lookup(MASK_TOKEN)
        self.eot_id = self._lookup(EOT_TOKEN)
        self.header_start_id = self._lookup(HEADER_START_TOKEN)
        self.header_end_id = self._lookup(HEADER_END_TOKEN)

    @staticmethod
    def _control_id(i: int, name: str) -> int:
        if i < 0:
            raise ValueError(f"sentencepiece model has no {name} token (train it with train_tokenizer)")
        return int(i)

    def _lookup(self, piece: str) -> int:
        i = self._sp.piece_to_id(piece)
        if i == self._sp.unk_id() and piece != self._sp.id_to_piece(i):
            raise ValueError(f"sentencepiece model has no '{piece}' token (train it with train_tokenizer)")
        return int(i)

    def _encode(self, text: str) -> list[int]:
        return list(self._sp.encode(text))

    def _decode(self, ids: list[int]) -> str:
        return self._sp.decode(ids)

    def id_to_piece(self, i: int) -> str:
        return self._sp.id_to_piece(int(i))

    def __getstate__(self):  # picklable for Grain worker processes
        return {"proto": self._proto}

    def __setstate__(self, state):
        self.__init__(state["proto"])


class HFTokenizer(Tokenizer):
    """A Hugging Face `tokenizer.json` (the `tokenizers` library, extra `hf`), e.g. LLaDA-8B's.

    Special ids are looked up by their token strings (LLaDA's by default); `pad` defaults to EOS.
    """

    def __init__(self, path: str | os.PathLike, *, bos: str = HF_BOS_TOKEN, eos: str = HF_EOS_TOKEN,
                 pad: str | None = None, mask: str = MASK_TOKEN, eot: str = EOT_TOKEN,
                 header_start: str = HEADER_START_TOKEN, header_end: str = HEADER_END_TOKEN):
        try:
            from tokenizers import Tokenizer as _HF
        except ImportError as e:  # pragma: no cover - depends on the install
            raise ImportError("HF tokenizer.json support needs the 'tokenizers' package: "
                              "pip install 'llada-jax[hf]'") from e
        self._path = as_path(path)
        if not is_file(self._path):
            raise FileNotFoundError(f"tokenizer file {path_str(self._path)} does not exist")
        self._names = dict(bos=bos, eos=eos, pad=pad, mask=mask, eot=eot, header_start=header_start,
                           header_end=header_end)
        self._tok = _HF.from_str(self._path.read_text())
        self.vocab_size = int(self._tok.get_vocab_size(with_added_tokens=True))
        self.bos_id = self._lookup(bos, "BOS")
        self.eos_id = self._lookup(eos, "EOS")
        self.pad_id = self._lookup(pad, "pad") if pad is not None else self.eos_id
        self.mask_id = self._lookup(mask, "mask")
        self.eot_id = self._lookup(eot, "end-of-turn")
        self.header_start_id = self._lookup(header_start, "header start")
        self.header_end_id = self._lookup(header_end, "header end")

    def _lookup(self, token: str, what: str) -> int:
        i = self._tok.token_to_id(token)
        if i is None:
            raise ValueError(f"{self._path}: no {what} token '{token}' in the vocabulary")
        return int(i)

    def _encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def _decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)

    def id_to_piece(self, i: int) -> str:
        piece = self._tok.id_to_token(int(i))
        if piece is None:
            raise ValueError(f"token id {i} is outside the vocabulary [0, {self.vocab_size})")
        return piece

    def __getstate__(self):
        return {"path": str(self._path), "names": self._names}

    def __setstate__(self, state):
        self.__init__(state["path"], **state["names"])


def decode_answer(tokenizer, ids: Sequence[int], stop_ids: Sequence[int]) -> str:
    """Text of the generated ids before the first stop id (EOS / end-of-turn).

    Ids past the tokenizer's vocabulary (a model's embedding may be padded larger) have no
    text and are dropped.
    """
    ids = [int(i) for i in ids]
    stops = set(int(s) for s in stop_ids)
    for n, i in enumerate(ids):
        if i in stops:
            ids = ids[:n]
            break
    return tokenizer.decode([i for i in ids if i < tokenizer.vocab_size]).strip()


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Load a sentencepiece `.model`, a HF `tokenizer.json`, or a directory holding one of them."""
    p = as_path(path)
    if p.is_dir():
        if is_file(p / "tokenizer.json"):
            return HFTokenizer(p / "tokenizer.json")
        if is_file(p / "tokenizer.model"):
            return SentencePieceTokenizer(p / "tokenizer.model")
        models = sorted(p.glob("*.model"))
        if len(models) == 1:
            return SentencePieceTokenizer(models[0])
        found = ", ".join(m.name for m in models) or "none"
        raise FileNotFoundError(f"{path_str(p)}: expected tokenizer.json or one sentencepiece *.model (found {found})")
    if not p.exists():
        raise FileNotFoundError(f"tokenizer {path_str(p)} does not exist")
    if p.suffix == ".json":
        return HFTokenizer(p)
    if p.suffix == ".model":
        return SentencePieceTokenizer(p)
    raise ValueError(f"{path_str(p)}: unknown tokenizer type (expected a sentencepiece .model or a tokenizer.json)")


def train_tokenizer(files: Sequence[str | os.PathLike], model_prefix: str | os.PathLike, vocab_size: int, *,
                    model_type: str = "bpe", character_coverage: float = 1.0, input_sentence_size: int = 0,
                    max_sentence_length: int = 16384, num_threads: int | None = None):
    """Train a sentencepiece model on text `files`; returns `<model_prefix>.model`.

    Reserved ids: unk 0, BOS 1, EOS 2 (also pad), mask 3, end-of-turn 4, header start 5,
    header end 6. Byte fallback, identity normalisation and no dummy prefix make
    `decode(encode(text)) == text` for any text. `vocab_size` is an upper bound: a corpus too
    small for it gives a smaller vocabulary. Each line of the files is one training sentence.
    Inputs and the prefix may be local or URLs (`gs://`); with a URL anywhere the sentences
    are streamed through `llada_jax.io.paths` and only `<prefix>.model` is written.
    """
    import sentencepiece as spm

    files = [as_path(f) for f in files]
    if not files:
        raise ValueError("train_tokenizer: no input files given")
    for f in files:
        if not is_file(f):
            raise FileNotFoundError(f"train_tokenizer: input file {path_str(f)} does not exist")
    minimum = 256 + len(RESERVED_IDS) + 1
    if vocab_size < minimum:
        raise ValueError(f"train_tokenizer: vocab_size {vocab_size} is too small; byte fallback needs >= {minimum}")
    if model_type not in ("bpe", "unigram"):
        raise ValueError(f"train_tokenizer: model_type '{model_type}' is not one of 'bpe', 'unigram'")
    if not 0.0 < character_coverage <= 1.0:
        raise ValueError(f"train_tokenizer: character_coverage {character_coverage} is outside (0, 1]")
    prefix = as_path(model_prefix)
    out = prefix.with_name(prefix.name + ".model")
    remote = is_remote(prefix) or any(is_remote(f) for f in files)
    if remote:  # sentencepiece reads and writes local files only: stream through the path layer
        writer = io.BytesIO()
        where = dict(sentence_iterator=_lines(files), model_writer=writer)
    else:
        prefix.parent.mkdir(parents=True, exist_ok=True)
        where = dict(input=[str(f) for f in files], model_prefix=str(prefix))
    try:
        spm.SentencePieceTrainer.train(
            **where, vocab_size=vocab_size, model_type=model_type,
            unk_id=RESERVED_IDS["unk"], bos_id=RESERVED_IDS["bos"], eos_id=RESERVED_IDS["eos"], pad_id=-1,
            user_defined_symbols=list(_USER_SYMBOLS), byte_fallback=True, character_coverage=character_coverage,
            normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=False,
            allow_whitespace_only_pieces=True, split_digits=True, hard_vocab_limit=False,
            input_sentence_size=input_sentence_size, shuffle_input_sentence=True,
            max_sentence_length=max_sentence_length, num_threads=num_threads or min(8, os.cpu_count() or 1),
            minloglevel=2,
        )
    except RuntimeError as e:
        raise _training_error(e, files, vocab_size, character_coverage) from None
    if remote:
        write_bytes(out, writer.getvalue())
    tok = SentencePieceTokenizer(out)
    got = {k: getattr(tok, f"{k}_id") for k in RESERVED_IDS if k != "unk"}
    wrong = {k: v for k, v in got.items() if v != RESERVED_IDS[k]}
    if wrong:  # sentencepiece changed its id assignment: refuse rather than train a mismatched model
        raise RuntimeError(f"train_tokenizer: reserved ids not where expected: {wrong}")
    return out


def _training_error(error: RuntimeError, files, vocab_size: int, character_coverage: float) -> ValueError:
    """sentencepiece's trainer error as one line naming the input and what to change.

    The trainer reports "Vocabulary size is smaller than required_chars. 300 vs 362" when the
    corpus's characters (kept at `character_coverage`) plus the reserved and byte pieces do not
    fit: the second number is the smallest vocabulary that does.
    """
    text = " ".join(str(error).split())
    names = ", ".join(path_str(f) for f in files[:3]) + (f" and {len(files) - 3} more files" if len(files) > 3 else "")
    needed = re.search(r"required_chars\. \d+ vs (\d+)", text)
    if needed:
        return ValueError(
            f"train_tokenizer: vocab_size {vocab_size} is too small for {names}: its characters at character_coverage "
            f"{character_coverage:g} need a vocabulary of at least {needed.group(1)}; raise the vocabulary size, or "
            f"lower the character coverage (character_coverage, --character-coverage, e.g. 0.9995) so rare "
            f"characters are spelled as bytes")
    if "sentences_.empty()" in text:
        return ValueError(f"train_tokenizer: no text to train on in {names} (the files are empty or blank)")
    return ValueError(f"train_tokenizer: sentencepiece could not train on {names}: "
                      + re.sub(r"^INTERNAL: \S+ \[[^]]*\] ?", "", text))


def _lines(files) -> Iterable[str]:
    for f in files:
        with f.open("r") as fh:
            for line in fh:
                if line.strip():
                    yield line.rstrip("\n")


def check_tokenizer_matches(tokenizer: Tokenizer, model_cfg) -> None:
    """Raise ValueError naming every special id where `tokenizer` and `model_cfg` disagree.

    Also refuses a tokenizer whose vocabulary does not fit the model's embedding.
    """
    pairs = (("bos_token_id", tokenizer.bos_id), ("eos_token_id", tokenizer.eos_id),
             ("pad_token_id", tokenizer.pad_id), ("mask_token_id", tokenizer.mask_id),
             ("eot_token_id", tokenizer.eot_id))
    problems = [f"{name}: model {getattr(model_cfg, name)} != tokenizer {tok_id}"
                for name, tok_id in pairs if getattr(model_cfg, name) != tok_id]
    if tokenizer.vocab_size > model_cfg.vocab_size:
        problems.append(f"vocab_size: tokenizer has {tokenizer.vocab_size} tokens, model only {model_cfg.vocab_size}")
    if problems:
        raise ValueError("tokenizer does not match the model config: " + "; ".join(problems))


__all__ = ["Tokenizer", "SentencePieceTokenizer", "HFTokenizer", "load_tokenizer", "train_tokenizer",
           "check_tokenizer_matches", "chat_template_text", "RESERVED_IDS", "MASK_TOKEN", "EOT_TOKEN",
           "HEADER_START_TOKEN", "HEADER_END_TOKEN"]
