"""The bundled default corpus: the English text of Python's documentation topics.

`pydoc_data.topics` ships with every CPython (about 465 kB of English prose and code), so the
quickstart and the tests have a real corpus without any download.
"""

from __future__ import annotations

import os
import re
from pathlib import Path


def default_corpus_topics() -> dict[str, str]:
    """Topic name -> text of `pydoc_data.topics`, in sorted order."""
    try:
        from pydoc_data.topics import topics
    except ImportError as e:  # some distributions strip it
        raise RuntimeError("this Python has no pydoc_data.topics: pass your own corpus files") from e
    return {name: topics[name].strip() + "\n" for name in sorted(topics)}


def default_corpus_text() -> str:
    """All topics joined by blank lines: one string of about 465 kB."""
    return "\n".join(default_corpus_topics().values())


def write_default_corpus(directory: str | os.PathLike) -> list[Path]:
    """Write one `NNN_<topic>.txt` file per topic (a document per file, in topic order); returns the paths.

    Existing files with the same content are left alone, so a second call is cheap.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (name, text) in enumerate(default_corpus_topics().items()):
        path = out / f"{i:03d}_{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.txt"
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
        paths.append(path)
    return paths
