"""Archive extraction (.zip, .tar, .tar.gz/.tgz) with member checks: relative names only (no
``..``, no absolute paths), regular files and directories only (no symlinks, hard links or
devices), caps on member count, total extracted bytes (counted while writing, since declared
sizes can lie) and the compression ratio of zip members."""

from __future__ import annotations

import stat
import tarfile
import zipfile
from pathlib import Path
from typing import IO

from hiddenscope_ingest.errors import InvalidData, TooLarge, UnsafeContent
from hiddenscope_ingest.loaders.base import Limits
from hiddenscope_ingest.manifest import check_relative


def _target(dest: Path, member: str, archive: str) -> Path:
    clean = member.rstrip("/")
    try:
        rel = check_relative(clean)
    except ValueError:
        raise UnsafeContent(f"{archive}: member {member!r} escapes the archive; refused") from None
    target = dest / rel
    if not target.resolve().is_relative_to(dest.resolve()):
        raise UnsafeContent(f"{archive}: member {member!r} escapes the archive; refused")
    return target


class _Budget:
    def __init__(self, archive: str, limits: Limits) -> None:
        self.archive = archive
        self.left = limits.max_archive_bytes
        self.members = limits.max_archive_members

    def member(self) -> None:
        self.members -= 1
        if self.members < 0:
            raise TooLarge(f"{self.archive}: too many members in the archive")

    def copy(self, src: IO[bytes], target: Path, declared: int | None) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            raise InvalidData(f"{self.archive}: member {target.name!r} appears twice")
        written = 0
        with open(target, "xb") as out:
            while chunk := src.read(1 << 20):
                written += len(chunk)
                self.left -= len(chunk)
                if self.left < 0:
                    raise TooLarge(
                        f"{self.archive}: extracted content exceeds the limit (decompression bomb?)"
                    )
                if declared is not None and written > declared:
                    raise InvalidData(f"{self.archive}: member {target.name!r} exceeds its size")
                out.write(chunk)


def extract_archive(path: Path, dest: Path, limits: Limits, label: str | None = None) -> None:
    """Extract ``path`` into the (new or empty) directory ``dest``.

    Raises :class:`UnsafeContent`, :class:`TooLarge` or :class:`InvalidData`; ``dest`` may hold
    partial output then (the caller removes it)."""
    name = label or path.name
    dest.mkdir(parents=True, exist_ok=True)
    budget = _Budget(name, limits)
    lower = path.name.lower()
    try:
        if lower.endswith(".zip"):
            with zipfile.ZipFile(path) as zf:
                infos = zf.infolist()
                if len(infos) > limits.max_archive_members:
                    raise TooLarge(f"{name}: {len(infos)} members in the archive")
                if sum(i.file_size for i in infos) > limits.max_archive_bytes:
                    raise TooLarge(f"{name}: the archive declares more than the size limit")
                for info in infos:
                    budget.member()
                    mode = (info.external_attr >> 16) & 0o170000
                    if mode and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                        raise UnsafeContent(
                            f"{name}: member {info.filename!r} is a link or special file; refused"
                        )
                    if info.flag_bits & 0x1:
                        raise InvalidData(f"{name}: encrypted members are not supported")
                    target = _target(dest, info.filename, name)
                    if info.is_dir():
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    if (
                        info.file_size > 2** 20
                        and info.file_size
                        > limits.max_compression_ratio * max(1, info.compress_size)
                    ):
                        raise TooLarge(
                            f"{name}: member {info.filename!r} compresses too well (bomb?)"
                        )
                    with zf.open(info) as src:
                        budget.copy(src, target, info.file_size)
        elif lower.endswith((".tar", ".tar.gz", ".tgz")):
            with tarfile.open(path, mode="r:*") as tf:
                for member in tf:  # streaming: members are checked one by one
                    budget.member()
                    target = _target(dest, member.name, name)
                    if member.isdir():
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    if not member.isreg():
                        raise UnsafeContent(
                            f"{name}: member {member.name!r} is a link or special file; refused"
                        )
                    member_file = tf.extractfile(member)
                    if member_file is None:
                        raise InvalidData(f"{name}: cannot read member {member.name!r}")
                    with member_file:
                        budget.copy(member_file, target, member.size)
        else:
            raise InvalidData(f"{name}: not an archive (.zip, .tar, .tar.gz, .tgz)")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
        raise InvalidData(f"{name}: a broken archive ({exc})") from None
