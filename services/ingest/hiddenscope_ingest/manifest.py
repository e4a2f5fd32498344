"""The ingest manifest: what an upload (or a server-side directory) holds and how to read it.

Sent as JSON or YAML (the ``manifest`` part of a multipart upload, or ``manifest`` in a JSON
request). File names are relative to the upload (or to the extracted ``archive``, or to the
server-side ``path``). See ``docs/ingest.md`` for one example per format.
"""

from __future__ import annotations

import json
import re
from pathlib import PurePosixPath
from typing import Any, Literal

import yaml
from hiddenscope_core.models import NAME_PATTERN, StorageDType, TrackKind, Transform
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hiddenscope_ingest.errors import InvalidManifest

SourceFormat = Literal[
    "npy", "npz", "safetensors", "hdf5", "parquet", "arrow", "text", "dict", "fasta", "bed"
]  # fmt: skip
NanPolicy = Literal["reject", "allow"]
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def check_relative(path: str) -> str:
    """A relative POSIX path without ``..``, absolute parts or backslashes."""
    p = PurePosixPath(path)
    if not path or path.startswith("/") or "\\" in path or "\x00" in path:
        raise ValueError(f"{path!r} must be a relative path inside the upload")
    if any(part in ("..", "") for part in p.parts):
        raise ValueError(f"{path!r} must not contain '..'")
    return str(p)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceRef(_Strict):
    """An array in a file. ``key``: the ``.npz`` member, safetensors tensor, HDF5 dataset path or
    Parquet/Arrow column; ``format`` overrides detection by file extension."""

    file: str
    key: str | None = None
    format: SourceFormat | None = None

    @field_validator("file")
    @classmethod
    def _relative(cls, v: str) -> str:
        return check_relative(v)


class LayerSpec(_Strict):
    """A layer: a ``(T, D)`` array, or ``(N, L, D)`` with ``sequences.lengths`` (ragged)."""

    name: str = Field(pattern=NAME_PATTERN)
    source: SourceRef
    transform: Transform = "none"
    dtype: StorageDType = "float32"
    kind: str | None = Field(default=None, description="e.g. 'cell' (c_t) or 'hidden' (h_t)")
    thresholds: list[float] | None = Field(default=None, description="index grid; default auto")


class TokensSpec(_Strict):
    """Token ids (an integer array, ``(T,)`` or ragged ``(N, L)``) or a text file with one token
    per line (``format: text``; a blank line ends a sequence unless ``sequences`` is given)."""

    source: SourceRef


class VocabSpec(_Strict):
    """The vocabulary: inline ``texts`` (id i → texts[i]), a text file with one token per line
    (line i is id i), or an LSTMVis ``.dict`` file of ``token id`` lines."""

    texts: list[str] | None = None
    source: SourceRef | None = None

    @model_validator(mode="after")
    def _one(self) -> VocabSpec:
        if (self.texts is None) == (self.source is None):
            raise ValueError("give exactly one of 'texts' or 'source'")
        return self


class SequencesSpec(_Strict):
    """Sequences: ``starts`` (sorted, first 0) or ``lengths`` (per sequence, summing to T), inline
    or from an integer array file; optional ``names``. With 3-D layers ``(N, L, D)`` the
    ``lengths`` say how many of the L rows of each sequence are real (the rest is padding)."""

    starts: list[int] | None = None
    starts_source: SourceRef | None = None
    lengths: list[int] | None = None
    lengths_source: SourceRef | None = None
    names: list[str] | None = None

    @model_validator(mode="after")
    def _one(self) -> SequencesSpec:
        given = [
            x is not None
            for x in (self.starts, self.starts_source, self.lengths, self.lengths_source)
        ]
        if sum(given) != 1:
            raise ValueError(
                "give exactly one of 'starts', 'starts_source', 'lengths', 'lengths_source'"
            )
        return self


