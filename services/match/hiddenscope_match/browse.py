"""Browsing a published dataset: its info, windows of states, tokens and tracks, vocabulary
pages, long-range summaries (layers, tracks, on-counts) and the S1 cell selection. Read-only,
synchronous, bounded by the service's caps; the routes translate these answers to HTTP."""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from hiddenscope_core.errors import InvalidQuery, NotFound
from hiddenscope_core.models import SelectQuery, SelectResult, SequenceInfo
from hiddenscope_core.reader import Dataset
from hiddenscope_core.select import select_cells
from hiddenscope_core.summary import bin_edges
from hiddenscope_core.summary import on_count_summary as on_counts_per_bin
from hiddenscope_service.problems import ProblemError

from hiddenscope_match.datasets import Datasets
from hiddenscope_match.schemas import (
    DatasetInfo,
    LayerDetail,
    LayerSummary,
    OnCountSummary,
    TokensWindow,
    TrackSummary,
    TrackWindow,
    VocabPage,
)
from hiddenscope_match.search import PhraseSearch
from hiddenscope_match.settings import MatchSettings

log = logging.getLogger(__name__)

SUMMARY_CHUNK_VALUES = 1 << 22
"""Values (cells x steps) read from the memmap and reduced at once by a summary."""


def finite_list(a: npt.NDArray[Any]) -> list[Any]:
    """``a.tolist()`` with NaN and ±inf as ``None`` (JSON has no non-finite numbers)."""
    a = np.asarray(a)
    if a.dtype.kind != "f":
        return list(a.tolist())
    bad = ~np.isfinite(a)
    if not bad.any():
        return list(a.astype(np.float64).tolist())
    obj = a.astype(np.float64).astype(object)
    obj[bad] = None
    return list(obj.tolist())


def encode_token(data: dict[str, Any]) -> str:
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str, what: str) -> dict[str, Any]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError
        return data
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidQuery(f"{what} is not a token this service issued") from None


