"""Serving many clients at once: an OpenAI-compatible HTTP server over a step-level continuously
batched sampler that runs the same denoising step as `inference.sampling.generate`."""

# Seconds of model calls that the scheduler runs as one jitted chunk between two admissions (here,
# not in scheduler.py, so that the CLI can show it without importing JAX).
DEFAULT_CHUNK_S = 0.05
