"""Safe loaders: every input format is opened as an :class:`~.base.ArraySource` (declared shape
and dtype checked before reading, read in row chunks) or parsed by streaming text readers.

Formats by file extension (or ``format`` in a :class:`~hiddenscope_ingest.manifest.SourceRef`):
``.npy``, ``.npz``, ``.safetensors``, ``.h5/.hdf5``, ``.parquet/.pq``, ``.arrow/.feather``,
text (``.txt``, ``.tokens``, ``.vocab``, ``.conll``, ``.conllu``), ``.dict``, FASTA
(``.fa``, ``.fasta``, ``.fna``, ``.fas``) and BED (``.bed``). Anything else
is 415 Unsupported format.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from hiddenscope_ingest.errors import InvalidData, InvalidManifest, UnsafeContent, UnsupportedFormat
from hiddenscope_ingest.loaders.base import ArraySource, Limits
from hiddenscope_ingest.manifest import SourceRef

EXTENSIONS: dict[str, str] = {
    ".npy": "npy",
    ".npz": "npz",
    ".safetensors": "safetensors",
    ".h5": "hdf5",
    ".hdf5": "hdf5",
    ".hdf": "hdf5",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".arrow": "arrow",
    ".feather": "arrow",
    ".ipc": "arrow",
    ".txt": "text",
    ".tokens": "text",
    ".vocab": "text",
    ".conll": "text",
    ".conllu": "text",
    ".tsv": "text",
    ".dict": "dict",
    ".fa": "fasta",
    ".fasta": "fasta",
    ".fna": "fasta",
    ".fas": "fasta",
    ".bed": "bed",
    ".yml": "yaml",
    ".yaml": "yaml",
    ".json": "json",
}
ARRAY_FORMATS = frozenset({"npy", "npz", "safetensors", "hdf5", "parquet", "arrow"})


def detect_format(filename: str, override: str | None = None) -> str:
    """The format of a file from its extension; raises :class:`UnsupportedFormat` (415)."""
    if override is not None:
        return override
    lower = filename.lower()
    for suffix in (".tar.gz", ".tgz", ".tar", ".zip"):
        if lower.endswith(suffix):
            return "archive"
    dot = lower.rfind(".")
    fmt = EXTENSIONS.get(lower[dot:]) if dot >= 0 else None
    if fmt is None:
        raise UnsupportedFormat(
            f"{filename}: unknown format; accepted: {', '.join(sorted(EXTENSIONS))}, "
            ".zip, .tar, .tar.gz (never pickles such as .pt/.pkl: convert them on the client)"
        )
    return fmt


def resolve_file(root: Path, rel: str) -> Path:
    """``root / rel`` that must exist and stay inside ``root`` (symlinks resolved)."""
    path = root / rel
    real_root = root.resolve()
    try:
        real = path.resolve(strict=True)
    except (FileNotFoundError, RuntimeError):
        raise InvalidManifest(f"the manifest names {rel!r}, which is not in the upload") from None
    if not real.is_relative_to(real_root):
        raise UnsafeContent(f"{rel!r} points outside the upload; refused")
    if not real.is_file():
        raise InvalidManifest(f"{rel!r} is not a regular file")
    return real


def open_array(root: Path, ref: SourceRef, name: str, limits: Limits) -> ArraySource:
    """Open the array ``ref`` names, checking its header; raises 4xx errors only."""
    fmt = detect_format(ref.file, ref.format)
    path = resolve_file(root, ref.file)
    label = f"{name} ({ref.file}{':' + ref.key if ref.key else ''})"
    try:
        if fmt == "npy":
            from hiddenscope_ingest.loaders.numpy_files import open_npy

            if ref.key:
                raise InvalidManifest(f"{label}: a .npy file holds one array; drop 'key'")
            return open_npy(path, label, limits)
        if fmt == "npz":
            from hiddenscope_ingest.loaders.numpy_files import open_npz

            return open_npz(path, ref.key, label, limits)
        if fmt == "safetensors":
            from hiddenscope_ingest.loaders.safetensors_files import open_safetensors

            return open_safetensors(path, ref.key, label, limits)
        if fmt == "hdf5":
            from hiddenscope_ingest.loaders.hdf5_files import open_hdf5

            return open_hdf5(path, ref.key, label, limits)
        if fmt == "parquet":
            from hiddenscope_ingest.loaders.arrow_files import open_parquet

            return open_parquet(path, ref.key, label, limits)
        if fmt == "arrow":
            from hiddenscope_ingest.loaders.arrow_files import open_arrow

            return open_arrow(path, ref.key, label, limits)
    except zipfile.BadZipFile as exc:
        raise InvalidData(f"{label}: not a valid zip/npz file ({exc})") from None
    except (OSError, EOFError) as exc:
        raise InvalidData(f"{label}: cannot read the file ({exc})") from None
    raise UnsupportedFormat(f"{label}: format {fmt!r} does not hold arrays")


__all__ = ["ARRAY_FORMATS", "ArraySource", "Limits", "detect_format", "open_array", "resolve_file"]
