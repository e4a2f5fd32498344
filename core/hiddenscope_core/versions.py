"""New versions of a published dataset: add or remove meta tracks without copying the big files.

A published dataset never changes (SPEC §1, §3). Changing its tracks publishes a **new version**:
a new dataset directory with a new id and ``version = parent.version + 1``, ``parent_id`` = the
id it was made from. :class:`VersionWriter` builds it in ``staging/<new id>``:

1. the new track files are written there (``tracks/<name>.parquet``, by the core's
   ``TrackWriter``: the same checks and layout as at ingest);
2. at :meth:`VersionWriter.publish`, under an exclusive lock on the name
   (``versions/locks/<name>.lock``, ``fcntl.flock``), every other file of the **current**
   version is hard-linked into staging (states, ``values.bin``, ``planes.bin``, ``rows.bin``,
   interval files, ``index.duckdb``, tokens, vocabulary, sequences, the tracks that stay: no
   byte is copied, the cost is one directory entry per file), a new ``manifest.json`` is
   written (tracks, sizes, ``version``, ``parent_id``, provenance ``parent_id``,
   ``tracks_added``, ``tracks_removed``), the new files and every directory are fsynced;
3. staging is renamed into ``datasets/<new id>``; a marker ``versions/superseded/<old id>``
   records when the old version stopped being current; a temporary symlink
   ``versions/tmp/<new id> -> ../datasets/<new id>`` is renamed over ``names/<name>``
   (``os.replace``: readers resolving the name see the old id or the new one, never neither).

Concurrent changes of one dataset never lose one another: the version is linked from whatever
version is current *when the lock is held*, so a second change is applied on top of the first
(compare-and-swap by serialisation). It fails with ``Conflict`` (409) only when the two changes
collide (both add the same track name), when the name now names a different dataset (deleted
and published again: every version of one dataset has the same ``origin_id``, the id of its
version 1), or when the caller addressed a version by id and that version is no longer current
(optimistic concurrency on request). ``NotFound`` (404) if the dataset was
deleted meanwhile. On any error nothing is published and the staging directory is removed.

The old version stays in ``datasets/<old id>``, complete and readable: processes that opened
it keep reading, and it can still be opened by id. :func:`collect_superseded` removes the
versions no name points at once they have been superseded for ``grace_seconds`` (the ingest
service's reconciler calls it; default 24 h). Since versions share their big files, keeping an
old version costs only the files that differ (the changed tracks) until it is collected.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy.typing as npt

from hiddenscope_core.build import TrackWriter
from hiddenscope_core.errors import Conflict, HiddenScopeError, InvalidData, NotFound
from hiddenscope_core.layout import MANIFEST, Layout
from hiddenscope_core.models import NAME_PATTERN, DatasetManifest, TrackInfo
from hiddenscope_core.reader import open_dataset

DEFAULT_GRACE_SECONDS = 24 * 3600.0
"""How long a superseded version stays on disk by default (readers that opened it keep going)."""
CHANGE_KEYS = ("job_id", "parent_id", "tracks_added", "tracks_removed")
"""Provenance keys describing one change: not inherited by the next version."""

_ID_RE = re.compile(r"^[A-Za-z0-9]{1,64}$")


class StorageUnsupported(HiddenScopeError):
    """The data root's file system cannot hard-link files (versions share files by links)."""

    status = 500
    title = "Storage does not support hard links"


def new_dataset_id() -> str:
    """A new dataset id (the same scheme as ``DatasetWriter``: 16 characters of [A-Za-z0-9])."""
    return secrets.token_urlsafe(12).replace("-", "x").replace("_", "y")


def current_id(data_root: str | os.PathLike[str], name: str) -> str | None:
    """The id ``names/<name>`` points at (``None`` if the name is not published)."""
    try:
        return Path(os.readlink(Layout(Path(data_root)).name_link(name))).name
    except (FileNotFoundError, OSError):
        return None


def resolve_current(data_root: str | os.PathLike[str], name_or_id: str) -> tuple[str, str, bool]:
    """``(name, current id, addressed_by_id)`` of the dataset ``name_or_id``.

    Raises:
        NotFound: no such dataset (or its name was deleted).
        Conflict: ``name_or_id`` is the id of a version that is no longer current.
    """
    root = Path(data_root)
    layout = Layout(root)
    if re.fullmatch(NAME_PATTERN, name_or_id):
        cur = current_id(root, name_or_id)
        if cur is not None:
            return name_or_id, cur, False
    if _ID_RE.fullmatch(name_or_id) and layout.manifest(name_or_id).exists():
        try:
            m = open_dataset(layout.dataset(name_or_id)).manifest
        except NotFound:
            raise NotFound(f"no dataset with name or id {name_or_id!r}") from None
        cur = current_id(root, m.name)
        if cur == name_or_id:
            return m.name, cur, True
        if cur is None:
            raise NotFound(f"dataset {name_or_id!r} ({m.name!r}) is no longer published")
        raise Conflict(
            f"dataset version {name_or_id!r} (version {m.version} of {m.name!r}) has been "
            f"superseded by {cur!r}; change the current version (address it by name, or by id "
            f"{cur!r})"
        )
    raise NotFound(f"no dataset with name or id {name_or_id!r}")


