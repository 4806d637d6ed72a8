"""Random-access document sources: plain text, JSONL, ArrayRecord and Parquet, local or on a bucket.

Each source is a Sequence of documents (`len`, `[i] -> str | None`) that Grain's
`MapDataset.source` can shuffle and shard by index. Text and JSONL files are indexed once, at
construction, into byte ranges (JSONL lines are validated then, so a malformed line stops the
run before training starts, with its file and line number); documents are read from disk on
access. ArrayRecord files are read by record index and decoded on access; Parquet files by
row (`data/parquet.py`).

Paths, directories and glob patterns may be local or URLs (`gs://bucket/data/*.jsonl`): files
are read through `llada_jax.io.paths` (etils.epath). ArrayRecord files are opened by
array_record's own reader, which reads local files and `gs://` objects (google-cloud-cpp: the
machine's default credentials; `CLOUD_STORAGE_EMULATOR_ENDPOINT` points it at an emulator); an
ArrayRecord file under another scheme (`s3://`, ...) is copied once into a local read cache
(`LLADA_JAX_CACHE`, default a temporary directory removed at exit).
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import re
import shutil
import tempfile
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from etils import epath

from llada_jax.data.errors import DataError, DataStats
from llada_jax.data.parquet import ParquetSource
from llada_jax.io.paths import as_path, glob_files, is_remote, path_str, walk_files


_EXTENSIONS = {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}  # ArrayRecord suffixes are matched by prefix (sharded names)


def expand_files(patterns: Sequence[str | os.PathLike]) -> list[epath.Path]:
    """Files named by paths, directories (all files below, sorted) or glob patterns, in order;
    each may be local or a URL (`gs://...`)."""
    if isinstance(patterns, (str, os.PathLike)):
        patterns = [patterns]
    out: list[epath.Path] = []
    for pattern in patterns:
        p = as_path(pattern)
        if p.is_dir():
            found = list(walk_files(p))
            if not found:
                raise FileNotFoundError(f"data directory {path_str(p)} holds no files")
            out.extend(found)
        elif p.exists():
            out.append(p)
        else:
            found = glob_files(str(pattern) if is_remote(pattern) else str(p))
            if not found:
                raise FileNotFoundError(f"data file {pattern} does not exist (and matches no files as a pattern)")
            out.extend(found)
    if not out:
        raise FileNotFoundError("no data files given (set data.files)")
    return out


def file_format(path, fmt: str) -> str:
    """'text', 'jsonl', 'arrayrecord' or 'parquet' for `path` under the configured format ('auto': by extension)."""
    if fmt != "auto":
        return fmt
    suffix = epath.Path(path).suffix.lower()
    if suffix.startswith(".array_record") or suffix.startswith(".arrayrecord"):  # e.g. .array_record-00000-of-00008
        return "arrayrecord"
    return _EXTENSIONS.get(suffix, "text")


def scan_jsonl(path, check: Callable[[Any], bool], on_error: str, stats: DataStats
               ) -> tuple[np.ndarray, np.ndarray]:
    """Byte offsets and lengths of the valid, non-blank lines of a JSONL file.

    `check(obj)` raises ValueError for a row that is valid JSON but not what the caller needs,
    and returns False for a valid but empty row (left out, counted as `empty`).
    A bad line raises DataError `path:line: reason`, or is skipped and counted (on_error='skip').
    """
    offsets, lengths = [], []
    offset = 0
    with as_path(path).open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            start, offset = offset, offset + len(raw)
            if not raw.strip():
                continue
            try:
                keep = check(json.loads(raw))
            except (ValueError, UnicodeDecodeError) as e:
                if on_error == "raise":
                    raise DataError(f"{path_str(path)}:{lineno}: {_reason(e)}") from None
                stats.add(skipped=1)
                continue
            if not keep:
                stats.add(empty=1)
                continue
            offsets.append(start)
            lengths.append(len(raw))
    return np.asarray(offsets, np.int64), np.asarray(lengths, np.int64)


def _reason(e: Exception) -> str:
    if isinstance(e, json.JSONDecodeError):
        return f"invalid JSON ({e.msg} at column {e.colno})"
    if isinstance(e, UnicodeDecodeError):
        return "not valid UTF-8"
    return str(e)


def read_range(path, offset: int, length: int) -> bytes:
    """`length` bytes of `path` from `offset` (opened per call: safe from several threads)."""
    with as_path(path).open("rb") as f:
        f.seek(offset)
        return f.read(length)


def text_field_of(obj: Any, field: str) -> str:
    """The string `obj[field]` of a JSON object, or ValueError saying what is wrong."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    if field not in obj:
        raise ValueError(f"no '{field}' field (keys: {', '.join(list(obj)[:8])})")
    if not isinstance(obj[field], str):
        raise ValueError(f"field '{field}' is {type(obj[field]).__name__}, not a string")
    return obj[field]


class _RangeSource:
    """Documents stored as byte ranges of one file."""

    def __init__(self, path, offsets: np.ndarray, lengths: np.ndarray, decode: Callable[[bytes], str]):
        self.path, self._offsets, self._lengths, self._decode = path, offsets, lengths, decode

    def __len__(self) -> int:
        return len(self._offsets)

    def __getitem__(self, i: int) -> str:
        return self._decode(read_range(self.path, int(self._offsets[i]), int(self._lengths[i])))


