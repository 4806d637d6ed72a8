"""Grain data pipelines for pretraining (packed documents) and SFT (prompt/response rows)."""

from llada_jax.data.corpus import default_corpus_text, default_corpus_topics, write_default_corpus
