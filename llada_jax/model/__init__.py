"""The math: the mask predictor, the forward process and losses, and how params and activations shard.

`transformer` is LLaDA's bidirectional LLaMA-style network as pure functions over a params
pytree; `diffusion` the masking process and the pretraining / SFT losses; `sharding` the mesh
and the logical-axis rules. Imports only `llada_jax.config`.
"""
