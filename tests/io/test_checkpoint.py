"""Checkpoint reads: what `quiet_abandoned_reads` drops and what it passes on."""

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


_READ = '''
class _Suspend:
    def __await__(self):
        yield


async def read_array():
    try:
        await _Suspend()
    except GeneratorExit as e:
        raise Exception("Encountered error while reading array index") from e
'''


def _abandoned_coroutine(filename: str):
    """A suspended coroutine whose close raises from GeneratorExit, as Orbax's array reads do."""
    namespace = {}
    exec(compile(_READ, filename, "exec"), namespace)
    coroutine = namespace["read_array"]()
    coroutine.send(None)
    return coroutine


def test_quiet_abandoned_reads_drops_orbax_read_coroutines_closed_unfinished(monkeypatch):
    import os

    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(u.object.cr_code.co_filename))
    quiet_abandoned_reads()
    orbax_file = os.path.join(os.sep, "site-packages", "orbax", "checkpoint", "serialization.py")
    other_file = os.path.join(os.sep, "site-packages", "mylib", "reader.py")
    for filename in (orbax_file, other_file):
        _abandoned_coroutine(filename)  # dropped unfinished: closed when collected
        gc.collect()
    assert seen == [other_file]


def test_asyncio_reports_of_abandoned_orbax_read_tasks_are_dropped():
    """asyncio's 'Task exception was never retrieved' for an Orbax read task is dropped; others pass."""
    import logging
    import os

    from llada_jax.io.checkpoint import _drop_abandoned_read_tasks

    def record(where):
        text = f"Task exception was never retrieved\nfuture: <Task finished coro=<read() defined at {where}:1>>"
        return logging.LogRecord("asyncio", logging.ERROR, "", 0, text, None, None)

    assert not _drop_abandoned_read_tasks(record(f"{os.sep}site{os.sep}orbax{os.sep}serialization.py"))
    assert _drop_abandoned_read_tasks(record(f"{os.sep}mine{os.sep}job.py"))
    other = logging.LogRecord("asyncio", logging.ERROR, "", 0, f"Unclosed client session {os.sep}orbax{os.sep}", None, None)
    assert _drop_abandoned_read_tasks(other)


def test_asyncio_reports_of_abandoned_tensorstore_reads_are_dropped(tmp_path):
    """A real tensorstore read wrapped in a task whose error nobody retrieves (as Orbax leaves them
    when another read of the checkpoint failed): asyncio's report of it is dropped, others pass."""
    import asyncio
    import gc
    import logging

    import tensorstore as ts

    from llada_jax.io.checkpoint import _drop_abandoned_read_tasks

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    handler.addFilter(_drop_abandoned_read_tasks)
    logger = logging.getLogger("asyncio")
    logger.addHandler(handler)

    async def abandon_reads():
        missing = {"driver": "zarr", "kvstore": {"driver": "file", "path": str(tmp_path / "missing") + "/"}}
        read = asyncio.ensure_future(ts.open(missing, open=True))

        async def mine():
            raise ValueError("my own task failed")

        other = asyncio.ensure_future(mine())
        while not (read.done() and other.done()):
            await asyncio.sleep(0.01)

    try:
        asyncio.run(abandon_reads())
        gc.collect()
    finally:
        logger.removeHandler(handler)
    assert [str(r.exc_info[1]) for r in records] == ["my own task failed"]
