"""From a manifest and a directory of files to a checked :class:`Plan`: every source opened by a
safe loader, shapes consistent (one T for layers, tokens and tracks), sequences valid.

``build_plan(..., work_dir=None)`` is the cheap check the API runs before answering 202 (headers
only; text files and archives are left to the worker). With a ``work_dir`` (the worker) text
inputs are parsed too, so the plan is complete."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
from hiddenscope_core.models import TrackInfo

from hiddenscope_ingest.errors import InvalidData, InvalidManifest, UnsupportedFormat
from hiddenscope_ingest.loaders import ARRAY_FORMATS, detect_format, open_array, resolve_file
from hiddenscope_ingest.loaders.base import ArraySource, Limits, NumpySource, RaggedSource
from hiddenscope_ingest.loaders.genomics import read_bed, read_fasta
from hiddenscope_ingest.loaders.text_files import (
    Labels,
    read_conll,
    read_dict_file,
    read_lines_vocab,
    read_token_file,
)
from hiddenscope_ingest.manifest import BedSpec, IngestManifest, LayerSpec, SourceRef, TrackSpec

MAX_SEQUENCES_IN_MEMORY = 100_000_000


@dataclass
class LayerPlan:
    spec: LayerSpec
    source: ArraySource

    @property
    def n_cells(self) -> int:
        return self.source.shape[1]


@dataclass
class TrackPlan:
    info: TrackInfo
    source: ArraySource
    scores: ArraySource | None = None
    index_by_tokens: bool = False
    label_defined: npt.NDArray[np.bool_] | None = None


@dataclass
class Plan:
    manifest: IngestManifest
    n_steps: int
    layers: list[LayerPlan]
    tokens: ArraySource | None = None
    vocab: Labels | None = None
    sequence_starts: npt.NDArray[np.int64] | None = None
    sequence_names: list[str] | None = None
    tracks: list[TrackPlan] = field(default_factory=list)
    complete: bool = True
    _open: list[ArraySource] = field(default_factory=list)

    def close(self) -> None:
        for src in self._open:
            with contextlib.suppress(Exception):
                src.close()
        self._open.clear()


def _read_int_vector(
    root: Path, ref: SourceRef, what: str, limits: Limits
) -> npt.NDArray[np.int64]:
    src = open_array(root, ref, what, limits)
    try:
        if len(src.shape) != 1 or src.dtype.kind not in "iu":
            raise InvalidData(f"{what}: expected a 1-D integer array, got {src.shape} {src.dtype}")
        if src.shape[0] > MAX_SEQUENCES_IN_MEMORY:
            raise InvalidData(f"{what}: more than {MAX_SEQUENCES_IN_MEMORY} entries")
        return np.asarray(src.read(0, src.shape[0]), dtype=np.int64)
    finally:
        src.close()


def _labels(root: Path, ref: SourceRef, what: str, limits: Limits) -> Labels:
    fmt = detect_format(ref.file, ref.format)
    path = resolve_file(root, ref.file)
    if fmt == "dict":
        return read_dict_file(path, what, limits)
    if fmt == "text":
        return read_lines_vocab(path, what, limits)
    raise UnsupportedFormat(f"{what}: a vocabulary or label list must be a text or .dict file")


def build_plan(
    manifest: IngestManifest, root: Path, limits: Limits, work_dir: Path | None = None
) -> Plan:
    """Open and check everything ``manifest`` names under ``root``. Raises 4xx errors only;
    the caller must ``close()`` the plan."""
    if manifest.lstmvis is not None:
        from hiddenscope_ingest.lstmvis import lstmvis_to_manifest

        manifest = lstmvis_to_manifest(manifest, root)
    plan = Plan(manifest=manifest, n_steps=0, layers=[])
    try:
        _fill(plan, root, limits, work_dir)
    except BaseException:
        plan.close()
        raise
    return plan


def _fill(plan: Plan, root: Path, limits: Limits, work_dir: Path | None) -> None:
    m = plan.manifest
    seq = m.sequences
    lengths: npt.NDArray[np.int64] | None = None
    starts: npt.NDArray[np.int64] | None = None
    if seq is not None:
        if seq.lengths is not None:
            lengths = np.asarray(seq.lengths, dtype=np.int64)
        elif seq.lengths_source is not None:
            lengths = _read_int_vector(root, seq.lengths_source, "sequences.lengths", limits)
        elif seq.starts is not None:
            starts = np.asarray(seq.starts, dtype=np.int64)
        elif seq.starts_source is not None:
            starts = _read_int_vector(root, seq.starts_source, "sequences.starts", limits)
        if lengths is not None:
            if len(lengths) == 0 or np.any(lengths < 1):
                raise InvalidData("sequences.lengths must be a non-empty list of lengths >= 1")
            starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)

    def maybe_ragged(src: ArraySource, ndim: int, what: str) -> ArraySource:
        return _maybe_ragged(src, ndim, what, lengths)

    # layers fix T
    for spec in m.layers:
        src = open_array(root, spec.source, f"layer {spec.name}", limits)
        plan._open.append(src)
        src = maybe_ragged(src, 2, f"layer {spec.name}")
        if src.dtype.kind not in "fiub":
            raise InvalidData(f"layer {spec.name}: dtype {src.dtype} is not numeric")
        t = src.shape[0]
        if plan.n_steps == 0:
            plan.n_steps = t
        elif t != plan.n_steps:
            first = m.layers[0].name
            raise InvalidData(
                f"layer {spec.name} has {t} steps but layer {first} has {plan.n_steps}"
            )
        plan.layers.append(LayerPlan(spec, src))
    T = plan.n_steps

    # sequences
    if starts is not None:
        if starts[0] != 0 or np.any(np.diff(starts) <= 0) or starts[-1] >= T:
            raise InvalidData(
                f"sequence starts must begin at 0, increase strictly and stay below T={T}"
            )
        if lengths is not None and int(lengths.sum()) != T:
            raise InvalidData(f"sequence lengths sum to {int(lengths.sum())}, but T={T}")
        plan.sequence_starts = starts
    if seq is not None and seq.names is not None:
        n = len(plan.sequence_starts) if plan.sequence_starts is not None else 1
        if len(seq.names) != n:
            raise InvalidData(f"{len(seq.names)} sequence names for {n} sequences")
        plan.sequence_names = list(seq.names)

    # vocabulary
    if m.vocab is not None:
        if m.vocab.texts is not None:
            if not m.vocab.texts:
                raise InvalidData("the vocabulary is empty")
            plan.vocab = Labels(list(m.vocab.texts), np.ones(len(m.vocab.texts), dtype=bool))
        elif m.vocab.source is not None:
            plan.vocab = _labels(root, m.vocab.source, "vocab", limits)

    # tokens
    if m.tokens is not None:
        fmt = detect_format(m.tokens.source.file, m.tokens.source.format)
        if fmt in ARRAY_FORMATS:
            src = open_array(root, m.tokens.source, "tokens", limits)
            plan._open.append(src)
            src = maybe_ragged(src, 1, "tokens")
            if src.dtype.kind not in "iu":
                raise InvalidData(f"tokens: token ids must be integers, got {src.dtype}")
            if plan.vocab is None:
                raise InvalidManifest("token ids need a vocabulary: add 'vocab'")
            plan.tokens = src
        elif fmt == "text":
            path = resolve_file(root, m.tokens.source.file)
            if work_dir is None:
                plan.complete = False
            else:
                text = read_token_file(path, "tokens", plan.vocab, work_dir, limits)
                plan.tokens, plan.vocab = text.ids, text.vocab
                if plan.sequence_starts is None and len(text.sequence_starts) > 1:
                    plan.sequence_starts = np.asarray(text.sequence_starts, dtype=np.int64)
        else:
            raise UnsupportedFormat(f"tokens: {m.tokens.source.file} is not an array or text file")

    if m.conll is not None:
        path = resolve_file(root, m.conll.file)
        if work_dir is None:
            plan.complete = False
        else:
            text = read_conll(
                path, "conll", m.conll.word_column, m.conll.columns, plan.vocab, work_dir, limits
            )
            plan.tokens, plan.vocab = text.ids, text.vocab
            if plan.sequence_starts is None and len(text.sequence_starts) > 1:
                plan.sequence_starts = np.asarray(text.sequence_starts, dtype=np.int64)
            for tname, (ids, labels) in text.tracks.items():
                info = TrackInfo(name=tname, kind="discrete", labels=labels,
                                 description=f"CoNLL column {m.conll.columns[tname]}")  # fmt: skip
                plan.tracks.append(TrackPlan(info, ids))

    if m.fasta is not None:
        path = resolve_file(root, m.fasta.file)
        if work_dir is None:
            plan.complete = False
        else:
            fa = read_fasta(path, f"fasta ({m.fasta.file})", work_dir, limits,
                            uppercase=m.fasta.uppercase)  # fmt: skip
            if fa.ids.shape[0] != T:
                raise InvalidData(
                    f"fasta ({m.fasta.file}): {fa.ids.shape[0]} bases but the layers have "
                    f"T={T} steps"
                )
            plan.tokens = fa.ids
            plan.vocab = Labels(fa.vocab, np.ones(len(fa.vocab), dtype=bool))
            plan.sequence_starts = np.asarray(fa.sequence_starts, dtype=np.int64)
            plan.sequence_names = fa.sequence_names

    if plan.tokens is not None and plan.tokens.shape[0] != T:
        raise InvalidData(f"{plan.tokens.shape[0]} tokens but the layers have T={T} steps")
    if plan.sequence_starts is not None and plan.sequence_starts[-1] >= T:
        raise InvalidData("the token file's sequences do not fit the layers' steps")

    # tracks and BED interval tracks
    tracks, complete = plan_tracks(
        m.tracks, m.bed, root, limits, work_dir,
        n_steps=T, tokens=plan.tokens, sequence_starts=plan.sequence_starts,
        sequence_names=plan.sequence_names, lengths=lengths, opened=plan._open,
    )  # fmt: skip
    plan.tracks.extend(tracks)
    plan.complete = plan.complete and complete


def _maybe_ragged(
    src: ArraySource, ndim: int, what: str, lengths: npt.NDArray[np.int64] | None
) -> ArraySource:
    """``src`` as ``ndim``-D rows: an ``(N, L, ...)`` array is flattened by ``lengths``."""
    if len(src.shape) == ndim + 1:
        if lengths is None:
            raise InvalidData(
                f"{what}: a {len(src.shape)}-D array (N, L, ...) needs sequences.lengths"
            )
        return RaggedSource(src, lengths)
    if len(src.shape) != ndim:
        raise InvalidData(f"{what}: expected a {ndim}-D array, got shape {src.shape}")
    return src


def plan_tracks(
    track_specs: Sequence[TrackSpec],
    beds: Sequence[BedSpec],
    root: Path,
    limits: Limits,
    work_dir: Path | None,
    *,
    n_steps: int,
    tokens: ArraySource | None,
    sequence_starts: npt.NDArray[np.int64] | None,
    sequence_names: list[str] | None,
    lengths: npt.NDArray[np.int64] | None,
    opened: list[ArraySource],
) -> tuple[list[TrackPlan], bool]:
    """Open and check meta tracks (``track_specs``) and BED files (``beds``) against ``n_steps``
    steps, the ``tokens`` (for ``index_by_tokens``) and the sequences (BED chromosomes; ragged
    ``(N, L)`` sources by ``lengths``). Used at ingest and when tracks are added to a published
    dataset. Returns ``(plans, complete)``: without ``work_dir`` BED files are not parsed
    (``complete`` is False). Opened sources are appended to ``opened`` (the caller closes them).
    Raises 4xx errors only."""
    T = n_steps
    out: list[TrackPlan] = []
    complete = True

    def maybe_ragged(src: ArraySource, ndim: int, what: str) -> ArraySource:
        return _maybe_ragged(src, ndim, what, lengths)

    for tspec in track_specs:
        what = f"track {tspec.name}"
        src = open_array(root, tspec.source, what, limits)
        opened.append(src)
        scores = None
        ndim = 2 if tspec.kind == "topk" else 1
        if tspec.index_by_tokens:
            if tokens is None:
                raise InvalidManifest(f"{what}: index_by_tokens needs tokens")
            if len(src.shape) != ndim:
                raise InvalidData(f"{what}: expected a {ndim}-D table, got {src.shape}")
        else:
            src = maybe_ragged(src, ndim, what)
            if src.shape[0] != T:
                raise InvalidData(f"{what} has {src.shape[0]} steps but the layers have T={T}")
        if tspec.kind == "topk":
            assert tspec.scores is not None
            scores = open_array(root, tspec.scores, f"{what} scores", limits)
            opened.append(scores)
            if not tspec.index_by_tokens:
                scores = maybe_ragged(scores, 2, f"{what} scores")
            if scores.shape != src.shape:
                raise InvalidData(f"{what}: ids {src.shape} and scores {scores.shape} differ")
            if src.dtype.kind not in "iu":
                raise InvalidData(f"{what}: predicted ids must be integers, got {src.dtype}")
        elif tspec.kind == "discrete" and src.dtype.kind not in "iub":
            raise InvalidData(f"{what}: discrete labels must be integers, got {src.dtype}")
        track_labels: list[str] | None = list(tspec.labels) if tspec.labels else None
        defined = None
        if tspec.labels_source is not None:
            lab = _labels(root, tspec.labels_source, f"{what} labels", limits)
            track_labels, defined = lab.texts, lab.defined
        elif track_labels is not None:
            defined = np.ones(len(track_labels), dtype=bool)
        info = TrackInfo(
            name=tspec.name,
            kind=tspec.kind,
            labels=track_labels,
            k=src.shape[1] if tspec.kind == "topk" else None,
            description=tspec.description,
        )
        out.append(TrackPlan(info, src, scores, tspec.index_by_tokens, defined))

    # BED interval tracks, aligned through the sequences' names and starts
    for bed in beds:
        path = resolve_file(root, bed.file)
        if work_dir is None:
            complete = False
            continue
        seq_starts = sequence_starts if sequence_starts is not None else np.zeros(1, np.int64)
        seq_names = sequence_names or [f"seq{i}" for i in range(len(seq_starts))]
        painted = read_bed(
            path, f"bed {bed.name} ({bed.file})", bed.name, seq_starts, seq_names, T, work_dir,
            limits, background=bed.background, skip_unknown=bed.skip_unknown,
        )  # fmt: skip
        info = TrackInfo(
            name=bed.name,
            kind="discrete",
            labels=painted.texts,
            description=bed.description or f"BED intervals from {bed.file}",
        )
        out.append(TrackPlan(info, painted.labels))
    return out, complete


__all__ = ["LayerPlan", "NumpySource", "Plan", "TrackPlan", "build_plan", "plan_tracks"]
