"""What crosses the disk: params exports and loading any model directory, Hugging Face weights, tokenizers.

`checkpoint` writes and reads params-only exports (and recognises HF directories), `hf`
converts LLaDA safetensors checkpoints in and out, `tokenizer` wraps sentencepiece and HF
`tokenizer.json` with LLaDA's special tokens and chat template. Imports `config` and `model`.
"""
