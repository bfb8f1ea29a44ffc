"""Files that other processes read while we replace them: atomic writes, and noticing a change."""

from __future__ import annotations

import os
from pathlib import Path

FileStamp = tuple[int, int, int] | None


def file_stamp(path: Path) -> FileStamp:
    """Cheap change detection for one file: what stat() says (None if missing). The inode is part
    of it because write_file replaces a file by a rename, which may keep its size and mtime tick."""
    try:
        status = path.stat()
    except OSError:
        return None
    return (status.st_mtime_ns, status.st_size, status.st_ino)


def write_file(path: Path, content: bytes, mode: int) -> None:
    """Write content to path atomically, created with mode from the start (umask cannot widen it)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(descriptor, mode)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        temporary.replace(path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