def origin_of(m: DatasetManifest) -> str:
    """The identity of a dataset across its versions: the id of its version 1."""
    return m.origin_id or m.id


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def name_lock(data_root: Path, name: str) -> Iterator[None]:
    """Exclusive lock on the versions of ``name`` (across processes; ``fcntl.flock``)."""
    path = Layout.of(data_root).version_lock(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _link_tree(src: Path, dst: Path, skip: set[str]) -> int:
    """Hard-link every file below ``src`` into the same place below ``dst`` (directories are
    created), except the relative POSIX paths in ``skip``. Returns the number of links."""
    n = 0
    for dirpath, _dirnames, filenames in os.walk(src):
        here = Path(dirpath)
        rel = here.relative_to(src)
        (dst / rel).mkdir(parents=True, exist_ok=True)
        for fn in filenames:
            if (rel / fn).as_posix() in skip:
                continue
            try:
                os.link(here / fn, dst / rel / fn, follow_symlinks=False)
            except OSError as exc:
                if exc.errno in (errno.EPERM, errno.EXDEV, errno.EOPNOTSUPP, errno.EMLINK):
                    raise StorageUnsupported(
                        f"cannot hard-link {here / fn} into the new version ({exc.strerror}); "
                        "the data root must be one file system that supports hard links"
                    ) from exc
                raise
            n += 1
    return n


class VersionWriter:
    """Builds the next version of a published dataset (see the module docstring).

    ``VersionWriter.create(data_root, name_or_id)``, then ``add_track``/``remove_track``, then
    ``publish()``. As a context manager it aborts unless published. Not thread-safe.
    """

    def __init__(
        self,
        data_root: Path,
        name: str,
        base: DatasetManifest,
        expect_id: str | None,
        provenance: dict[str, Any],
    ) -> None:
        self.data_root = data_root
        self.layout = Layout(data_root)
        self.name = name
        self.base = base
        self.expect_id = expect_id
        self.provenance = provenance
        self.id = new_dataset_id()
        self.staging = self.layout.staging(self.id)
        self._tracks: dict[str, TrackWriter] = {}
        self._removed: list[str] = []
        self._state = "open"  # open | published | aborted
        self.n_linked = 0

    @classmethod
    def create(
        cls,
        data_root: str | os.PathLike[str],
        name_or_id: str,
        *,
        provenance: dict[str, Any] | None = None,
    ) -> VersionWriter:
        """Start the next version of ``name_or_id`` (a name: whatever version is current at
        publication; an id: that version, which must still be current then).

        Raises:
            NotFound: unknown dataset. Conflict: ``name_or_id`` is a superseded version's id.
        """
        root = Path(data_root)
        name, cur, by_id = resolve_current(root, name_or_id)
        base = open_dataset(Layout(root).dataset(cur)).manifest
        w = cls(root, name, base, cur if by_id else None, dict(provenance or {}))
        (w.staging / "tracks").mkdir(parents=True)
        return w

    # -- what TrackWriter needs of its owner

    @property
    def n_steps(self) -> int:
        return self.base.n_steps

    def check_open(self) -> None:
        """Raise ``Conflict`` once this version is published or aborted."""
        if self._state != "open":
            raise Conflict(
                f"this version of {self.name!r} is {self._state}; it can no longer change"
            )

    # -- context manager

    def __enter__(self) -> VersionWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._state == "open":
            self.abort()

    # -- changes

    def _present(self) -> set[str]:
        return {t.name for t in self.base.tracks} - set(self._removed)

    def add_track(
        self,
        info: TrackInfo,
        values: npt.ArrayLike | None = None,
        *,
        ids: npt.ArrayLike | None = None,
        scores: npt.ArrayLike | None = None,
    ) -> TrackWriter:
        """Declare a new meta track (exactly as ``DatasetWriter.add_track``: write its rows with
        the returned ``TrackWriter``, ``n_steps`` in all).

        Raises:
            Conflict: the dataset (or this change) already has a track of that name; remove it
                first (``remove_track``) to replace it.
            InvalidData: bad data.
        """
        self.check_open()
        if info.name in self._tracks:
            raise Conflict(f"track {info.name!r} was already added in this change")
        if info.name in self._present():
            raise Conflict(
                f"dataset {self.name!r} already has a track named {info.name!r}; choose another "
                "name or remove that track first"
            )
        tw = TrackWriter(self, info)
        self._tracks[info.name] = tw
        if values is not None or ids is not None or scores is not None:
            tw.write(values, ids=ids, scores=scores)
        return tw

    def remove_track(self, name: str) -> None:
        """Leave track ``name`` out of the new version.

        Raises:
            NotFound: the dataset has no such track. Conflict: it was added in this change.
        """
        self.check_open()
        if name in self._tracks:
            raise Conflict(f"track {name!r} was added in this change; it cannot be removed")
        if name not in self._present():
            known = ", ".join(sorted(self._present())) or "none"
            raise NotFound(f"dataset {self.name!r} has no track {name!r}; it has: {known}")
        self._removed.append(name)

    # -- publication

    def abort(self) -> None:
        """Discard the change; the staging directory is removed. Idempotent."""
        if self._state == "published":
            return
        self._state = "aborted"
        for tw in self._tracks.values():
            tw.close_quietly()
        shutil.rmtree(self.staging, ignore_errors=True)

    def publish(self) -> DatasetManifest:
        """Link, write the manifest, fsync, rename into ``datasets/`` and switch the name.

        Raises:
            Conflict: see the module docstring (nothing is published).
            NotFound: the dataset (or a track being removed) was deleted meanwhile.
            InvalidData: a track with fewer rows than ``n_steps``, or no change at all.
        """
        self.check_open()
        try:
            if not self._tracks and not self._removed:
                raise InvalidData("nothing to change: add or remove at least one track")
            for tw in self._tracks.values():
                tw.finish()
            with name_lock(self.data_root, self.name):
                return self._publish_locked()
        except BaseException:
            self.abort()
            raise

    def _publish_locked(self) -> DatasetManifest:
        root = self.data_root
        layout = self.layout
        cur_id = current_id(root, self.name)
        if cur_id is None:
            raise NotFound(f"dataset {self.name!r} was deleted meanwhile; nothing was changed")
        if self.expect_id is not None and cur_id != self.expect_id:
            raise Conflict(
                f"dataset version {self.expect_id!r} of {self.name!r} was superseded by "
                f"{cur_id!r} meanwhile; nothing was changed (retry on the current version)"
            )
        cur_dir = layout.dataset(cur_id)
        cur = open_dataset(cur_dir).manifest
        if origin_of(cur) != origin_of(self.base) or cur.n_steps != self.base.n_steps:
            raise Conflict(
                f"the name {self.name!r} now names another dataset (deleted and published "
                "again meanwhile); nothing was changed"
            )
        existing = {t.name for t in cur.tracks}
        for name in self._removed:
            if name not in existing:
                raise NotFound(
                    f"track {name!r} of {self.name!r} was removed meanwhile; nothing was changed"
                )
        for name in self._tracks:
            if name in existing and name not in self._removed:
                raise Conflict(
                    f"a track named {name!r} was added to {self.name!r} meanwhile; nothing was "
                    "changed"
                )
        changed = {f"tracks/{n}.parquet" for n in (*self._removed, *self._tracks)}
        try:
            self.n_linked = _link_tree(cur_dir, self.staging, changed | {MANIFEST})
        except FileNotFoundError:
            raise NotFound(f"dataset {self.name!r} was deleted meanwhile") from None

        sizes = {k: v for k, v in cur.sizes.items() if k not in changed}
        for n in self._tracks:
            sizes[f"tracks/{n}.parquet"] = (self.staging / "tracks" / f"{n}.parquet").stat().st_size
        inherited = {k: v for k, v in cur.provenance.items() if k not in CHANGE_KEYS}
        provenance = {
            **inherited,
            **self.provenance,
            "parent_id": cur.id,
            "tracks_added": list(self._tracks),
            "tracks_removed": list(self._removed),
        }
        tracks = [t for t in cur.tracks if t.name not in self._removed]
        tracks += [tw.info for tw in self._tracks.values()]
        manifest = DatasetManifest.model_validate(
            {
                **cur.model_dump(),
                "id": self.id,
                "version": cur.version + 1,
                "parent_id": cur.id,
                "origin_id": origin_of(cur),
                "tracks": [t.model_dump() for t in tracks],
                "sizes": sizes,
                "created_at": datetime.now(UTC),
                "provenance": provenance,
            }
        )
        (self.staging / MANIFEST).write_text(manifest.model_dump_json(indent=2))
        # durable: the new files' data and every directory entry (links included); the linked
        # files' data was made durable when the version that wrote them was published
        _fsync(self.staging / MANIFEST)
        for n in self._tracks:
            _fsync(self.staging / "tracks" / f"{n}.parquet")
        for dirpath, _d, _f in os.walk(self.staging, topdown=False):
            _fsync(Path(dirpath))

        final = layout.dataset(self.id)
        marker = layout.superseded_marker(cur_id)
        tmp_link = layout.name_tmp(self.id)
        os.rename(self.staging, final)
        try:
            _fsync(layout.datasets_dir)
            for d in (layout.superseded_dir, layout.name_tmp_dir):
                d.mkdir(parents=True, exist_ok=True)
            marker.write_text(
                json.dumps({"name": self.name, "superseded_by": self.id, "at": time.time()})
            )
            _fsync(marker)
            _fsync(marker.parent)
            with contextlib.suppress(FileNotFoundError):
                tmp_link.unlink()
            os.symlink(layout.name_target(self.id), tmp_link)
            os.replace(tmp_link, layout.name_link(self.name))
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp_link.unlink()
            with contextlib.suppress(FileNotFoundError):
                marker.unlink()
            shutil.rmtree(final, ignore_errors=True)
            raise
        self._state = "published"
        _fsync(layout.names_dir)
        return manifest


def add_tracks(
    data_root: str | os.PathLike[str],
    name_or_id: str,
    tracks: list[tuple[TrackInfo, dict[str, npt.ArrayLike]]],
    *,
    remove: list[str] | None = None,
    provenance: dict[str, Any] | None = None,
) -> DatasetManifest:
    """One-call form for in-memory data: ``tracks`` = ``[(info, {"values": ...})]`` or
    ``[(info, {"ids": ..., "scores": ...})]``; ``remove`` = track names to drop. Returns the new
    version's manifest (raises as :class:`VersionWriter`)."""
    with VersionWriter.create(data_root, name_or_id, provenance=provenance) as w:
        for name in remove or []:
            w.remove_track(name)
        for info, data in tracks:
            w.add_track(info, data.get("values"), ids=data.get("ids"), scores=data.get("scores"))
        return w.publish()


def _named_ids(root: Path) -> set[str]:
    out: set[str] = set()
    names = Layout(root).names_dir
    if names.is_dir():
        for entry in os.scandir(names):
            if entry.is_symlink():
                out.add(Path(os.readlink(entry.path)).name)
    return out


def _mtime(path: Path) -> float:
    try:
        return path.lstat().st_mtime
    except FileNotFoundError:
        return 0.0


def collect_superseded(
    data_root: str | os.PathLike[str],
    grace_seconds: float = DEFAULT_GRACE_SECONDS,
    *,
    now: float | None = None,
    dry_run: bool = False,
) -> list[str]:
    """Remove the dataset versions no name points at once they have been unnamed for
    ``grace_seconds``; returns their ids.

    "Unnamed since" is the time of the ``versions/superseded/<id>`` marker written when a newer
    version took the name, else (a version orphaned by a crash, or whose name was deleted) the
    directory's own modification time. A version published a moment ago and not yet named (the
    instant between the rename into ``datasets/`` and the name switch) is fresh, so never
    removed. Markers of versions that are gone, and temporary name links of switches that died
    midway, are removed too.
    """
    root = Path(data_root)
    layout = Layout(root)
    datasets = layout.datasets_dir
    markers = layout.superseded_dir
    removed: list[str] = []
    if not datasets.is_dir():
        return removed
    now = time.time() if now is None else now
    named = _named_ids(root)
    for entry in sorted(os.scandir(datasets), key=lambda e: e.name):
        if entry.name in named or not entry.is_dir(follow_symlinks=False):
            continue
        path = Path(entry.path)
        since = _mtime(markers / entry.name) or max(_mtime(path), _mtime(path / MANIFEST))
        if now - since < grace_seconds:
            continue
        if entry.name in _named_ids(root):  # named again meanwhile (cannot happen today)
            continue
        removed.append(entry.name)
        if not dry_run:
            shutil.rmtree(path, ignore_errors=True)
            (markers / entry.name).unlink(missing_ok=True)
    if not dry_run:
        if markers.is_dir():
            for marker in markers.iterdir():
                gone = not (datasets / marker.name).exists()
                if gone and now - _mtime(marker) >= grace_seconds:
                    marker.unlink(missing_ok=True)
        tmp = layout.name_tmp_dir
        if tmp.is_dir():  # name links of switches that died before the rename
            for link in tmp.iterdir():
                if now - _mtime(link) >= grace_seconds:
                    link.unlink(missing_ok=True)
    return removed


__all__ = [
    "DEFAULT_GRACE_SECONDS",
    "StorageUnsupported",
    "VersionWriter",
    "add_tracks",
    "collect_superseded",
    "current_id",
    "name_lock",
    "origin_of",
    "resolve_current",
]
