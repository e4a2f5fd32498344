"""Tracks to add to a published dataset, planned and checked against it, and written into a new
version: shared by the pre-202 check (:mod:`hiddenscope_ingest.sandbox`) and the worker
(:mod:`hiddenscope_ingest.track_attempt`). The track specs and loaders are the ingest's own
(:func:`hiddenscope_ingest.plan.plan_tracks`); ids are checked against the label lists and the
vocabulary, NaN/inf by ``nan_policy``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
from hiddenscope_core.errors import Conflict, NotFound
from hiddenscope_core.models import TrackInfo
from hiddenscope_core.reader import Dataset
from hiddenscope_core.versions import VersionWriter

from hiddenscope_ingest.convert import write_track
from hiddenscope_ingest.errors import InvalidData
from hiddenscope_ingest.loaders import resolve_file
from hiddenscope_ingest.loaders.base import ArraySource, Limits, iter_chunks
from hiddenscope_ingest.loaders.text_files import Labels, read_conll
from hiddenscope_ingest.manifest import TracksManifest
from hiddenscope_ingest.plan import TrackPlan, plan_tracks

# -- the dataset as the frame the tracks align to ------------------------------------------------


class DatasetTokens:
    """The token ids of a published dataset as an :class:`ArraySource` (for ``index_by_tokens``
    tracks and the CoNLL word check)."""

    def __init__(self, ds: Dataset) -> None:
        self.ds = ds
        self.name = f"the tokens of dataset {ds.name!r}"
        self.shape: tuple[int, ...] = (ds.n_steps,)
        self.dtype: np.dtype[np.generic] = np.dtype(np.int32)

    def read(self, start: int, stop: int) -> npt.NDArray[np.generic]:
        if stop <= start:
            return np.empty(0, np.int32)
        return self.ds.tokens(start, stop)

    def close(self) -> None:
        pass


@dataclass
class TracksPlan:
    """Checked, opened tracks to add to ``dataset``."""

    dataset: Dataset
    tracks: list[TrackPlan]
    tokens: ArraySource | None
    vocab: Labels | None
    complete: bool = True
    _open: list[ArraySource] = field(default_factory=list)

    @property
    def n_steps(self) -> int:
        return self.dataset.n_steps

    def close(self) -> None:
        for src in self._open:
            with contextlib.suppress(Exception):
                src.close()
        self._open.clear()


def check_names(ds: Dataset, manifest: TracksManifest) -> None:
    """409 for an added name the dataset already has (unless it is also removed), 404 for a
    removed name it does not have."""
    present = {t.name for t in ds.manifest.tracks}
    for name in manifest.remove:
        if name not in present:
            known = ", ".join(sorted(present)) or "none"
            raise NotFound(f"dataset {ds.name!r} has no track {name!r}; it has: {known}")
    for name in manifest.added():
        if name in present and name not in manifest.remove:
            raise Conflict(
                f"dataset {ds.name!r} already has a track named {name!r}; choose another name "
                "(or list it under 'remove' as well to replace it)"
            )


def build_tracks_plan(
    manifest: TracksManifest, ds: Dataset, root: Path, limits: Limits, work_dir: Path | None
) -> TracksPlan:
    """Open and check the tracks ``manifest`` names under ``root`` against dataset ``ds``: one
    row per step (``T``), ragged ``(N, L)`` sources by the dataset's sequences, BED chromosomes by
    its sequence names, CoNLL words against its tokens. Without ``work_dir`` text files are not
    parsed (``complete`` is False). Raises 4xx errors only; the caller must ``close()``."""
    check_names(ds, manifest)
    m = ds.manifest
    tokens = DatasetTokens(ds) if m.has_tokens else None
    vocab = None
    if m.vocab_size:
        texts = ds.vocab()
        vocab = Labels(texts, np.ones(len(texts), dtype=bool))
    starts = np.asarray(ds.sequence_starts(), dtype=np.int64)
    ends = np.asarray(ds.sequence_ends(), dtype=np.int64)
    plan = TracksPlan(ds, [], tokens, vocab)
    try:
        tracks, complete = plan_tracks(
            manifest.tracks, manifest.bed, root, limits, work_dir,
            n_steps=ds.n_steps, tokens=tokens, sequence_starts=starts,
            sequence_names=ds.sequence_names(), lengths=ends - starts, opened=plan._open,
        )  # fmt: skip
        plan.tracks.extend(tracks)
        plan.complete = complete
        if manifest.conll is not None:
            path = resolve_file(root, manifest.conll.file)
            if work_dir is None:
                plan.complete = False
            else:
                plan.tracks.extend(_conll_tracks(manifest, ds, path, work_dir, limits, plan))
    except BaseException:
        plan.close()
        raise
    return plan


def _conll_tracks(
    manifest: TracksManifest,
    ds: Dataset,
    path: Path,
    work_dir: Path,
    limits: Limits,
    plan: TracksPlan,
) -> list[TrackPlan]:
    spec = manifest.conll
    assert spec is not None
    what = f"conll ({spec.file})"
    text = read_conll(path, what, spec.word_column, spec.columns, None, work_dir, limits)
    n = text.ids.shape[0]
    if n != ds.n_steps:
        raise InvalidData(
            f"{what}: {n} tokens but dataset {ds.name!r} has T={ds.n_steps} steps; the file must "
            "have one token line per step"
        )
    if spec.check_words and plan.tokens is not None and plan.vocab is not None:
        _check_words(text.ids, text.vocab.texts, plan.tokens, plan.vocab.texts, what)
    out = []
    for tname, (ids, labels) in text.tracks.items():
        info = TrackInfo(name=tname, kind="discrete", labels=labels,
                         description=f"CoNLL column {spec.columns[tname]}")  # fmt: skip
        out.append(TrackPlan(info, ids))
    return out


def _check_words(
    words: ArraySource,
    word_texts: list[str],
    tokens: ArraySource,
    token_texts: list[str],
    what: str,
) -> None:
    """The CoNLL words must be the dataset's tokens, step by step (compared as texts)."""
    first: dict[str, int] = {}
    for i, t in enumerate(token_texts):
        first.setdefault(t, i)
    canon = np.asarray([first[t] for t in token_texts], dtype=np.int64)
    wmap = np.asarray([first.get(t, -1) for t in word_texts], dtype=np.int64)
    rows = 1 << 20
    for start, chunk in iter_chunks(words, rows):
        got = wmap[np.asarray(chunk, dtype=np.int64)]
        want = canon[np.asarray(tokens.read(start, start + len(chunk)), dtype=np.int64)]
        bad = np.flatnonzero(got != want)
        if bad.size:
            i = int(bad[0])
            w = word_texts[int(np.asarray(chunk)[i])]
            t = token_texts[int(np.asarray(tokens.read(start + i, start + i + 1))[0])]
            raise InvalidData(
                f"{what}: the word at step {start + i} is {w[:40]!r} but the dataset's token "
                f"is {t[:40]!r}; the file does not belong to this dataset (send "
                "conll.check_words: false to add it anyway)"
            )


# -- writing ---------------------------------------------------------------------------------


def write_tracks(
    writer: VersionWriter,
    plan: TracksPlan,
    nan_policy: str,
    chunk_bytes: int,
    tick: Callable[[int], None],
) -> None:
    """Stream every planned track into ``writer`` with the checks of ingest (memory bounded by
    ``chunk_bytes``)."""
    for track in plan.tracks:
        write_track(
            writer.add_track, track, n_steps=plan.n_steps, tokens=plan.tokens, vocab=plan.vocab,
            nan_policy=nan_policy, chunk_bytes=chunk_bytes, tick=tick,
        )  # fmt: skip