class TrackSpec(_Strict):
    """A meta track aligned to steps. ``discrete``: integer label ids in ``source`` and a label
    dictionary (``labels`` inline or ``labels_source`` as a text or ``.dict`` file);
    ``scalar``: numbers in ``source``; ``topk``: ``(T, K)`` token ids in ``source`` and scores
    in ``scores``."""

    name: str = Field(pattern=NAME_PATTERN)
    kind: TrackKind
    source: SourceRef
    scores: SourceRef | None = None
    labels: list[str] | None = None
    labels_source: SourceRef | None = None
    index_by_tokens: bool = Field(
        default=False,
        description="the value at step t is source[token_id[t]] (a per-vocabulary table, "
        "LSTMVis 'index: word_sequence')",
    )
    description: str = ""

    @model_validator(mode="after")
    def _kind_fields(self) -> TrackSpec:
        if self.kind == "topk" and self.scores is None:
            raise ValueError(f"track {self.name}: a topk track needs 'scores'")
        if self.kind != "topk" and self.scores is not None:
            raise ValueError(f"track {self.name}: 'scores' is only for topk tracks")
        if self.kind != "discrete" and (self.labels or self.labels_source):
            raise ValueError(f"track {self.name}: labels are only for discrete tracks")
        return self


class ConllSpec(_Strict):
    """CoNLL columns (whitespace separated, one token per line, blank line between sentences,
    ``-DOCSTART-`` and ``#`` comment lines skipped): the ``word_column`` gives the tokens and
    each entry of ``columns`` (track name → 0-based column) a discrete track."""

    file: str
    word_column: int = Field(default=0, ge=0)
    columns: dict[str, int] = Field(default_factory=dict)

    @field_validator("file")
    @classmethod
    def _relative(cls, v: str) -> str:
        return check_relative(v)

    @field_validator("columns")
    @classmethod
    def _names(cls, v: dict[str, int]) -> dict[str, int]:
        for name, col in v.items():
            if not re.match(NAME_PATTERN, name):
                raise ValueError(f"track name {name!r} must match {NAME_PATTERN}")
            if col < 0:
                raise ValueError(f"column of {name!r} must be >= 0")
        return v


class FastaSpec(_Strict):
    """A genome (or reads) in FASTA: the tokens are the bases (vocabulary ``A C G T N`` then other
    IUPAC letters in order of appearance), one sequence per ``>`` record named by the header's
    first word. ``uppercase``: fold soft-masked (lowercase) bases into uppercase."""

    file: str
    uppercase: bool = True

    @field_validator("file")
    @classmethod
    def _relative(cls, v: str) -> str:
        return check_relative(v)


class BedSpec(_Strict):
    """Interval annotations in BED (``chrom start end [name ...]``, 0-based, half-open) as a
    discrete track: steps inside an interval get its name (or the track's name when the name
    column is missing or ``.``), other steps the ``background`` label (id 0). ``chrom`` is a
    sequence name (a FASTA record or ``sequences.names``); where intervals overlap the later
    line wins. Intervals on unknown sequences are an error unless ``skip_unknown``."""

    name: str = Field(pattern=NAME_PATTERN, description="the track's name")
    file: str
    background: str = ""
    skip_unknown: bool = False
    description: str = ""

    @field_validator("file")
    @classmethod
    def _relative(cls, v: str) -> str:
        return check_relative(v)


class LstmvisSpec(_Strict):
    """The original LSTMVis project layout: ``dir`` holds ``config`` (``lstm.yml``)."""

    dir: str = "."
    config: str = "lstm.yml"

    @field_validator("dir", "config")
    @classmethod
    def _relative(cls, v: str) -> str:
        return "." if v in (".", "./") else check_relative(v)