def text_source(path, unit: str, stats: DataStats) -> _RangeSource:
    """A text file as one document (`unit='file'`) or one per blank-line-separated paragraph."""
    path = as_path(path)
    if unit == "file":
        size = path.stat().length
        blank = size < 1 << 16 and not path.read_bytes().strip()  # (a big file is taken to hold text)
        if blank:
            stats.add(empty=1)
        ranges = [] if blank else [(0, size)]
    else:
        data = path.read_bytes()
        ranges, start = [], 0
        for m in [*re.finditer(rb"\n[ \t\r\f\v]*\n\s*", data), None]:
            stop = m.start() if m else len(data)
            chunk = data[start:stop]
            lead = len(chunk) - len(chunk.lstrip())
            body = chunk.strip()
            if body:
                ranges.append((start + lead, len(body)))
            start = m.end() if m else stop
    offsets = np.asarray([r[0] for r in ranges], np.int64)
    lengths = np.asarray([r[1] for r in ranges], np.int64)
    return _RangeSource(path, offsets, lengths, _decode_text)


def jsonl_source(path, field: str, on_error: str, stats: DataStats) -> _RangeSource:
    """One document per JSONL line, the string in `field`; lines with an empty string are left out."""
    offsets, lengths = scan_jsonl(path, lambda obj: bool(text_field_of(obj, field).strip()), on_error, stats)
    return _RangeSource(path, offsets, lengths, functools.partial(_decode_json_field, field=field))


def _decode_text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")  # plain text: a stray bad byte is not worth a stop


def _decode_json_field(raw: bytes, field: str) -> str:
    return json.loads(raw)[field]


class ArrayRecordSource:
    """Records of one ArrayRecord file as documents: utf-8 text or JSON objects with a text field.

    Decoded on access; a bad record raises DataError `path: record i: reason`, or is skipped
    (None) and counted in `stats` of the process that reads it.
    """

    def __init__(self, path, record_format: str, field: str, on_error: str, stats: DataStats):
        from grain.sources import ArrayRecordDataSource

        self.path, self._format, self._field, self._on_error, self._stats = path, record_format, field, on_error, stats
        self._source = ArrayRecordDataSource([array_record_path(path)])

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, i: int) -> str | None:
        raw = self._source[i]
        try:
            text = raw.decode("utf-8")
            if self._format == "json":
                text = text_field_of(json.loads(text), self._field)
        except (ValueError, UnicodeDecodeError) as e:
            if self._on_error == "raise":
                raise DataError(f"{path_str(self.path)}: record {i}: {_reason(e)}") from None
            self._stats.add(skipped=1)
            return None
        return text if text.strip() else None


_cache_dir: str | None = None


def array_record_path(path) -> str:
    """The path array_record's reader opens for `path`: a local file or a `gs://` object as it is,
    anything else a local copy (`local_copy`)."""
    text = path_str(path)
    return text if text.startswith("gs://") or not is_remote(path) else local_copy(path)


def local_copy(path) -> str:
    """A local file path for `path`: itself when local, else a copy in the read cache (made once)."""
    global _cache_dir
    if not is_remote(path):
        return str(as_path(path))
    if _cache_dir is None:
        _cache_dir = os.environ.get("LLADA_JAX_CACHE") or tempfile.mkdtemp(prefix="llada-jax-cache-")
        if not os.environ.get("LLADA_JAX_CACHE"):
            atexit.register(shutil.rmtree, _cache_dir, True)
    target = os.path.join(_cache_dir, str(path).replace("://", "/"))
    if not os.path.isfile(target):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        tmp = f"{target}.tmp{os.getpid()}"
        with as_path(path).open("rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 24)
        os.replace(tmp, target)
    return target


class DocumentSource(Sequence):
    """The concatenation of per-file sources: global index -> document text (None: skip it)."""

    def __init__(self, sources: Sequence[Sequence]):
        self._sources = [s for s in sources if len(s)]
        self._starts = np.cumsum([0] + [len(s) for s in self._sources])

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, i: int) -> str | None:
        if not 0 <= i < len(self):
            raise IndexError(f"document {i} is outside [0, {len(self)})")
        k = int(np.searchsorted(self._starts, i, side="right")) - 1
        return self._sources[k][i - int(self._starts[k])]

    def __iter__(self) -> Iterator[str | None]:
        for s in self._sources:
            for j in range(len(s)):
                yield s[j]


def open_documents(data_cfg, stats: DataStats | None = None) -> DocumentSource:
    """All documents of `data_cfg.files`, in file order; `stats` gets the indexing counts."""
    stats = stats if stats is not None else DataStats()
    sources = []
    for path in expand_files(data_cfg.files):
        kind = file_format(path, data_cfg.format)
        if kind == "text":
            sources.append(text_source(path, data_cfg.text_unit, stats))
        elif kind == "jsonl":
            sources.append(jsonl_source(path, data_cfg.text_field, data_cfg.on_error, stats))
        elif kind == "parquet":
            sources.append(ParquetSource(path, data_cfg.text_field, data_cfg.on_error, stats))
        else:
            sources.append(ArrayRecordSource(path, data_cfg.record_format, data_cfg.text_field,
                                             data_cfg.on_error, stats))
    docs = DocumentSource(sources)
    stats.add(documents=len(docs))
    if not len(docs):
        raise DataError(f"no documents in data.files {list(data_cfg.files)}")
    return docs
