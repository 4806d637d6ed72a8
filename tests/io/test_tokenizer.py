"""Tokenizers: reserved ids, round trips, LLaDA's chat template, the HF tokenizer.json adapter, CLI."""

import pickle

import pytest

from llada_jax.config import ModelConfig
from llada_jax.io.tokenizer import (HFTokenizer, RESERVED_IDS, SentencePieceTokenizer, check_tokenizer_matches,
                                 load_tokenizer, train_tokenizer)

TEXTS = [
    "Hello  world\n\n\tx = 1 → ü 中文 emoji 🙂 end ",
    "",
    "  leading and trailing spaces  ",
    "def f(x):\n    return x ** 2  # comment\n",
]
MESSAGES = [{"role": "system", "content": "  Be brief. "}, {"role": "user", "content": "What is 2+2?\n"}]
LITERAL = ("<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
           "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
           "<|start_header_id|>assistant<|end_header_id|>\n\n")


@pytest.fixture(scope="session")
def sp_model(tmp_path_factory):
    from llada_jax.data import default_corpus_text

    d = tmp_path_factory.mktemp("sp")
    (d / "corpus.txt").write_text(default_corpus_text()[:40000])
    return train_tokenizer([d / "corpus.txt"], d / "tok", 400)


@pytest.fixture(scope="session")
def sp_tok(sp_model):
    return load_tokenizer(sp_model)


def test_reserved_ids_and_sizes(sp_tok):
    assert isinstance(sp_tok, SentencePieceTokenizer)
    got = {"bos": sp_tok.bos_id, "eos": sp_tok.eos_id, "mask": sp_tok.mask_id, "eot": sp_tok.eot_id,
           "header_start": sp_tok.header_start_id, "header_end": sp_tok.header_end_id}
    assert got == {k: v for k, v in RESERVED_IDS.items() if k != "unk"}
    assert sp_tok.pad_id == sp_tok.eos_id == 2
    assert sp_tok.id_to_piece(0) == "<unk>"
    assert sp_tok.id_to_piece(3) == "<|mdm_mask|>" and sp_tok.id_to_piece(4) == "<|eot_id|>"
    assert 264 < sp_tok.vocab_size <= 400


@pytest.mark.parametrize("text", TEXTS)
def test_sentencepiece_round_trip(sp_tok, text):
    ids = sp_tok.encode(text)
    assert all(0 <= i < sp_tok.vocab_size for i in ids)
    assert sp_tok.bos_id not in ids and sp_tok.eos_id not in ids and 0 not in ids  # byte fallback: no unk
    assert sp_tok.decode(ids) == text


def test_decode_drops_specials_and_pickles(sp_tok):
    ids = [sp_tok.bos_id] + sp_tok.encode("abc") + [sp_tok.eot_id, sp_tok.mask_id, sp_tok.eos_id, sp_tok.eos_id]
    assert sp_tok.decode(ids) == "abc"
    # Ids past the tokenizer's vocabulary (a larger model embedding) are dropped, not an error.
    assert sp_tok.decode(sp_tok.encode("ab") + [sp_tok.vocab_size, sp_tok.vocab_size + 7]) == "ab"
    assert sp_tok.encode("a<|mdm_mask|>b") == sp_tok.encode("a") + [3] + sp_tok.encode("b")
    clone = pickle.loads(pickle.dumps(sp_tok))
    assert clone.encode(TEXTS[0]) == sp_tok.encode(TEXTS[0]) and clone.mask_id == 3


def test_sentencepiece_chat_prompt_matches_literal(sp_tok, sp_model):
    import sentencepiece as spm

    raw = spm.SentencePieceProcessor(model_file=str(sp_model))
    ids = sp_tok.chat_prompt(MESSAGES)
    assert ids == [1] + raw.encode(LITERAL)
    # Structure: BOS once, header ids around the roles, EoT after each message, open assistant header.
    assert ids[:2] == [1, 5] and ids.count(1) == 1 and ids.count(4) == 2 and ids.count(5) == 3
    no_gen = sp_tok.chat_prompt(MESSAGES, add_generation_prompt=False)
    assert no_gen[-1] == 4 and ids[: len(no_gen)] == no_gen
    with pytest.raises(ValueError, match="chat message 1"):
        sp_tok.chat_prompt([{"role": "user", "content": "x"}, {"role": "user"}])


def test_check_tokenizer_matches(sp_tok, tiny_cfg):
    check_tokenizer_matches(sp_tok, tiny_cfg)
    with pytest.raises(ValueError, match=r"mask_token_id: model 7 != tokenizer 3"):
        check_tokenizer_matches(sp_tok, tiny_cfg.replace(mask_token_id=7))
    with pytest.raises(ValueError, match="vocab_size"):
        check_tokenizer_matches(sp_tok, tiny_cfg.replace(vocab_size=300))
    with pytest.raises(ValueError, match="eot_token_id"):
        check_tokenizer_matches(sp_tok, ModelConfig())  # LLaDA-8B ids


def test_train_tokenizer_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        train_tokenizer([tmp_path / "missing.txt"], tmp_path / "m", 400)
    (tmp_path / "a.txt").write_text("abc\n")
    with pytest.raises(ValueError, match="too small"):
        train_tokenizer([tmp_path / "a.txt"], tmp_path / "m", 100)
    with pytest.raises(FileNotFoundError):
        load_tokenizer(tmp_path)
    with pytest.raises(ValueError, match="unknown tokenizer type"):
        load_tokenizer(tmp_path / "a.txt")