class IngestManifest(_Strict):
    """What to ingest. Either ``layers`` (+ tokens, vocab, sequences, tracks, conll) or
    ``lstmvis`` (everything comes from its ``lstm.yml``; ``tracks`` may add more)."""

    name: str = Field(pattern=NAME_PATTERN, description="the dataset's unique name")
    description: str = ""
    archive: str | None = Field(
        default=None, description="a .zip/.tar/.tar.gz/.tgz to extract; paths are inside it"
    )
    layers: list[LayerSpec] = Field(default_factory=list)
    tokens: TokensSpec | None = None
    vocab: VocabSpec | None = None
    sequences: SequencesSpec | None = None
    tracks: list[TrackSpec] = Field(default_factory=list)
    conll: ConllSpec | None = None
    fasta: FastaSpec | None = None
    bed: list[BedSpec] = Field(default_factory=list)
    lstmvis: LstmvisSpec | None = None
    nan_policy: NanPolicy = Field(
        default="reject", description="reject: NaN/inf in a layer is an error; allow: kept (off)"
    )
    checksums: dict[str, str] = Field(
        default_factory=dict, description="file name → sha256 (hex) verified on upload"
    )
    provenance: dict[str, Any] = Field(default_factory=dict)

    @field_validator("archive")
    @classmethod
    def _archive(cls, v: str | None) -> str | None:
        return None if v is None else check_relative(v)

    @field_validator("checksums")
    @classmethod
    def _checksums(cls, v: dict[str, str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for k, h in v.items():
            if not _SHA256.match(h.lower()):
                raise ValueError(f"checksum of {k!r} must be 64 hex digits (sha256)")
            out[check_relative(k)] = h.lower()
        return out

    @model_validator(mode="after")
    def _consistent(self) -> IngestManifest:
        if self.lstmvis is None and not self.layers:
            raise ValueError("name at least one layer (or an 'lstmvis' project)")
        if self.lstmvis is not None and self.layers:
            raise ValueError("an 'lstmvis' project brings its own layers; do not list 'layers'")
        names = [x.name for x in self.layers]
        if len(set(names)) != len(names):
            raise ValueError("layer names must be unique")
        tracks = [x.name for x in self.tracks] + list(self.conll.columns if self.conll else [])
        tracks += [x.name for x in self.bed]
        if len(set(tracks)) != len(tracks):
            raise ValueError("track names must be unique")
        if self.conll is not None and self.tokens is not None:
            raise ValueError("tokens come from either 'tokens' or 'conll', not both")
        if self.fasta is not None and (self.tokens is not None or self.conll is not None):
            raise ValueError("tokens come from one of 'tokens', 'conll' or 'fasta'")
        if self.fasta is not None and (self.vocab is not None or self.sequences is not None):
            raise ValueError("a FASTA file brings its own vocabulary and sequences")
        return self

    def referenced_files(self) -> list[str]:
        """Every file the manifest names (before archive extraction: only the archive)."""
        if self.archive is not None:
            return [self.archive]
        refs: list[str] = []
        for layer in self.layers:
            refs.append(layer.source.file)
        if self.tokens:
            refs.append(self.tokens.source.file)
        if self.vocab and self.vocab.source:
            refs.append(self.vocab.source.file)
        if self.sequences:
            for ref in (self.sequences.starts_source, self.sequences.lengths_source):
                if ref is not None:
                    refs.append(ref.file)
        for track in self.tracks:
            for ref in (track.source, track.scores, track.labels_source):
                if ref is not None:
                    refs.append(ref.file)
        if self.conll:
            refs.append(self.conll.file)
        if self.fasta:
            refs.append(self.fasta.file)
        refs.extend(b.file for b in self.bed)
        if self.lstmvis:
            refs.append(str(PurePosixPath(self.lstmvis.dir) / self.lstmvis.config))
        return sorted(set(refs))


def parse_manifest(data: bytes | str | dict[str, Any]) -> IngestManifest:
    """Parse a manifest from JSON or YAML text (or an already decoded mapping).

    Raises :class:`InvalidManifest` (422) saying what is wrong.
    """
    obj = _load_mapping(data)
    try:
        return IngestManifest.model_validate(obj)
    except ValidationError as exc:
        raise _invalid(exc) from None


def _load_mapping(data: bytes | str | dict[str, Any]) -> dict[str, Any]:
    obj: Any = data
    if isinstance(data, bytes | str):
        try:
            text = data.decode("utf-8") if isinstance(data, bytes) else data
        except UnicodeDecodeError:
            raise InvalidManifest("the manifest must be UTF-8 text (JSON or YAML)") from None
        try:
            obj = json.loads(text)
        except ValueError:
            try:
                obj = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise InvalidManifest(f"the manifest is neither JSON nor YAML: {exc}") from None
    if not isinstance(obj, dict):
        raise InvalidManifest("the manifest must be a JSON or YAML mapping")
    return obj


def _invalid(exc: ValidationError) -> InvalidManifest:
    first = exc.errors()[0]
    loc = ".".join(str(x) for x in first["loc"])
    return InvalidManifest(
        f"manifest {loc or 'body'}: {first['msg']}"
        + (f" (and {exc.error_count() - 1} more errors)" if exc.error_count() > 1 else "")
    )


# -- adding tracks to a published dataset ------------------------------------------------------


class ConllTracksSpec(ConllSpec):
    """CoNLL columns as discrete tracks of a published dataset: one token per line must give
    exactly ``T`` tokens. ``check_words``: the ``word_column`` must equal the dataset's tokens
    (when it has tokens), so a file that does not belong to the dataset is refused."""

    check_words: bool = True


class TracksManifest(_Strict):
    """Meta tracks to add to a published dataset (a new version of it; ``docs/ingest.md``).

    The same track specs as at ingest: ``tracks`` (discrete / scalar / topk arrays, ``(T,)``,
    ``(T, K)`` or ragged ``(N, L[, K])`` by the dataset's sequences), ``bed`` (interval files
    painted onto the dataset's sequences by name) and ``conll`` (columns of a CoNLL file).
    ``remove`` drops tracks in the same new version (remove and add one name to replace it)."""

    tracks: list[TrackSpec] = Field(default_factory=list)
    bed: list[BedSpec] = Field(default_factory=list)
    conll: ConllTracksSpec | None = None
    remove: list[str] = Field(
        default_factory=list, description="track names to drop in the same new version"
    )
    nan_policy: NanPolicy = Field(
        default="reject", description="reject: NaN/inf in a scalar track is an error; allow: kept"
    )
    checksums: dict[str, str] = Field(
        default_factory=dict, description="file name → sha256 (hex) verified on upload"
    )
    provenance: dict[str, Any] = Field(
        default_factory=dict, description="merged into the new version's provenance"
    )

    @field_validator("checksums")
    @classmethod
    def _checksums(cls, v: dict[str, str]) -> dict[str, str]:
        return IngestManifest._checksums(v)

    @field_validator("remove")
    @classmethod
    def _remove(cls, v: list[str]) -> list[str]:
        for name in v:
            if not re.match(NAME_PATTERN, name):
                raise ValueError(f"track name {name!r} must match {NAME_PATTERN}")
        if len(set(v)) != len(v):
            raise ValueError("a track is named twice in 'remove'")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> TracksManifest:
        names = self.added()
        if not names and not self.remove:
            raise ValueError("name a track to add ('tracks', 'bed', 'conll') or to 'remove'")
        if len(set(names)) != len(names):
            raise ValueError("track names must be unique")
        if self.conll is not None and not self.conll.columns:
            raise ValueError("conll: name at least one column ('columns': {track: column})")
        return self

    def added(self) -> list[str]:
        """The names of the tracks this manifest adds, in order."""
        names = [x.name for x in self.tracks] + [x.name for x in self.bed]
        return names + list(self.conll.columns if self.conll else [])

    def referenced_files(self) -> list[str]:
        refs: list[str] = []
        for track in self.tracks:
            for ref in (track.source, track.scores, track.labels_source):
                if ref is not None:
                    refs.append(ref.file)
        refs.extend(b.file for b in self.bed)
        if self.conll:
            refs.append(self.conll.file)
        return sorted(set(refs))


def parse_tracks_manifest(data: bytes | str | dict[str, Any]) -> TracksManifest:
    """Parse the manifest of a track addition (JSON or YAML); raises :class:`InvalidManifest`."""
    obj = _load_mapping(data)
    try:
        return TracksManifest.model_validate(obj)
    except ValidationError as exc:
        raise _invalid(exc) from None
