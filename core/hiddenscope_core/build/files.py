"""File helpers of the build: durable publication (fsync) and removal of a build's directory
while other processes may still write into it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
from pathlib import Path

from hiddenscope_core.layout import Layout


def fsync_path(path: Path) -> None:
    """fsync one file or directory."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and directory below ``root`` (so the rename publishes durable data)."""
    for dirpath, _dirnames, filenames in os.walk(root):
        for fn in filenames:
            fsync_path(Path(dirpath) / fn)
        fsync_path(Path(dirpath))


def dir_size(path: Path) -> int:
    """Bytes of a file, or of all files below a directory."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def remove_build_dir(data_root: Path, directory: Path) -> None:
    """Remove a build's directory although another process may still be writing into it (a
    helper mid-shard of a sharded build). It is first renamed into ``<data_root>/trash``, so
    that the build is gone at once: every later open by its path fails (a helper then sees the
    build gone and stops) and nothing can recreate it. Then the renamed tree is removed; a file
    a writer created in it meanwhile makes a removal fail, so it is retried a few times, and
    what still remains is swept by the ingest reconciler (``trash``)."""
    trash = Layout.of(data_root).trash_for(directory)
    try:
        trash.parent.mkdir(exist_ok=True)
        os.rename(directory, trash)
    except FileNotFoundError:
        if not directory.exists():
            return  # already gone
        trash = directory  # no trash directory could be made: remove in place
    except OSError:
        trash = directory
    for attempt in range(20):
        shutil.rmtree(trash, ignore_errors=True)
        if not os.path.lexists(trash):
            return
        time.sleep(0.01 * (attempt + 1))


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``path`` by a rename, so that a reader sees the old or the new file whole."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
