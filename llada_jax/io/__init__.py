"""What crosses the disk: params exports, run-folder checkpoints and their fingerprints, finding a
model in any directory, Hugging Face weights, tokenizers.

`checkpoint` writes and reads params-only exports (and recognises HF directories), `run_checkpoint`
is the Orbax format of a training run's steps (verified on every restore by `integrity`),
`model_source` loads a model from a run, an export or a HF directory, `hf` converts LLaDA
safetensors checkpoints in and out, `tokenizer` wraps sentencepiece and HF `tokenizer.json` with
LLaDA's special tokens and chat template. Imports `config` and `model`.
"""
