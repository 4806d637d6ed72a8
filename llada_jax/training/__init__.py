"""Running a training job: optimizer, train state and the one jitted step (every objective shares
it), the loop, validation, metrics, timing, profiling, preemption, multi-host start and offline
checkpoint verification.

Imports `config`, `model`, `io`, `data` and `inference`; never `planning`, `evaluation`, `serving` or `cli`.
"""