@dataclass
class Browse:
    """The read-only dataset views of the match API."""

    settings: MatchSettings
    datasets: Datasets
    search: PhraseSearch | None = None
    """Queues a dataset's search index when its info is first read (``search_index_eager``)."""
    # -- info ----------------------------------------------------------------------------------

    def dataset(self, name_or_id: str) -> Dataset:
        return self.datasets.get(name_or_id)

    def info(
        self, name_or_id: str, *, cell_stats: bool, page_size: int, page_token: str | None
    ) -> DatasetInfo:
        ds = self.dataset(name_or_id)
        m = ds.manifest
        if self.search is not None and self.settings.search_index_eager and m.has_tokens:
            try:  # a dataset seen for the first time: start its search index now
                self.search.request_index(ds)
            except ProblemError:
                log.warning("could not queue the search index of %s", ds.id, exc_info=True)
        first = 0
        if page_token:
            tok = decode_token(page_token, "sequences_page_token")
            if tok.get("d") != ds.id or not isinstance(tok.get("s"), int):
                raise InvalidQuery("sequences_page_token belongs to another dataset or query")
            first = int(tok["s"])
        starts, ends, names = ds.sequence_starts(), ds.sequence_ends(), ds.sequence_names()
        last = min(len(names), first + page_size)
        seqs = [
            SequenceInfo(index=i, name=names[i], start=int(starts[i]), end=int(ends[i]))
            for i in range(first, last)
        ]
        layers = []
        for info in m.layers:
            stats = None
            if cell_stats:
                stats = {k: finite_list(v) for k, v in ds.cell_stats(info.name).items()}
            layers.append(LayerDetail(info=info, cell_stats=stats))
        return DatasetInfo(
            id=m.id,
            name=m.name,
            version=m.version,
            parent_id=m.parent_id,
            description=m.description,
            n_steps=m.n_steps,
            n_sequences=m.n_sequences,
            vocab_size=m.vocab_size,
            has_tokens=m.has_tokens,
            part_steps=m.part_steps,
            created_at=m.created_at,
            layers=layers,
            tracks=list(m.tracks),
            sequences=seqs,
            next_sequences_token=(
                encode_token({"d": ds.id, "s": last}) if last < len(names) else None
            ),
        )

    # -- windows -------------------------------------------------------------------------------

    def resolve_range(
        self,
        ds: Dataset,
        start: int | None,
        end: int | None,
        sequence: str | None,
        offset: int,
        length: int | None,
    ) -> tuple[int, int]:
        """A window ``[a, b)``: by steps (``start``, ``end``; default 100 steps) or by
        ``sequence`` (name or index) + ``offset`` + ``length`` (default: to the sequence's end).
        Raises ``NotFound`` (sequence) and ``InvalidQuery`` (outside the data, over the cap)."""
        T = ds.n_steps
        if sequence is not None:
            if start is not None or end is not None:
                raise InvalidQuery("give either start/end or sequence/offset/length, not both")
            names = ds.sequence_names()
            if sequence in names:
                i = names.index(sequence)
            elif sequence.isdigit() and int(sequence) < len(names):
                i = int(sequence)
            else:
                raise NotFound(f"no sequence {sequence!r} in dataset {ds.name!r}")
            s_lo, s_hi = int(ds.sequence_starts()[i]), int(ds.sequence_ends()[i])
            a = s_lo + offset
            b = s_hi if length is None else a + length
            if offset < 0 or a >= s_hi or b > s_hi or b <= a:
                raise InvalidQuery(
                    f"offset {offset} and length {length} are outside sequence {names[i]!r} "
                    f"({s_hi - s_lo} steps)"
                )
        else:
            a = 0 if start is None else start
            b = min(T, a + 100) if end is None else end
            if not 0 <= a < b <= T:
                raise InvalidQuery(f"range [{a}, {b}) is not inside [0, {T}) or is empty")
        if b - a > self.settings.max_window_steps:
            raise InvalidQuery(
                f"window of {b - a} steps is over the cap of {self.settings.max_window_steps}"
            )
        return a, b

    def states(
        self, ds: Dataset, layer: str, a: int, b: int, cells: list[int] | None
    ) -> tuple[npt.NDArray[np.float32], list[int]]:
        sel = cell_list(ds, layer, cells)
        n_values = (b - a) * len(sel)
        if n_values > self.settings.max_window_values:
            raise InvalidQuery(
                f"window of {b - a} steps x {len(sel)} cells = {n_values} values is over the "
                f"cap of {self.settings.max_window_values}; ask for fewer steps or cells"
            )
        values = ds.window(layer, a, b, None if cells is None else np.asarray(sel))
        return values, sel

    def tokens(self, ds: Dataset, a: int, b: int) -> TokensWindow:
        ids = ds.tokens(a, b)
        vocab = ds.vocab()
        return TokensWindow(start=a, end=b, ids=ids.tolist(), texts=texts(vocab, ids))

    def track(self, ds: Dataset, name: str, a: int, b: int) -> TrackWindow:
        info = ds.manifest.track(name)
        data = ds.track(name, a, b)
        out = TrackWindow(name=name, kind=info.kind, start=a, end=b, labels=info.labels)
        if "label" in data:
            out.label = data["label"].tolist()
        if "value" in data:
            out.value = finite_list(data["value"])
        if "ids" in data:
            out.ids = data["ids"].tolist()
            out.scores = finite_list(data["scores"])
            vocab = ds.vocab()
            if vocab:
                out.texts = text_matrix(vocab, data["ids"])
        return out

    def vocab(self, ds: Dataset, offset: int, limit: int, ids: list[int] | None) -> VocabPage:
        """Texts of a page of vocabulary ids, or of the ``ids`` given (any order, repeats
        kept). 404 for a dataset without a vocabulary."""
        vocab = ds.vocab()
        if not vocab:
            raise NotFound(f"dataset {ds.name!r} has no vocabulary")
        cap = self.settings.max_vocab_page
        if ids is not None:
            if len(ids) > cap:
                raise InvalidQuery(f"at most {cap} ids per request")
            arr = np.asarray(ids, dtype=np.int64)
            return VocabPage(vocab_size=len(vocab), ids=ids, texts=texts(vocab, arr))
        end = min(len(vocab), offset + min(limit, cap))
        return VocabPage(
            vocab_size=len(vocab),
            ids=list(range(offset, end)) if offset < end else [],
            texts=vocab[offset:end],
            next_offset=end if end < len(vocab) else None,
        )

    def summary(
        self,
        ds: Dataset,
        layer: str,
        start: int | None,
        end: int | None,
        bins: int,
        cells: list[int] | None,
    ) -> LayerSummary:
        """Per-bin min / max / mean of each cell over ``[start, end)`` (default: all steps),
        reduced with numpy ``reduceat`` from the column-major values memmap, NaN-aware (a bin
        without finite values is ``null``). 422 over ``max_summary_values`` steps x cells."""
        sel = cell_list(ds, layer, cells)
        a, b = summary_range(ds, start, end)
        n = b - a
        cap = self.settings.max_summary_values
        if n * len(sel) > cap:
            raise InvalidQuery(
                f"summary of {n} steps x {len(sel)} cells = {n * len(sel)} values is over the "
                f"cap of {cap}; ask for fewer steps or cells"
            )
        nb = self._summary_bins(bins, n)
        if nb * len(sel) > self.settings.max_window_values:
            raise InvalidQuery(
                f"{nb} bins x {len(sel)} cells is over the cap of "
                f"{self.settings.max_window_values} values; ask for fewer bins or cells"
            )
        edges = bin_edges(a, b, nb)
        offsets = edges[:-1] - a
        nb = int(offsets.shape[0])
        values = ds.values(layer)
        mins = np.empty((nb, len(sel)), np.float32)
        maxs = np.empty((nb, len(sel)), np.float32)
        means = np.empty((nb, len(sel)), np.float32)
        per = max(1, SUMMARY_CHUNK_VALUES // n)
        sel_arr = np.asarray(sel, dtype=np.intp)
        for j in range(0, len(sel), per):
            idx = sel_arr[j : j + per]
            lo, hi = int(idx[0]), int(idx[-1]) + 1
            rows = values[lo:hi, a:b] if hi - lo == idx.size else values[idx, a:b]
            block = np.asarray(rows, dtype=np.float32)
            # fmin/fmax skip NaN (NaN only where a bin has no number at all)
            mins[:, j : j + idx.size] = np.fmin.reduceat(block, offsets, axis=1).T
            maxs[:, j : j + idx.size] = np.fmax.reduceat(block, offsets, axis=1).T
            finite = np.isfinite(block)
            count = np.add.reduceat(finite, offsets, axis=1, dtype=np.int64)
            total = np.add.reduceat(
                np.where(finite, block, np.float32(0)), offsets, axis=1, dtype=np.float64
            )
            with np.errstate(invalid="ignore", divide="ignore"):
                means[:, j : j + idx.size] = np.where(count > 0, total / count, np.nan).T
        return LayerSummary.model_construct(
            layer=layer,
            start=a,
            end=b,
            bins=nb,
            bin_starts=[int(x) for x in edges],
            cells=sel,
            mins=finite_list(mins),
            maxs=finite_list(maxs),
            means=finite_list(means),
        )

    def _summary_bins(self, bins: int, n: int) -> int:
        """The bins of a summary of ``n`` steps: ``min(bins, n)``; 422 over the cap."""
        if bins > self.settings.max_summary_bins:
            raise InvalidQuery(f"bins is at most {self.settings.max_summary_bins}")
        return min(bins, n)

    def track_summary(
        self, ds: Dataset, name: str, start: int | None, end: int | None, bins: int
    ) -> TrackSummary:
        """A meta track over ``[start, end)`` (default: all steps) per bin, streamed by the
        core from the track's row groups (``Dataset.track_summary``). 404 for an unknown track;
        422 for a range outside the data, over ``max_track_summary_steps``, bins over
        ``max_summary_bins``, or bins x labels over ``max_window_values``."""
        info = ds.manifest.track(name)
        a, b = summary_range(ds, start, end)
        n = b - a
        cap = self.settings.max_track_summary_steps
        if n > cap:
            raise InvalidQuery(
                f"track summary of {n} steps is over the cap of {cap} steps; ask for fewer steps"
            )
        nb = self._summary_bins(bins, n)
        n_labels = len(info.labels or [])
        if info.kind == "discrete" and nb * (n_labels + 1) > self.settings.max_window_values:
            raise InvalidQuery(
                f"{nb} bins x {n_labels + 1} label counts is over the cap of "
                f"{self.settings.max_window_values} values; ask for fewer bins"
            )
        edges, got = ds.track_summary(name, a, b, nb)
        out = TrackSummary.model_construct(
            name=name,
            kind=info.kind,
            start=a,
            end=b,
            bins=int(edges.size - 1),
            bin_starts=[int(x) for x in edges],
            labels=info.labels,
            label_counts=None,
            unlabelled=None,
            mins=None,
            maxs=None,
            means=None,
            counts=None,
            mode_ids=None,
            mode_counts=None,
            mode_texts=None,
        )
        if info.kind == "discrete":
            out.label_counts = got["label_counts"].tolist()
            out.unlabelled = got["unlabelled"].tolist()
        elif info.kind == "scalar":
            out.mins = finite_list(got["mins"])
            out.maxs = finite_list(got["maxs"])
            out.means = finite_list(got["means"])
            out.counts = got["counts"].tolist()
        else:
            out.mode_ids = got["mode_ids"].tolist()
            out.mode_counts = got["mode_counts"].tolist()
            vocab = ds.vocab()
            if vocab:
                out.mode_texts = texts(vocab, got["mode_ids"])
        return out

    def on_count_summary(
        self,
        ds: Dataset,
        layer: str,
        cells: list[int] | None,
        threshold: float,
        start: int | None,
        end: int | None,
        bins: int,
    ) -> OnCountSummary:
        """Per bin of ``[start, end)`` (default: all steps): min / max / mean of how many of
        ``cells`` are on at ``threshold`` — from the bit planes when θ is on the layer's grid,
        else from the values (core ``summary.on_count_summary``, in chunks). 422 for cells or a
        range outside the data, a non-finite θ, bins over ``max_summary_bins``, and over the
        work cap: steps x cells ≤ ``max_summary_values`` off the grid (values read), ≤ 64 x
        ``max_summary_values`` on it (plane words read, 64 steps each)."""
        if cells is None:
            raise InvalidQuery("cells is required: the cell ids to count, e.g. cells=3,7,11")
        sel = cell_list(ds, layer, cells)
        if not math.isfinite(threshold):
            raise InvalidQuery(f"threshold must be a finite number, got {threshold}")
        a, b = summary_range(ds, start, end)
        n = b - a
        on_grid = ds.grid_index(layer, threshold) is not None
        cap = self.settings.max_summary_values * (64 if on_grid else 1)
        if n * len(sel) > cap:
            where = "on" if on_grid else "off"
            raise InvalidQuery(
                f"on-count summary of {n} steps x {len(sel)} cells = {n * len(sel)} is over "
                f"the cap of {cap} for a threshold {where} the layer's grid "
                f"({ds.thresholds(layer)}); ask for fewer steps or cells"
                + ("" if on_grid else ", or use a threshold of the grid")
            )
        nb = self._summary_bins(bins, n)
        got = on_counts_per_bin(ds, layer, sel, threshold, a, b, nb)
        return OnCountSummary.model_construct(
            layer=layer,
            start=a,
            end=b,
            bins=int(got.edges.size - 1),
            bin_starts=[int(x) for x in got.edges],
            cells=got.cells,
            threshold=threshold,
            threshold_on_grid=got.on_grid,
            mins=got.mins.tolist(),
            maxs=got.maxs.tolist(),
            means=got.means.tolist(),
        )

    # -- select --------------------------------------------------------------------------------

    def select(self, name_or_id: str, query: SelectQuery) -> SelectResult:
        return select_cells(self.dataset(name_or_id), query)


def texts(vocab: list[str], ids: npt.NDArray[np.integer]) -> list[str]:
    n = len(vocab)
    return [vocab[i] if 0 <= i < n else "" for i in ids.tolist()]


def text_matrix(vocab: list[str], ids: npt.NDArray[np.integer]) -> list[list[str]]:
    """``ids`` ``(n, K)`` → their texts (``""`` outside the vocabulary)."""
    table = np.asarray([*vocab, ""], dtype=object)
    n = len(vocab)
    safe = np.where((ids >= 0) & (ids < n), ids, n)
    return [[str(x) for x in row] for row in table[safe].tolist()]


def summary_range(ds: Dataset, start: int | None, end: int | None) -> tuple[int, int]:
    """``[start, end)`` of a summary (default: all steps). Raises ``InvalidQuery``."""
    T = ds.n_steps
    a = 0 if start is None else start
    b = T if end is None else end
    if not 0 <= a < b <= T:
        raise InvalidQuery(f"range [{a}, {b}) is not inside [0, {T}) or is empty")
    return a, b


def cell_list(ds: Dataset, layer: str, cells: list[int] | None) -> list[int]:
    """Sorted, de-duplicated cells of ``layer`` (all by default). Raises ``InvalidQuery``."""
    info = ds.layer(layer)
    sel = sorted(set(cells)) if cells is not None else list(range(info.n_cells))
    if not sel:
        raise InvalidQuery("cells must name at least one cell")
    bad = [c for c in sel if not 0 <= c < info.n_cells]
    if bad:
        raise InvalidQuery(
            f"cells {bad[:10]} are outside layer {layer!r} (cells 0..{info.n_cells - 1})"
        )
    return sel
