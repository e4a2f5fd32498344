"""Reading published datasets (read-only; any number of processes at once).

``open_dataset`` is cheap: it reads ``manifest.json`` only. Parquet file handles are opened on
first use and cached per ``Dataset``; DuckDB connections are opened per call with
``read_only=True`` (DuckDB allows many read-only processes, never a writer alongside them) by
``Dataset.connect``, which every reader must use: it points DuckDB's ``file_search_path`` at the
dataset directory, where the ``on_intervals`` view's relative Parquet paths resolve.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

from hiddenscope_core import bits
from hiddenscope_core.build.format import QUANTILE_COLUMNS, ROW_GROUP_STEPS, interval_glob
from hiddenscope_core.errors import InvalidQuery, NotFound
from hiddenscope_core.layout import MANIFEST, Layout
from hiddenscope_core.models import DatasetManifest, LayerInfo
from hiddenscope_core.summary import SUMMARY_CHUNK_STEPS, TrackSummaryAccumulator, bin_edges
from hiddenscope_core.transforms import transform_values, values_dtype


class Dataset:
    """A published dataset. Arrays are returned read-only (memmaps) or as fresh copies."""

    def __init__(self, path: Path, manifest: DatasetManifest) -> None:
        self.path = path
        self.manifest = manifest
        self._parts: dict[tuple[str, int], pq.ParquetFile] = {}
        self._aux: dict[str, tuple[pq.ParquetFile, npt.NDArray[np.int64]]] = {}

    # -- basics

    @property
    def id(self) -> str:
        return self.manifest.id

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def n_steps(self) -> int:
        return self.manifest.n_steps

    def layer(self, name: str) -> LayerInfo:
        """Raises ``NotFound`` (listing the layers) for an unknown name."""
        return self.manifest.layer(name)

    def _check_range(self, start: int, end: int) -> None:
        T = self.n_steps
        if not (0 <= start < end <= T):
            raise InvalidQuery(
                f"step range [{start}, {end}) is not inside [0, {T}) or is empty; "
                f"use 0 <= start < end <= {T}"
            )

    # -- sequences

    @cached_property
    def _sequences(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], list[str]]:
        t = pq.read_table(self.path / "sequences.parquet")
        starts = t.column("start").to_numpy().astype(np.int64)
        ends = t.column("end").to_numpy().astype(np.int64)
        starts.flags.writeable = False
        ends.flags.writeable = False
        return starts, ends, [str(x) for x in t.column("name").to_pylist()]

    def sequence_starts(self) -> npt.NDArray[np.int64]:
        """Start step of each sequence, int64, ascending, first 0 (read-only array)."""
        return self._sequences[0]

    def sequence_ends(self) -> npt.NDArray[np.int64]:
        """End step (exclusive) of each sequence, int64 (read-only array)."""
        return self._sequences[1]

    def sequence_names(self) -> list[str]:
        return list(self._sequences[2])

    def sequence_of(self, step: int) -> int:
        """Index of the sequence holding ``step``. Raises ``InvalidQuery`` outside [0, T)."""
        if not 0 <= step < self.n_steps:
            raise InvalidQuery(f"step {step} is outside [0, {self.n_steps})")
        return int(np.searchsorted(self.sequence_starts(), step, side="right")) - 1

    # -- states

    def _part(self, layer: str, part: int) -> pq.ParquetFile:
        key = (layer, part)
        f = self._parts.get(key)
        if f is None:
            path = self.path / "layers" / layer / "states" / f"part-{part:05d}.parquet"
            f = pq.ParquetFile(path, memory_map=True)
            self._parts[key] = f
        return f

    def window(
        self,
        layer: str,
        start: int,
        end: int,
        cells: npt.ArrayLike | None = None,
    ) -> npt.NDArray[np.float32]:
        """Transformed values ``v`` of steps ``[start, end)``: float32 ``(end - start, n_cells)``
        or ``(end - start, len(cells))``, read from the Parquet states (only the row groups that
        hold the range).

        Raises:
            NotFound: unknown layer. InvalidQuery: range outside [0, T) or a bad cell id.
        """
        info = self.layer(layer)
        self._check_range(start, end)
        sel = self._cells(info, cells)
        part_steps = self.manifest.part_steps
        out = np.empty((end - start, info.n_cells if sel is None else sel.size), np.float32)
        raw_dt = np.dtype("<f4" if info.dtype == "float32" else "<f2")
        t = start
        while t < end:
            part = t // part_steps
            p0 = part * part_steps
            stop = min(end, p0 + part_steps)
            rg0 = (t - p0) // ROW_GROUP_STEPS
            rg1 = (stop - 1 - p0) // ROW_GROUP_STEPS
            table = self._part(layer, part).read_row_groups(
                list(range(rg0, rg1 + 1)), columns=["v"], use_threads=False
            )
            raw = _decode_states(table.column(0), raw_dt, info.n_cells)
            off = t - (p0 + rg0 * ROW_GROUP_STEPS)
            rows = raw[off : off + (stop - t)]
            if sel is not None:
                rows = rows[:, sel]
            out[t - start : stop - start] = transform_values(rows, info.transform)
            t = stop
        return out

    @staticmethod
    def _cells(info: LayerInfo, cells: npt.ArrayLike | None) -> npt.NDArray[np.intp] | None:
        if cells is None:
            return None
        sel = np.asarray(cells)
        if sel.dtype.kind not in "iu" or sel.ndim != 1:
            raise InvalidQuery("cells must be a 1-D list of integer cell ids")
        if sel.size and (sel.min() < 0 or sel.max() >= info.n_cells):
            raise InvalidQuery(
                f"cell ids must be in [0, {info.n_cells}) for layer {info.name!r}, "
                f"got [{sel.min()}, {sel.max()}]"
            )
        return sel.astype(np.intp)

    def values(self, layer: str) -> npt.NDArray[np.floating]:
        """Transformed values, column-major: read-only memmap ``(D, T)`` of float32 (float16 for
        a float16 layer with transform ``none``)."""
        info = self.layer(layer)
        dt = values_dtype(info.dtype, info.transform)
        path = self.path / "layers" / layer / "values.bin"
        return np.memmap(path, dtype=dt, mode="r", shape=(info.n_cells, self.n_steps))

    def planes(self, layer: str) -> npt.NDArray[np.uint64]:
        """On-planes: read-only memmap ``(G, D, W)`` uint64, ``W = ceil(T / 64)``; bit ``t & 63``
        of word ``t >> 6`` of plane ``[g, c]`` is ``v[t, c] >= thresholds[g]``. With an empty
        grid an empty ``(0, D, W)`` array."""
        info = self.layer(layer)
        G, W = len(info.thresholds), bits.n_words(self.n_steps)
        if G == 0:
            return np.zeros((0, info.n_cells, W), np.uint64)
        path = self.path / "layers" / layer / "planes.bin"
        return np.memmap(path, dtype=np.uint64, mode="r", shape=(G, info.n_cells, W))

    def rows(self, layer: str) -> npt.NDArray[np.uint64]:
        """Row-major on-planes: read-only memmap ``(G, T, Dw)`` uint64, ``Dw = ceil(D / 64)``;
        bit ``c & 63`` of word ``[g, t, c >> 6]`` is ``v[t, c] >= thresholds[g]`` (bits of
        cells ``>= D`` are 0). With an empty grid an empty ``(0, T, Dw)`` array."""
        info = self.layer(layer)
        G, Dw = len(info.thresholds), bits.n_words(info.n_cells)
        if G == 0:
            return np.zeros((0, self.n_steps, Dw), np.uint64)
        path = self.path / "layers" / layer / "rows.bin"
        return np.memmap(path, dtype=np.uint64, mode="r", shape=(G, self.n_steps, Dw))

    def thresholds(self, layer: str) -> list[float]:
        """The threshold grid of a layer, ascending."""
        return list(self.layer(layer).thresholds)

    def grid_index(self, layer: str, threshold: float) -> int | None:
        """Index of ``threshold`` in the layer's grid (exact match), else ``None``."""
        for g, theta in enumerate(self.layer(layer).thresholds):
            if theta == threshold:
                return g
        return None

    # -- tokens and tracks

    def _aux_file(self, rel: str) -> tuple[pq.ParquetFile, npt.NDArray[np.int64]]:
        """A cached tokens/track file and the first step of each row group (row groups follow
        the writer's chunks, so their sizes vary)."""
        hit = self._aux.get(rel)
        if hit is None:
            f = pq.ParquetFile(self.path / rel, memory_map=True)
            md = f.metadata
            sizes = [md.row_group(i).num_rows for i in range(md.num_row_groups)]
            firsts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
            hit = (f, firsts)
            self._aux[rel] = hit
        return hit

    def _aux_rows(self, rel: str, start: int, end: int, columns: list[str]) -> pa.Table:
        self._check_range(start, end)
        f, firsts = self._aux_file(rel)
        rg0 = int(np.searchsorted(firsts, start, side="right")) - 1
        rg1 = int(np.searchsorted(firsts, end - 1, side="right")) - 1
        table = f.read_row_groups(list(range(rg0, rg1 + 1)), columns=columns, use_threads=False)
        return table.slice(start - int(firsts[rg0]), end - start)

    def _aux_batches(
        self, rel: str, start: int, end: int, columns: list[str], batch_rows: int
    ) -> Iterator[tuple[int, pa.RecordBatch]]:
        """Rows ``[start, end)`` of a tokens/track file as consecutive record batches of at most
        ``batch_rows`` rows, each with its first step: only the row groups holding the range are
        read, one batch at a time (memory bounded by ``batch_rows``, not by the range). A fresh
        file handle per call, so concurrent readers of one ``Dataset`` do not share a reader."""
        self._check_range(start, end)
        _cached, firsts = self._aux_file(rel)
        rg0 = int(np.searchsorted(firsts, start, side="right")) - 1
        rg1 = int(np.searchsorted(firsts, end - 1, side="right")) - 1
        f = pq.ParquetFile(self.path / rel, memory_map=True)
        try:
            t = int(firsts[rg0])
            batches = f.iter_batches(
                batch_size=max(1, batch_rows),
                row_groups=list(range(rg0, rg1 + 1)),
                columns=columns,
                use_threads=False,
            )
            for batch in batches:
                n = batch.num_rows
                lo, hi = max(start, t), min(end, t + n)
                if hi > lo:
                    yield lo, batch.slice(lo - t, hi - lo)
                t += n
                if t >= end:
                    break
        finally:
            f.close()

    def tokens(self, start: int, end: int) -> npt.NDArray[np.int32]:
        """Token ids of steps ``[start, end)``, int32. Raises ``NotFound`` without tokens."""
        if not self.manifest.has_tokens:
            raise NotFound(f"dataset {self.name!r} has no tokens")
        t = self._aux_rows("tokens.parquet", start, end, ["token_id"])
        ids: npt.NDArray[np.int32] = t.column(0).to_numpy().astype(np.int32)
        return ids

    @cached_property
    def _vocab(self) -> list[str]:
        if not (self.path / "vocab.parquet").exists():
            return []
        t = pq.read_table(self.path / "vocab.parquet")
        return [str(x) for x in t.column("text").to_pylist()]

    def vocab(self) -> list[str]:
        """Token id ``i`` -> text (empty list without a vocabulary)."""
        return list(self._vocab)

    def track(self, name: str, start: int, end: int) -> dict[str, npt.NDArray[Any]]:
        """Rows ``[start, end)`` of a meta track: ``{"label": int32 (n,)}`` (discrete; -1 =
        none), ``{"value": float32 (n,)}`` (scalar) or ``{"ids": int32 (n, K), "scores":
        float32 (n, K)}`` (topk).

        Raises:
            NotFound: unknown track. InvalidQuery: range outside [0, T).
        """
        info = self.manifest.track(name)
        rel = f"tracks/{name}.parquet"
        if info.kind == "discrete":
            t = self._aux_rows(rel, start, end, ["label"])
            return {"label": t.column(0).to_numpy().astype(np.int32)}
        if info.kind == "scalar":
            t = self._aux_rows(rel, start, end, ["value"])
            return {"value": t.column(0).to_numpy().astype(np.float32)}
        k = info.k or 0
        t = self._aux_rows(rel, start, end, ["ids", "scores"])
        out: dict[str, npt.NDArray[Any]] = {}
        for col, dt in (("ids", np.int32), ("scores", np.float32)):
            chunked = t.column(col)
            vals = [c.flatten().to_numpy(zero_copy_only=False) for c in chunked.chunks]
            flat = np.concatenate(vals) if vals else np.empty(0, dt)
            out[col] = flat.astype(dt).reshape(-1, k)
        return out

    def track_summary(
        self,
        name: str,
        start: int,
        end: int,
        bins: int,
        *,
        batch_rows: int = SUMMARY_CHUNK_STEPS,
    ) -> tuple[npt.NDArray[np.int64], dict[str, npt.NDArray[Any]]]:
        """A meta track over ``[start, end)`` in ``min(bins, end - start)`` equal-width bins,
        streamed from its Parquet row groups ``batch_rows`` rows at a time (memory bounded by
        ``batch_rows`` and the bins). Returns the bin edges (``bins + 1``, int64) and the
        per-bin arrays of :class:`hiddenscope_core.summary.TrackSummaryAccumulator`: discrete
        ``label_counts`` ``(bins, n_labels)`` and ``unlabelled``; scalar ``mins``, ``maxs``,
        ``means`` (finite values; NaN where none) and ``counts``; topk ``mode_ids`` and
        ``mode_counts`` (the most frequent top-1 id per bin, ties to the smallest id).

        Raises:
            NotFound: unknown track. InvalidQuery: range outside [0, T), bins < 1.
        """
        info = self.manifest.track(name)
        self._check_range(start, end)
        edges = bin_edges(start, end, bins)
        acc = TrackSummaryAccumulator(info, edges)
        column = {"discrete": "label", "scalar": "value"}.get(info.kind, "ids")
        k = info.k or 1
        rel = f"tracks/{name}.parquet"
        for c0, batch in self._aux_batches(rel, start, end, [column], batch_rows):
            col = batch.column(0)
            if info.kind == "topk":
                flat = col.flatten().to_numpy(zero_copy_only=False)  # the slice's K x n ids
                acc.add(c0, flat.reshape(-1, k)[:, 0])
            else:
                acc.add(c0, col.to_numpy(zero_copy_only=False))
        return edges, acc.result()

    # -- the DuckDB index

    def connect(self) -> duckdb.DuckDBPyConnection:
        """A new read-only DuckDB connection to ``index.duckdb``; the caller closes it.

        ``file_search_path`` is set to the dataset directory: the view ``on_intervals`` reads
        ``layers/<layer>/intervals/part-*.parquet`` by paths relative to it (the dataset was
        renamed at publication, so the index holds no absolute paths). Every reader of the index
        must connect here."""
        con = duckdb.connect(str(self.path / "index.duckdb"), read_only=True)
        try:
            con.execute("SET file_search_path = " + _sql_str(str(self.path)))
        except BaseException:
            con.close()
            raise
        return con

    def cell_stats(self, layer: str) -> dict[str, npt.NDArray[Any]]:
        """Per-cell statistics of a layer, ordered by cell: ``cell`` int32, ``min``/``max``/
        ``mean`` float64 (NaN for an all-NaN cell), ``nan_count`` int64 and approximate
        quantiles ``q01 .. q99`` float64 (from a 4096-bin histogram over the layer's range)."""
        self.layer(layer)
        cols = ", ".join(("cell", "min", "max", "mean", "nan_count", *QUANTILE_COLUMNS))
        con = self.connect()
        try:
            res = con.execute(
                f"SELECT {cols} FROM cell_stats WHERE layer = ? ORDER BY cell", [layer]
            ).fetchnumpy()
        finally:
            con.close()
        return {k: np.asarray(v) for k, v in res.items()}

    def cell_on_fraction(self, layer: str) -> npt.NDArray[np.float64]:
        """Fraction of all steps on, ``(G, D)`` float64, per grid threshold and cell."""
        info = self.layer(layer)
        G, D = len(info.thresholds), info.n_cells
        out = np.zeros((G, D))
        if G == 0:
            return out
        con = self.connect()
        try:
            res = con.execute(
                "SELECT threshold, cell, fraction FROM cell_on_fraction WHERE layer = ?", [layer]
            ).fetchnumpy()
        finally:
            con.close()
        g = np.searchsorted(np.asarray(info.thresholds), np.asarray(res["threshold"]))
        out[g, np.asarray(res["cell"])] = np.asarray(res["fraction"])
        return out

    def on_intervals(
        self,
        layer: str,
        threshold: float,
        cell: int,
        start: int = 0,
        end: int | None = None,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """Maximal on-runs ``[s, e)`` of ``cell`` at a grid ``threshold`` that overlap
        ``[start, end)`` (default: all steps), cut at sequence boundaries, ordered by start.
        Returns ``(starts, ends)`` int64 arrays.

        Raises:
            NotFound: unknown layer. InvalidQuery: threshold not on the grid, bad cell or range.
        """
        info = self.layer(layer)
        end = self.n_steps if end is None else end
        self._check_range(start, end)
        if not 0 <= cell < info.n_cells:
            raise InvalidQuery(f"cell {cell} is outside [0, {info.n_cells}) of layer {layer!r}")
        g = self.grid_index(layer, threshold)
        if g is None:
            raise InvalidQuery(
                f"threshold {threshold} is not on the grid of layer {layer!r} "
                f"({info.thresholds}); on-intervals are stored for grid thresholds only"
            )
        con = self.connect()
        try:
            # the layer's files directly (the view ``on_intervals`` is the same data): the
            # row-group statistics of threshold_index and cell prune the scan
            res = con.execute(
                f'SELECT start, "end" AS e FROM read_parquet({_sql_str(interval_glob(layer))}) '
                'WHERE threshold_index = ? AND cell = ? AND start < ? AND "end" > ? '
                "ORDER BY start",
                [g, cell, end, start],
            ).fetchnumpy()
        finally:
            con.close()
        return (
            np.asarray(res["start"]).astype(np.int64),
            np.asarray(res["e"]).astype(np.int64),
        )


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _decode_states(col: pa.ChunkedArray, dt: np.dtype[Any], d: int) -> npt.NDArray[Any]:
    """Rows ``(n, D)`` of a states column (``FixedSizeBinary(D * itemsize)``, little-endian
    raw values): zero-copy for one chunk."""
    parts = []
    width = d * dt.itemsize
    for chunk in col.chunks:
        buf = chunk.buffers()[1]
        a = np.frombuffer(buf, dtype=dt, count=len(chunk) * d, offset=chunk.offset * width)
        parts.append(a.reshape(-1, d))
    if len(parts) == 1:
        return parts[0]
    return np.concatenate(parts) if parts else np.empty((0, d), dt)


def open_dataset(path: str | os.PathLike[str]) -> Dataset:
    """Open a published dataset directory (``<data_root>/datasets/<id>`` or a name link).

    Raises:
        NotFound: no dataset (no ``manifest.json``) at ``path``.
    """
    p = Path(path)
    manifest_path = p / MANIFEST
    try:
        text = manifest_path.read_text()
    except FileNotFoundError:
        raise NotFound(f"no published dataset at {p} (manifest.json is missing)") from None
    return Dataset(p.resolve(), DatasetManifest.model_validate_json(text))


class Catalog:
    """The published datasets under ``data_root`` (those with a name link in ``names/``)."""

    def __init__(self, data_root: str | os.PathLike[str]) -> None:
        self.root = Path(data_root)
        self.layout = Layout(self.root)

    def _names(self) -> dict[str, str]:
        """name -> id of every published dataset."""
        names_dir = self.layout.names_dir
        out: dict[str, str] = {}
        if not names_dir.is_dir():
            return out
        for entry in os.scandir(names_dir):
            if entry.is_symlink():
                target = os.readlink(entry.path)
                out[entry.name] = Path(target).name
        return out

    def list(self) -> list[DatasetManifest]:
        """Manifests of the published datasets, by name."""
        out = []
        for name, dataset_id in sorted(self._names().items()):
            try:
                out.append(open_dataset(self.layout.dataset(dataset_id)).manifest)
            except NotFound:
                continue  # a name whose dataset is being deleted
            _ = name
        return out

    def _resolve(self, name_or_id: str) -> tuple[str | None, str]:
        names = self._names()
        if name_or_id in names:
            return name_or_id, names[name_or_id]
        safe = "/" not in name_or_id and name_or_id not in ("", ".", "..")
        if safe and self.layout.manifest(name_or_id).exists():
            name = next((n for n, i in names.items() if i == name_or_id), None)
            return name, name_or_id
        raise NotFound(f"no dataset with name or id {name_or_id!r}")

    def get(self, name_or_id: str) -> Dataset:
        """Open a dataset by name or id. Raises ``NotFound``."""
        _name, dataset_id = self._resolve(name_or_id)
        return open_dataset(self.layout.dataset(dataset_id))

    def delete(self, name_or_id: str) -> None:
        """Remove a dataset: the name link first (so it disappears at once), then its files.
        Processes that opened it keep their open handles. Raises ``NotFound``."""
        name, dataset_id = self._resolve(name_or_id)
        if name is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.layout.name_link(name))
        shutil.rmtree(self.layout.dataset(dataset_id), ignore_errors=True)
