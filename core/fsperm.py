"""Private files on disk: the data directory holds device secret hashes, token hashes, the audit log and raw
rejected payloads, so it is created 0700 and its databases 0600, whatever the umask.

SQLite creates a database's ``-wal`` and ``-shm`` files with the permissions of the database file itself, so a
database created here 0600 keeps its WAL 0600 too.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def private_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) if absent; the directory itself 0700. An existing one is left alone."""
    if not path.exists():
        path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
        os.chmod(path, PRIVATE_DIR)  # mkdir's mode is masked by the umask; 0700 only loses bits to it anyway


def private_file(path: Path) -> None:
    """Create an empty ``path`` with mode 0600 if absent (its directory 0700 if absent); an existing file is kept.

    An empty file is a valid new SQLite database: SQLite writes its header on first use and creates the WAL and
    shared-memory files with this file's mode."""
    private_dir(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    except FileExistsError:
        return
    os.close(fd)


def sqlite_files(db: Path) -> list[Path]:
    """A SQLite database and its side files (those that exist)."""
    return [p for p in (db, *(Path(f"{db}{suffix}") for suffix in SQLITE_SIDE_FILES)) if p.exists()]


def loose(paths: Iterable[Path]) -> list[tuple[Path, int]]:
    """The existing paths that group or other users may access, with their mode (bits 0o777)."""
    out: list[tuple[Path, int]] = []
    for p in paths:
        try:
            mode = stat.S_IMODE(p.stat().st_mode)
        except OSError:
            continue
        if mode & 0o077:
            out.append((p, mode))
    return out
