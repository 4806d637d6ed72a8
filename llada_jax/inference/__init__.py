"""Using a trained mask predictor: the jitted sampler (release semantics, threshold decoding, caches)
and the Monte Carlo log-likelihood. Imports `config` and `model` only (no grain, no Orbax).
"""
