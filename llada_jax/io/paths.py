"""Storage paths: one layer for every path a user gives, local or on a bucket (`gs://`, `s3://`, ...).

Everything goes through `etils.epath`, which Orbax and Grain speak too (gcsfs behind `gs://`),
so a run directory, a tokenizer, data files and exports may live on a bucket. A `pathlib.Path`
must never see a URL: `Path("gs://b/x")` is the local folder `gs:/b/x`.

Writes of shared files are whole-object: on a bucket an upload is atomic; locally a file is
written next to its target and renamed over it, so a reader never sees half a file. With
several processes, `is_lead()` (process 0) writes shared files and every process reads them.
"""

from __future__ import annotations

import fnmatch
import os
import re
from typing import Iterable

from etils import epath

PathLike = str | os.PathLike
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_remote(path: PathLike) -> bool:
    """True for a URL such as `gs://bucket/x` (anything with a scheme other than `file://`)."""
    s = os.fspath(path) if not isinstance(path, epath.Path) else str(path)
    return bool(_URL.match(s)) and not s.startswith("file://")


def as_path(path: PathLike) -> epath.Path:
    """An `epath.Path` for a local path (made absolute, `~` expanded) or a URL (kept as is)."""
    if isinstance(path, epath.Path) and is_remote(path):
        return path
    s = str(path)
    if is_remote(s):
        return epath.Path(s)
    if s.startswith("file://"):
        s = s[len("file://"):]
    return epath.Path(os.path.abspath(os.path.expanduser(s)))


def path_str(path: PathLike) -> str:
    """The user-facing spelling of a path (`gs://b/x` or an absolute local path)."""
    return str(as_path(path))


def is_lead() -> bool:
    """Process 0 of a multi-process job (or the only process): the one that writes shared files."""
    import jax

    return jax.process_index() == 0


def write_bytes(path: PathLike, data: bytes) -> None:
    """Write `data` to `path` whole: a reader sees the old file or the new one, never half."""
    p = as_path(path)
    if is_remote(p):
        p.write_bytes(data)
        return
    if p.is_dir():  # else the temporary file is written and then left behind by the failed replace
        raise IsADirectoryError(f"{path_str(p)} is a directory; expected a file path")
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.parent / f".{p.name}.tmp{os.getpid()}"
    tmp.write_bytes(data)
    os.replace(tmp, p)


def write_text(path: PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def read_text(path: PathLike, what: str = "file") -> str:
    """The UTF-8 text of the file `path` (local or URL); `what` names it in the errors
    (missing, a directory, not UTF-8 text)."""
    p = as_path(path)
    if p.is_dir():
        raise IsADirectoryError(f"{what} {path_str(p)} is a directory, not a file")
    if not p.exists():
        raise FileNotFoundError(f"{what} {path_str(p)} does not exist")
    raw = p.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{what} {path_str(p)}: not UTF-8 text (byte {e.start} is {raw[e.start]:#04x})") from None


def is_file(path: PathLike) -> bool:
    p = as_path(path)
    return p.exists() and not p.is_dir()


def glob_files(pattern: str) -> list[epath.Path]:
    """Files matching a glob pattern (`*`, `?`, `[..]`; `**` for any depth), local or on a bucket, sorted."""
    if not is_remote(pattern):
        import glob

        return sorted(as_path(f) for f in glob.glob(os.path.expanduser(pattern), recursive=True)
                      if os.path.isfile(f))
    # Bucket: walk from the longest prefix without a wildcard, match the rest (epath's glob has no `**`).
    parts = pattern.split("/")
    fixed = next(i for i, part in enumerate(parts) if any(c in part for c in "*?["))
    root = as_path("/".join(parts[:fixed]))
    regex = re.compile(_glob_regex("/".join(parts[fixed:])))
    if not root.exists():
        return []
    return sorted((f for f in walk_files(root) if regex.fullmatch(str(f)[len(str(root)) + 1:])), key=str)


def _glob_regex(pattern: str) -> str:
    out = []
    for i, part in enumerate(pattern.split("/")):
        if part == "**":
            out.append("(?:.*/)?")
            continue
        out.append(fnmatch.translate(part)[4:-3].replace(".*", "[^/]*") + ("/" if i < pattern.count("/") else ""))
    return "".join(out)


def walk_files(root: PathLike) -> Iterable[epath.Path]:
    """Every file below a directory, local or on a bucket (hidden names skipped), sorted."""
    root = as_path(root)
    files = []
    bare = str(root).split("://", 1)[-1].rstrip("/")  # a bucket's walk yields paths without the scheme
    for dirpath, _, names in root.walk():
        rel = str(dirpath).split("://", 1)[-1][len(bare):].strip("/")
        base = root / rel if rel else root
        files += [base / n for n in names if not n.startswith(".")]
    return sorted(files, key=str)


class AppendFile:
    """A file opened for appending, local or remote; `flush()` makes what was written visible.

    On `gs://` each flush appends only what is new: the pending bytes go up as a temporary object
    that a compose request adds to the end of the file, so nothing flushed is lost and no flush
    re-sends the file. Under another remote scheme an object cannot be appended to: its content
    is kept in memory and uploaded whole on `flush()`, at most every `min_interval_s` (always on
    `close()`).
    """

    def __init__(self, path: PathLike, *, min_interval_s: float = 0.0):
        import time

        self.path = as_path(path)
        self._clock = time.monotonic
        self._remote = is_remote(self.path)
        self._min_interval, self._last = min_interval_s, float("-inf")
        self._compose = path_str(self.path).startswith("gs://")
        if self._compose:
            import fsspec

            # The instance etils.epath uses for gs:// (fsspec caches it by these arguments), so its
            # listings see what is appended here.
            self._fs, self._key = fsspec.filesystem("gcs", finalize_on_close=True), path_str(self.path)
            self._exists = self._fs.exists(self._key)
            self._buffer = bytearray()  # written, not yet appended
        elif self._remote:
            self._buffer = bytearray(self.path.read_bytes() if self.path.exists() else b"")
            self._dirty = False
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "ab")

    def write(self, data: bytes | str) -> None:
        data = data.encode("utf-8") if isinstance(data, str) else data
        if self._remote:
            self._buffer += data
            self._dirty = True
        else:
            self._file.write(data)

    def flush(self, force: bool = False) -> None:
        if not self._remote:
            self._file.flush()
        elif self._compose:
            self._append()
        elif self._dirty and (force or self._clock() - self._last >= self._min_interval):
            self.path.write_bytes(bytes(self._buffer))
            self._dirty, self._last = False, self._clock()

    def _append(self) -> None:
        if not self._buffer:
            return
        data = bytes(self._buffer)
        if self._exists:
            part = f"{self._key}.append-{os.getpid()}"
            self._fs.pipe(part, data)
            self._fs.merge(self._key, [self._key, part])
            self._fs.rm(part)
        else:
            self._fs.pipe(self._key, data)
            self._exists = True
        self._fs.invalidate_cache(self._key)
        self._buffer = bytearray()

    def close(self) -> None:
        self.flush(force=True)
        if not self._remote:
            self._file.close()
