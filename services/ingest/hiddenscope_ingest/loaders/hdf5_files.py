"""HDF5 via h5py, refusing what can make a reader touch other files or run foreign code:
external and soft links on *any* component of the dataset path, external raw storage, virtual
datasets, and filters other than the built-in ones (no plugins are searched)."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from hiddenscope_ingest.errors import InvalidData, UnsafeContent
from hiddenscope_ingest.loaders.base import Limits, check_declared_size, check_numeric

# deflate, shuffle, fletcher32, szip, nbit, scaleoffset, lzf (built into h5py)
_ALLOWED_FILTERS = frozenset({1, 2, 3, 4, 5, 6, 32000})


@functools.cache
def _h5py() -> Any:
    os.environ.pop("HDF5_PLUGIN_PATH", None)
    import h5py
    import h5py.h5pl

    for i in reversed(range(h5py.h5pl.size())):  # no dynamically loaded filter plugins
        h5py.h5pl.remove(i)
    return h5py


def resolve_dataset(f: Any, key: str, name: str) -> Any:
    """The dataset at ``key``, walking each path component with ``getlink=True`` and refusing
    external and soft links anywhere on the way."""
    h5py = _h5py()
    parts = [p for p in key.split("/") if p]
    if not parts:
        raise InvalidData(f"{name}: an HDF5 source needs a dataset path as 'key'")
    node = f
    for i, part in enumerate(parts):
        if part in (".", ".."):
            raise InvalidData(f"{name}: bad HDF5 path {key!r}")
        if not isinstance(node, h5py.Group):
            raise InvalidData(f"{name}: {'/'.join(parts[:i])!r} is not a group")
        link = node.get(part, getlink=True)
        where = "/".join(parts[: i + 1])
        if link is None:
            known = ", ".join(list(node.keys())[:20])
            raise InvalidData(f"{name}: no HDF5 object {where!r} (has: {known})")
        if isinstance(link, h5py.ExternalLink):
            raise UnsafeContent(f"{name}: {where!r} is an external link; refused")
        if isinstance(link, h5py.SoftLink):
            raise UnsafeContent(f"{name}: {where!r} is a soft link; refused")
        if not isinstance(link, h5py.HardLink):
            raise UnsafeContent(f"{name}: {where!r} is a {type(link).__name__}; refused")
        node = node[part]
    if not isinstance(node, h5py.Dataset):
        raise InvalidData(f"{name}: {key!r} is not a dataset")
    return node


def check_dataset(d: Any, name: str, limits: Limits) -> None:
    if d.is_virtual:
        raise UnsafeContent(f"{name}: virtual datasets are refused")
    if d.external:
        raise UnsafeContent(f"{name}: datasets with external raw storage are refused")
    plist = d.id.get_create_plist()
    for i in range(plist.get_nfilters()):
        fid = plist.get_filter(i)[0]
        if fid not in _ALLOWED_FILTERS:
            raise UnsafeContent(f"{name}: HDF5 filter {fid} is not allowed")
    check_numeric(name, d.dtype)
    if d.shape is None or len(d.shape) == 0 or 0 in d.shape:
        raise InvalidData(f"{name}: the dataset is empty or a scalar (shape {d.shape})")
    check_declared_size(name, tuple(d.shape), d.dtype.itemsize, limits)


class Hdf5Source:
    def __init__(self, path: Path, key: str | None, name: str, limits: Limits) -> None:
        h5py = _h5py()
        self.name = name
        try:
            self.file = h5py.File(path, "r", locking=False)
        except OSError as exc:
            raise InvalidData(f"{name}: not a readable HDF5 file ({exc})") from None
        try:
            if key is None:
                keys = list(self.file.keys())
                if len(keys) != 1:
                    raise InvalidData(
                        f"{name}: the file has {len(keys)} top-level objects; name one as 'key'"
                    )
                key = keys[0]
            self.dataset = resolve_dataset(self.file, key, name)
            check_dataset(self.dataset, name, limits)
        except BaseException:
            self.file.close()
            raise
        self.shape: tuple[int, ...] = tuple(int(x) for x in self.dataset.shape)
        self.dtype: np.dtype[np.generic] = self.dataset.dtype

    def read(self, start: int, stop: int) -> npt.NDArray[np.generic]:
        try:
            return np.asarray(self.dataset[start:stop])
        except (OSError, ValueError) as exc:
            raise InvalidData(f"{self.name}: failed to read steps {start}..{stop}: {exc}") from None

    def close(self) -> None:
        self.file.close()


def open_hdf5(path: Path, key: str | None, name: str, limits: Limits) -> Hdf5Source:
    return Hdf5Source(path, key, name, limits)
