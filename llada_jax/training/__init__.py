"""Training programs: optimizer, train state and jitted step, the loop, Orbax train checkpoints,
metrics, multi-host start and the ahead-of-time compile check for TPU topologies.

Imports `config`, `model`, `io`, `data` and `inference`; never `evaluation` or `cli`.
"""
