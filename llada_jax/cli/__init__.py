"""The `llada-jax` command: `main` builds the parser from the command groups (`tools`, `train`,
`evaluate`, `generate`), which share flags through `options`. The top layer: it may import any
module of the package, and nothing in the package imports it.
"""
