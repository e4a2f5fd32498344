"""Genomes and interval annotations: FASTA (tokens = bases, one sequence per record) and BED
(0-based, half-open intervals → a discrete track aligned to steps).

Both are streamed: a FASTA file is read line by line and its bases are appended as int32 token
ids to a file in the work directory (memory-mapped afterwards), so no chromosome is ever held as
one string; a BED track is painted into an int32 label file of ``T`` entries in the work
directory, interval by interval, in file order (so where intervals overlap, the **later line
wins**). Memory is bounded by one line, the sequence names and the label dictionary.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from hiddenscope_ingest.errors import InvalidData, TooLarge
from hiddenscope_ingest.loaders.base import Limits, NumpySource

#: the first token ids of every FASTA vocabulary; other letters get ids in order of appearance
BASES = ("A", "C", "G", "T", "N")
# IUPAC nucleotide and amino-acid letters, plus gap and stop symbols
_ALLOWED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ-*.")
_MAX_NAMES_BYTES = 1 << 30
_WRITE_ROWS = 1 << 20


def _binary_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with open(path, "rb") as f:
        for no, line in enumerate(f, start=1):
            yield no, line.rstrip(b"\r\n")


@dataclass
class FastaText:
    ids: NumpySource
    vocab: list[str]
    sequence_starts: list[int]
    sequence_names: list[str]


def read_fasta(
    path: Path, name: str, work_dir: Path, limits: Limits, *, uppercase: bool = True
) -> FastaText:
    """One sequence per ``>`` record (its name: the header's first word), one token per base.

    The vocabulary starts with ``A C G T N``; other letters (IUPAC codes, lowercase when
    ``uppercase`` is false) get the next ids in order of first appearance. Raises
    :class:`InvalidData` for sequence data before the first header, empty records, duplicate
    names and characters that are not letters, ``-``, ``*`` or ``.``."""
    lut = np.full(256, -1, dtype=np.int32)
    vocab: list[str] = []
    for b in BASES:
        lut[ord(b)] = len(vocab)
        vocab.append(b)
    if uppercase:
        for b in BASES:
            lut[ord(b.lower())] = lut[ord(b)]
    allowed = set(_ALLOWED) | {c + 32 for c in range(65, 91)}  # and lowercase letters
    starts: list[int] = []
    names: list[str] = []
    seen: set[str] = set()
    names_bytes = 0
    n = 0
    out_path = work_dir / "fasta-bases.i32"
    with open(out_path, "wb") as out:
        for no, line in _binary_lines(path):
            if not line or line.startswith(b";"):
                continue
            if line.startswith(b">"):
                if starts and n == starts[-1]:
                    raise InvalidData(f"{name}: record {names[-1]!r} (before line {no}) is empty")
                try:
                    header = line[1:].decode("utf-8").strip()
                except UnicodeDecodeError:
                    raise InvalidData(f"{name}: line {no}: the header is not UTF-8") from None
                rec = header.split()[0] if header else ""
                if not rec:
                    raise InvalidData(f"{name}: line {no}: a '>' header without a name")
                if rec in seen:
                    raise InvalidData(f"{name}: line {no}: record name {rec!r} appears twice")
                seen.add(rec)
                names_bytes += len(rec)
                if names_bytes > _MAX_NAMES_BYTES or len(names) >= limits.max_vocab_size:
                    raise TooLarge(f"{name}: too many records")
                names.append(rec)
                starts.append(n)
                continue
            if not starts:
                raise InvalidData(f"{name}: line {no}: sequence data before the first '>' header")
            raw = np.frombuffer(line.strip(), dtype=np.uint8)
            ids = lut[raw]
            if (ids < 0).any():
                for c in np.unique(raw[ids < 0]).tolist():
                    if c not in allowed:
                        raise InvalidData(
                            f"{name}: line {no}: {chr(c)!r} is not a base or IUPAC letter"
                        )
                    letter = chr(c).upper() if uppercase else chr(c)
                    code = ord(letter)
                    if lut[code] < 0:
                        lut[code] = len(vocab)
                        vocab.append(letter)
                    lut[c] = lut[code]
                ids = lut[raw]
            out.write(ids.astype(np.int32).tobytes())
            n += len(ids)
    if not starts:
        raise InvalidData(f"{name}: no '>' records")
    if n == starts[-1]:
        raise InvalidData(f"{name}: record {names[-1]!r} is empty")
    arr = np.memmap(out_path, dtype=np.int32, mode="r", shape=(n,))
    return FastaText(NumpySource(name, arr), vocab, starts, names)


@dataclass
class BedTrack:
    labels: NumpySource
    texts: list[str]
    n_intervals: int
    n_skipped: int


def read_bed(
    path: Path,
    name: str,
    track: str,
    sequence_starts: npt.NDArray[np.int64],
    sequence_names: list[str],
    n_steps: int,
    work_dir: Path,
    limits: Limits,
    *,
    background: str = "",
    skip_unknown: bool = False,
) -> BedTrack:
    """Paint BED intervals ``chrom start end [name ...]`` (0-based, half-open, whitespace or tab
    separated; ``track``/``browser``/``#`` lines skipped) onto steps: base ``i`` of sequence
    ``chrom`` is step ``start(chrom) + i``.

    Label 0 is ``background`` (steps outside every interval); an interval's label is its name
    column, or the track's name when there is none (or it is ``.``). Later lines overwrite
    earlier ones where intervals overlap. An interval on a sequence the dataset does not have is
    an error unless ``skip_unknown``; one reaching past its sequence's end is an error."""
    ends = np.append(sequence_starts[1:], n_steps).astype(np.int64)
    index = {s: i for i, s in enumerate(sequence_names)}
    texts = [background]
    label_ids: dict[str, int] = {}
    out_path = work_dir / f"bed-{track}.i32"
    labels = np.memmap(out_path, dtype=np.int32, mode="w+", shape=(n_steps,))
    # the file is created sparse (zeros = background); intervals are written in file order
    n_intervals = 0
    n_skipped = 0
    for no, raw in _binary_lines(path):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidData(f"{name}: line {no} is not UTF-8 text") from None
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", "track", "browser")):
            continue
        cols = stripped.split("\t") if "\t" in stripped else stripped.split()
        if len(cols) < 3:
            raise InvalidData(f"{name}: line {no}: expected 'chrom start end [name]'")
        chrom = cols[0]
        try:
            start, end = int(cols[1]), int(cols[2])
        except ValueError:
            raise InvalidData(f"{name}: line {no}: start and end must be integers") from None
        if start < 0 or end < start:
            raise InvalidData(f"{name}: line {no}: need 0 <= start <= end, got {start} {end}")
        seq = index.get(chrom)
        if seq is None:
            if skip_unknown:
                n_skipped += 1
                continue
            raise InvalidData(
                f"{name}: line {no}: sequence {chrom[:80]!r} is not in the dataset "
                "(set skip_unknown: true to ignore such intervals)"
            )
        base, length = int(sequence_starts[seq]), int(ends[seq] - sequence_starts[seq])
        if end > length:
            raise InvalidData(
                f"{name}: line {no}: interval {start}-{end} ends past {chrom!r} ({length} steps)"
            )
        label = cols[3] if len(cols) > 3 and cols[3] != "." else track
        lid = label_ids.get(label)
        if lid is None:
            if len(texts) >= limits.max_vocab_size:
                raise TooLarge(f"{name}: more than {limits.max_vocab_size} distinct names")
            lid = label_ids[label] = len(texts)
            texts.append(label)
        for lo in range(base + start, base + end, _WRITE_ROWS):
            labels[lo : min(base + end, lo + _WRITE_ROWS)] = lid
        n_intervals += 1
    labels.flush()
    del labels
    arr = np.memmap(out_path, dtype=np.int32, mode="r", shape=(n_steps,))
    return BedTrack(NumpySource(name, arr), texts, n_intervals, n_skipped)
