"""Measuring a model: tasks, accuracy and speed of a sampler setting, schedule sweeps, the lm-eval adapter.

Imports every layer below (`config` ... `training`); never `cli`.
"""
