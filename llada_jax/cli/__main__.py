"""`python -m llada_jax.cli ...` is the `llada-jax` command."""

import sys

from llada_jax.cli.main import main

sys.exit(main())
