"""Errors and counters shared by the data sources and pipelines."""

from __future__ import annotations

import dataclasses
import threading


class DataError(ValueError):
    """A malformed input row or file; the message starts with `file:line` (or `file: record i`)."""


@dataclasses.dataclass
class DataStats:
    """Counters filled while a pipeline is built (and, for ArrayRecord skips, while it is read).

    documents: documents or rows indexed; skipped: malformed rows skipped (on_error=skip);
    empty: empty documents left out; rows: SFT rows kept (this shard); dropped / truncated:
    SFT rows longer than seq_len (this shard).
    """

    documents: int = 0
    skipped: int = 0
    empty: int = 0
    rows: int = 0
    dropped: int = 0
    truncated: int = 0

    def __post_init__(self):
        self._lock = threading.Lock()

    def add(self, **counts: int) -> None:
        with self._lock:
            for k, v in counts.items():
                setattr(self, k, getattr(self, k) + v)

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def __getstate__(self):  # picklable for worker processes (the lock is not)
        return self.as_dict()

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.__post_init__()
