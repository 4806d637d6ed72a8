"""Serving many clients at once: an OpenAI-compatible HTTP server over a step-level continuously
batched sampler that runs the same denoising step as `inference.sampling.generate`."""
