"""Params exports: what `quiet_abandoned_reads` drops and what it passes on."""

import gc
import sys

from llada_jax.io.checkpoint import quiet_abandoned_reads


class _RaisesOnDelete:
    def __init__(self, error):
        self.error = error

    def __del__(self):
        raise self.error


def test_quiet_abandoned_reads_drops_only_closed_loop_reports(monkeypatch):
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(str(u.exc_value)))
    quiet_abandoned_reads()
    quiet_abandoned_reads()  # installed once: a second call does not wrap the hook again
    assert sys.unraisablehook.quiets_abandoned_reads
    for error in (RuntimeError("Event loop is closed"), RuntimeError("something else"), ValueError("bad")):
        _RaisesOnDelete(error)
        gc.collect()
    assert seen == ["something else", "bad"]
