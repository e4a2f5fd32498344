"""Every path under a data root, in one place (SPEC §3; ``docs/architecture.md``).

The services and the core's writers, readers and version code ask a :class:`Layout` for a path;
none of them joins directory names by hand, so the layout can change in one file::

    <root>/
      datasets/<id>/              a published dataset (immutable)
      names/<name> -> ../datasets/<id>
      staging/<id>/               a build in progress; staging/<id>/build/ its sharded state
      trash/<id>.<hex>/           an aborted build on its way out
      uploads/<job id>/           a job's uploaded files; uploads/<job id>.work/ its scratch
      versions/locks/<name>.lock  the flock serialising a name's versions
      versions/superseded/<id>    when version <id> stopped being current
      versions/tmp/<id>           a name link before it is renamed over names/<name>
      cache/                      the match service's derived caches

``uploads`` and ``cache`` can live elsewhere (a faster or a larger disk): pass them to the
constructor. Nothing here touches the disk except :meth:`Layout.ensure` and
:meth:`Layout.trash_for` (which only makes a name).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

DATASETS = "datasets"
NAMES = "names"
STAGING = "staging"
TRASH = "trash"
UPLOADS = "uploads"
VERSIONS = "versions"
CACHE = "cache"
MANIFEST = "manifest.json"
BUILD = "build"
WORK_SUFFIX = ".work"


@dataclass(frozen=True)
class Layout:
    """The directory layout of one data root.

    ``uploads`` and ``cache`` default to ``<root>/uploads`` and ``<root>/cache``.
    """

    root: Path
    uploads: Path | None = None
    cache: Path | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @classmethod
    def of(cls, root: Path | str | Layout) -> Layout:
        """``root`` as a layout (a layout is returned as it is)."""
        return root if isinstance(root, Layout) else cls(Path(root))

    # -- top-level directories ----------------------------------------------------------------

    @property
    def datasets_dir(self) -> Path:
        return self.root / DATASETS

    @property
    def names_dir(self) -> Path:
        return self.root / NAMES

    @property
    def staging_dir(self) -> Path:
        return self.root / STAGING

    @property
    def trash_dir(self) -> Path:
        return self.root / TRASH

    @property
    def uploads_dir(self) -> Path:
        return self.uploads if self.uploads is not None else self.root / UPLOADS

    @property
    def versions_dir(self) -> Path:
        return self.root / VERSIONS

    @property
    def cache_dir(self) -> Path:
        return self.cache if self.cache is not None else self.root / CACHE

    @property
    def locks_dir(self) -> Path:
        return self.versions_dir / "locks"

    @property
    def superseded_dir(self) -> Path:
        return self.versions_dir / "superseded"

    @property
    def name_tmp_dir(self) -> Path:
        return self.versions_dir / "tmp"

    # -- one item -----------------------------------------------------------------------------

    def dataset(self, dataset_id: str) -> Path:
        """The directory of published dataset ``dataset_id``."""
        return self.datasets_dir / dataset_id

    def manifest(self, dataset_id: str) -> Path:
        return self.dataset(dataset_id) / MANIFEST

    def name_link(self, name: str) -> Path:
        """The symlink ``names/<name>`` (its target is ``../datasets/<id>``)."""
        return self.names_dir / name

    @staticmethod
    def name_target(dataset_id: str) -> Path:
        """What a name link points at: relative, so that the data root can move."""
        return Path("..") / DATASETS / dataset_id

    def staging(self, dataset_id: str) -> Path:
        """The staging directory of a build in progress."""
        return self.staging_dir / dataset_id

    def build_state(self, dataset_id: str) -> Path:
        """The sharded build's state inside a staging directory."""
        return self.staging(dataset_id) / BUILD

    def trash_for(self, directory: Path) -> Path:
        """A fresh name under ``trash/`` for a directory on its way out."""
        return self.trash_dir / f"{directory.name}.{secrets.token_hex(4)}"

    def upload(self, job_id: str) -> Path:
        """A job's uploaded files."""
        return self.uploads_dir / job_id

    def work(self, job_id: str) -> Path:
        """A job's scratch directory beside its uploads (decompressed archives, text files)."""
        return self.uploads_dir / f"{job_id}{WORK_SUFFIX}"

    def version_lock(self, name: str) -> Path:
        return self.locks_dir / f"{name}.lock"

    def superseded_marker(self, dataset_id: str) -> Path:
        return self.superseded_dir / dataset_id

    def name_tmp(self, dataset_id: str) -> Path:
        return self.name_tmp_dir / dataset_id

    def ensure(self) -> None:
        """Create the top-level directories that writers rename into (idempotent)."""
        for d in (self.datasets_dir, self.names_dir, self.staging_dir):
            d.mkdir(parents=True, exist_ok=True)