def _many_characters(directory):
    """A corpus of 10 frequent and 200 rare characters (one occurrence each), no spaces."""
    common = "abcdefghij" * 50
    rare = "".join(chr(c) for c in range(0x4E00, 0x4E00 + 200))
    path = directory / "wide.txt"
    path.write_text("\n".join([common] * 100 + [rare[i:i + 20] for i in range(0, 200, 20)]) + "\n")
    return path, len(set(common + rare))


def test_corpus_with_more_characters_than_the_vocabulary(tmp_path):
    corpus, distinct = _many_characters(tmp_path)
    needed = distinct + 256 + len(RESERVED_IDS)  # a piece per character, the 256 bytes, the reserved pieces
    with pytest.raises(ValueError) as e:
        train_tokenizer([corpus], tmp_path / "small", 300)
    message = str(e.value)
    assert "\n" not in message and str(corpus) in message
    assert "vocab_size 300 is too small" in message and f"at least {needed};" in message
    assert "--character-coverage" in message
    assert not (tmp_path / "small.model").exists()
    text = corpus.read_text()
    # The size the message names is enough ...
    tok = load_tokenizer(train_tokenizer([corpus], tmp_path / "fit", needed))
    assert tok.vocab_size == needed and tok.decode(tok.encode(text)) == text
    # ... and so is a lower coverage at the first size: the rare characters are spelled as bytes.
    tok = load_tokenizer(train_tokenizer([corpus], tmp_path / "cover", 300, character_coverage=0.99))
    assert tok.vocab_size <= 300 and tok.decode(tok.encode(text)) == text
    rare = chr(0x4E00)
    assert [tok.id_to_piece(i) for i in tok.encode(rare)] == [f"<0x{b:02X}>" for b in rare.encode()]
    with pytest.raises(ValueError, match=r"character_coverage 0.0 is outside \(0, 1\]"):
        train_tokenizer([corpus], tmp_path / "zero", 300, character_coverage=0.0)


def test_empty_corpus_and_unparsable_model(tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ValueError, match=f"no text to train on in {tmp_path / 'empty.txt'}"):
        train_tokenizer([tmp_path / "empty.txt"], tmp_path / "m", 300)
    (tmp_path / "junk.model").write_bytes(bytes(range(200, 256)) * 10)
    with pytest.raises(ValueError, match=f"{tmp_path / 'junk.model'}: not a sentencepiece model"):
        load_tokenizer(tmp_path / "junk.model")


# ---------------------------------------------------------------- HF tokenizer.json
HF_SPECIALS = ["<|startoftext|>", "<|endoftext|>", "<|mdm_mask|>", "<|start_header_id|>", "<|end_header_id|>",
               "<|eot_id|>"]


@pytest.fixture(scope="session")
def hf_json(tmp_path_factory):
    """A small byte-level BPE tokenizer.json with LLaDA's special token strings (ids after the merges)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from llada_jax.data import default_corpus_text

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator([default_corpus_text()[:40000]], trainer)
    tok.add_special_tokens(HF_SPECIALS)
    path = tmp_path_factory.mktemp("hf") / "tokenizer.json"
    tok.save(str(path))
    return path


def test_hf_adapter_ids_by_string(hf_json):
    from tokenizers import Tokenizer

    raw = Tokenizer.from_file(str(hf_json))
    tok = load_tokenizer(hf_json.parent)
    assert isinstance(tok, HFTokenizer)
    assert tok.bos_id == raw.token_to_id("<|startoftext|>") and tok.bos_id >= 300
    assert (tok.eos_id, tok.mask_id, tok.eot_id) == tuple(
        raw.token_to_id(t) for t in ("<|endoftext|>", "<|mdm_mask|>", "<|eot_id|>"))
    assert tok.pad_id == tok.eos_id and tok.vocab_size == raw.get_vocab_size()
    assert tok.id_to_piece(tok.mask_id) == "<|mdm_mask|>"
    for text in TEXTS:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert tok.decode([tok.bos_id] + ids + [tok.eot_id, tok.eos_id]) == text
    # The chat prompt is what LLaDA's release gets by tokenizing the rendered template string.
    assert tok.chat_prompt(MESSAGES) == raw.encode("<|startoftext|>" + LITERAL, add_special_tokens=False).ids
    clone = pickle.loads(pickle.dumps(tok))
    assert clone.encode(TEXTS[0]) == tok.encode(TEXTS[0])


def test_hf_adapter_missing_special(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.BPE(vocab={"a": 0, "b": 1}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    tok.add_special_tokens(["<|startoftext|>", "<|endoftext|>"])
    tok.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ValueError, match=r"no mask token '<\|mdm_mask\|>'"):
        load_tokenizer(tmp_path / "tokenizer.json")


def test_cli_train_tokenizer(tmp_path, capsys):
    from llada_jax.cli.main import main

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("the quick brown fox\njumps over the lazy dog\n" * 50)
    assert main(["train-tokenizer", "--input", str(tmp_path / "in"), "--vocab-size", "300",
                 "--output", str(tmp_path / "out" / "tok")]) == 0
    assert "mask 3" in capsys.readouterr().out
    tok = load_tokenizer(tmp_path / "out" / "tok.model")
    assert tok.decode(tok.encode("the lazy fox")) == "the lazy fox"
    assert main(["train-tokenizer", "--input", str(tmp_path / "nope.txt"), "--vocab-size", "300",
                 "--output", str(tmp_path / "x")]) == 2
    wide, _ = _many_characters(tmp_path)
    assert main(["train-tokenizer", "--input", str(wide), "--vocab-size", "300", "--output", str(tmp_path / "w"),
                 "--character-coverage", "0.99"]) == 0
    assert load_tokenizer(tmp_path / "w.model").vocab_size <= 300
