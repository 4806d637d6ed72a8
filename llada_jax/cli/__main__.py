"""`python -m llada_jax.cli ...` is the `llada-jax` command."""

from llada_jax.cli.main import run

run()
