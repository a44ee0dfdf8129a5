"""Files a job writes and reads: atomic writes (a crash or a kill never leaves half a file), JSON
results written that way, and JSON-lines records read back.

Every write goes to a temporary file in the same directory, is flushed to disk, then renamed over
the target (``os.replace`` is atomic). Used by checkpoints (:mod:`gridcam.runtime.checkpoint`),
evaluation results and per-image records, the study and the report pages.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

__all__ = ["atomic_file", "atomic_write_json", "read_jsonl"]


def _fsync_dir(directory: Path) -> None:
    # Make the rename itself durable; not every platform lets a directory be opened.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    """The process's umask, read without changing it where /proc says it (Linux), else set and
    put back at once."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temp file beside ``path`` for writing; on success fsync it and rename it onto
    ``path`` (``os.replace``), so a reader or a crash never sees half a file. On failure the temp
    file is removed and ``path`` is untouched. The file gets the mode a plain ``open()`` would
    give it (0666 less the umask), not mkstemp's 0600, so shared directories work."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file 0600; give it the mode open() would: 0666 less the umask.
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (never a half-written file)."""
    with atomic_file(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Parsed JSON objects of a JSON-lines file (per-image records, ``train_log.jsonl``); blank
    lines and a torn (unparsable) line of an interrupted write are ignored."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # the tail of an interrupted write
            if isinstance(rec, dict):
                yield rec
