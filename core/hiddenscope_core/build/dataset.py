"""``DatasetWriter``: a dataset built in a staging directory and published atomically.

Inputs (sequences, tokens, vocabulary, layers, tracks) stream into ``staging/<id>``; a layer's
rows go through a ``layer.LayerWriter`` in this process, or shard by shard through any process
(a sharded build: ``declare_layer``, ``save_build``, ``resume``, ``write_layer_shard``,
``index_layer_shard``; its state in ``sharded``). ``publish`` builds the index
(``index.IndexBuild``), writes the manifest, fsyncs the tree and renames it into ``datasets/``,
then links the name. Every path of the data root comes from ``layout.Layout``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import ValidationError

from hiddenscope_core.build.checks import as_int_array, check_name
from hiddenscope_core.build.files import dir_size, fsync_path, fsync_tree, remove_build_dir
from hiddenscope_core.build.format import AUX_ROW_GROUP, PART_STEPS, ROW_GROUP_STEPS
from hiddenscope_core.build.index import IndexBuild, layer_grid, sequence_start_words
from hiddenscope_core.build.layer import LayerWriter
from hiddenscope_core.build.sharded import ShardedLayer, load_build_state, save_build_state
from hiddenscope_core.build.sizes import BuildSizes
from hiddenscope_core.build.tracks import TrackWriter
from hiddenscope_core.errors import Conflict, InvalidData, NotFound
from hiddenscope_core.layout import MANIFEST, Layout
from hiddenscope_core.models import (
    DatasetManifest,
    LayerInfo,
    SequenceInfo,
    StorageDType,
    TrackInfo,
    Transform,
)
from hiddenscope_core.thresholds import validate_grid

_ID_RE = re.compile(r"[A-Za-z0-9]{1,64}")


class DatasetWriter:
    """Builds one dataset in ``<data_root>/staging/<id>`` and publishes it atomically.

    Use ``DatasetWriter.create(...)``; as a context manager it aborts on an exception (and on a
    normal exit without ``publish()``). Not thread-safe: one writer per thread. ``sizes`` are
    the build's block sizes (``BuildSizes``; a sharded build records them for ``resume``).
    """

    def __init__(
        self,
        data_root: Path,
        dataset_id: str,
        name: str,
        n_steps: int,
        description: str,
        provenance: dict[str, Any],
        sizes: BuildSizes | None = None,
    ) -> None:
        self.data_root = data_root
        self.layout = Layout(data_root)
        self.id = dataset_id
        self.name = name
        self.n_steps = n_steps
        self.description = description
        self.provenance = provenance
        self.staging = self.layout.staging(dataset_id)
        self.build_dir = self.layout.build_state(dataset_id)
        self.sizes = BuildSizes() if sizes is None else sizes
        self.part_steps = PART_STEPS
        self.shard_steps = max(1, n_steps)  # one shard unless ``save_build`` says otherwise
        self._layers: dict[str, LayerWriter] = {}
        self._sharded: dict[str, ShardedLayer] = {}
        self._tracks: dict[str, TrackWriter] = {}
        self._starts = np.zeros(1, np.int64)
        self._seq_names: list[str] = ["seq0"]
        self._vocab: list[str] | None = None
        self._tokens: pq.ParquetWriter | None = None
        self._tokens_written = 0
        self._token_max = -1
        self._state = "open"  # open | published | aborted
        self.duckdb_threads: int | None = None  # None: DuckDB's default (all cores)
        self.timings: dict[str, float] = {}  # seconds per index-build phase (for benchmarks)
        # per layer, where the published index's planes came from (``IndexBuild.sources``)
        self.index_sources: dict[str, str] = {}

    @classmethod
    def create(
        cls,
        data_root: str | os.PathLike[str],
        name: str,
        n_steps: int,
        description: str = "",
        provenance: dict[str, Any] | None = None,
        part_steps: int | None = None,
        sizes: BuildSizes | None = None,
    ) -> DatasetWriter:
        """Start a dataset of ``n_steps`` steps named ``name``; ``part_steps`` (a power of two,
        at least ``ROW_GROUP_STEPS``; default ``PART_STEPS``) is the steps per Parquet part
        file of states, the unit of a sharded build. ``sizes``: the build's block sizes
        (default ``BuildSizes()``).

        Raises:
            InvalidData: a bad name, ``n_steps < 1`` or a bad ``part_steps``.
            Conflict: the name is already taken (checked again, atomically, at publication).
        """
        check_name(name, "dataset")
        if not isinstance(n_steps, int | np.integer) or n_steps < 1:
            raise InvalidData(f"n_steps must be a positive integer, got {n_steps!r}")
        ps = PART_STEPS if part_steps is None else int(part_steps)
        if ps < ROW_GROUP_STEPS or ps & (ps - 1):
            raise InvalidData(
                f"part_steps must be a power of two >= {ROW_GROUP_STEPS}, got {part_steps!r}"
            )
        layout = Layout(Path(data_root))
        layout.ensure()
        if os.path.lexists(layout.name_link(name)):
            raise Conflict(f"a dataset named {name!r} already exists; choose another name")
        dataset_id = secrets.token_urlsafe(12).replace("-", "x").replace("_", "y")
        layout.staging(dataset_id).mkdir()
        w = cls(layout.root, dataset_id, name, int(n_steps), description, dict(provenance or {}),
                sizes)  # fmt: skip
        w.part_steps = ps
        return w

    # -- context manager

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._state == "open":
            self.abort()

    def check_open(self) -> None:
        """Raise ``Conflict`` once the dataset is published or aborted."""
        if self._state != "open":
            raise Conflict(f"dataset {self.name!r} is {self._state}; it can no longer be written")

    # -- inputs

    def set_sequences(self, starts: npt.ArrayLike, names: Sequence[str] | None = None) -> None:
        """Declare sequences by their start steps (int, strictly increasing, first 0, all < T)
        and optional unique names (default ``seq<i>``).

        Raises:
            InvalidData: saying which start or name is wrong.
        """
        self.check_open()
        arr = as_int_array(starts, "sequence starts")
        if arr.ndim != 1 or arr.size == 0:
            raise InvalidData("sequence starts must be a non-empty 1-D list of step numbers")
        if arr[0] != 0:
            raise InvalidData(f"the first sequence must start at step 0, got {arr[0]}")
        bad = np.nonzero(np.diff(arr) <= 0)[0]
        if bad.size:
            i = int(bad[0]) + 1
            raise InvalidData(
                f"sequence starts must be strictly increasing; start {i} ({arr[i]}) is not "
                f"greater than start {i - 1} ({arr[i - 1]})"
            )
        if arr[-1] >= self.n_steps:
            raise InvalidData(
                f"sequence start {arr[-1]} is outside the dataset (n_steps={self.n_steps})"
            )
        if names is None:
            seq_names = [f"seq{i}" for i in range(arr.size)]
        else:
            seq_names = [str(x) for x in names]
            if len(seq_names) != arr.size:
                raise InvalidData(f"{len(seq_names)} sequence names given for {arr.size} starts")
            seen: set[str] = set()
            for x in seq_names:
                if x in seen:
                    raise InvalidData(f"sequence names must be unique; {x!r} appears twice")
                seen.add(x)
        self._starts = arr.copy()
        self._seq_names = seq_names

    def set_vocab(self, texts: Sequence[str]) -> None:
        """Token id ``i`` -> ``texts[i]``."""
        self.check_open()
        self._vocab = [str(x) for x in texts]

    def write_tokens(self, ids_chunk: npt.ArrayLike) -> None:
        """Append token ids (non-negative ints, 1-D) in step order, ``T`` in total.

        Raises:
            InvalidData: wrong dtype/shape, a negative id, or more than ``T`` ids.
        """
        self.check_open()
        arr = as_int_array(ids_chunk, "token ids")
        if arr.ndim != 1:
            raise InvalidData(f"token ids must be 1-D, got shape {arr.shape}")
        if self._tokens_written + arr.size > self.n_steps:
            raise InvalidData(
                f"{self._tokens_written + arr.size} token ids written but n_steps={self.n_steps}"
            )
        if arr.size:
            lo, hi = int(arr.min()), int(arr.max())
            if lo < 0 or hi >= 2**31:
                raise InvalidData(f"token ids must be in [0, 2^31), got [{lo}, {hi}]")
            self._token_max = max(self._token_max, hi)
        if self._tokens is None:
            schema = pa.schema([pa.field("token_id", pa.int32(), False)])
            self._tokens = pq.ParquetWriter(
                self.staging / "tokens.parquet", schema, compression="zstd"
            )
        self._tokens.write_table(
            pa.table({"token_id": arr.astype(np.int32)}, schema=self._tokens.schema), AUX_ROW_GROUP
        )
        self._tokens_written += arr.size

    def add_layer(
        self,
        name: str,
        n_cells: int,
        dtype: StorageDType = "float32",
        transform: Transform = "none",
        thresholds: Sequence[float] | None = None,
        kind: str | None = None,
    ) -> LayerWriter:
        """Declare a layer; write its rows with the returned ``LayerWriter.write``.

        ``thresholds`` overrides the default grid (validated: finite, ascending, unique, <= 32).

        Raises:
            InvalidData: bad name, size, dtype, transform or grid.
            Conflict: a layer of that name was already added.
        """
        self.check_open()
        info = self._layer_info(name, n_cells, dtype, transform, thresholds, kind)
        lw = LayerWriter(self, info, explicit_grid=thresholds is not None)
        self._layers[name] = lw
        return lw

    def _layer_info(
        self,
        name: str,
        n_cells: int,
        dtype: StorageDType,
        transform: Transform,
        thresholds: Sequence[float] | None,
        kind: str | None,
    ) -> LayerInfo:
        check_name(name, "layer")
        if name in self._layers or name in self._sharded:
            raise Conflict(f"layer {name!r} was already added")
        if dtype not in ("float32", "float16"):
            raise InvalidData(
                f"layer {name!r}: dtype must be 'float32' or 'float16', got {dtype!r}"
            )
        if transform not in ("none", "tanh"):
            raise InvalidData(f"layer {name!r}: transform must be 'none' or 'tanh'")
        grid = validate_grid(thresholds, name) if thresholds is not None else []
        try:
            info = LayerInfo(
                name=name,
                n_cells=n_cells,
                dtype=dtype,
                transform=transform,
                thresholds=grid,
                kind=kind,
            )
        except ValidationError as e:
            raise InvalidData(f"layer {name!r}: {e.errors()[0]['msg']}") from e
        return info

    # -- a sharded build: layers written by several processes, one step range each

    def declare_layer(
        self,
        name: str,
        n_cells: int,
        dtype: StorageDType = "float32",
        transform: Transform = "none",
        thresholds: Sequence[float] | None = None,
        kind: str | None = None,
    ) -> LayerInfo:
        """Declare a layer whose rows other processes write, shard by shard
        (``write_layer_shard``), instead of through a ``LayerWriter``. Same checks as
        ``add_layer``; call ``save_build`` after the last declaration."""
        self.check_open()
        info = self._layer_info(name, n_cells, dtype, transform, thresholds, kind)
        self._sharded[name] = ShardedLayer(
            self.staging, self.build_dir, info, thresholds is not None
        )
        return info

    def save_build(self, shard_steps: int) -> list[tuple[int, int]]:
        """Record the sharded build in the staging directory (``build/``) so that other
        processes can ``resume`` it, and return the shards' step ranges. ``shard_steps`` is
        rounded up to a multiple of the part size (a shard writes whole Parquet parts).

        Raises:
            InvalidData: ``shard_steps < 1`` or no layer was declared.
        """
        self.check_open()
        if shard_steps < 1:
            raise InvalidData(f"shard_steps must be >= 1, got {shard_steps}")
        if not self._sharded:
            raise InvalidData("declare the layers (declare_layer) before save_build")
        ps = self.part_steps
        self.shard_steps = -(-shard_steps // ps) * ps
        doc = {
            "name": self.name,
            "n_steps": self.n_steps,
            "description": self.description,
            "provenance": self.provenance,
            "part_steps": ps,
            "shard_steps": self.shard_steps,
            "sequence_names": self._seq_names,
            "sizes": dataclasses.asdict(self.sizes),
            "layers": [
                {"info": sl.info.model_dump(mode="json"), "explicit_grid": sl.explicit_grid}
                for sl in self._sharded.values()
            ],
        }
        save_build_state(self.build_dir, doc, self._starts)
        for sl in self._sharded.values():
            sl.dir.mkdir(parents=True, exist_ok=True)
        return self.shard_ranges()

    @classmethod
    def resume(cls, data_root: str | os.PathLike[str], dataset_id: str) -> DatasetWriter:
        """The writer of a sharded build saved by ``save_build`` (in any process), with the
        build's ``BuildSizes``.

        Raises:
            NotFound: no such build in ``staging`` (finished, aborted or never started).
        """
        layout = Layout(Path(data_root))
        if not _ID_RE.fullmatch(dataset_id):
            raise NotFound(f"no dataset build {dataset_id!r}")
        try:
            doc, starts = load_build_state(layout.build_state(dataset_id))
        except FileNotFoundError:
            raise NotFound(f"no dataset build {dataset_id!r} in {layout.staging_dir}") from None
        sizes = BuildSizes(**doc["sizes"]) if "sizes" in doc else None
        w = cls(layout.root, dataset_id, doc["name"], int(doc["n_steps"]), doc["description"],
                doc["provenance"], sizes)  # fmt: skip
        w.part_steps = int(doc["part_steps"])
        w.shard_steps = int(doc["shard_steps"])
        w._starts = starts
        w._seq_names = list(doc["sequence_names"])
        for entry in doc["layers"]:
            info = LayerInfo.model_validate(entry["info"])
            w._sharded[info.name] = ShardedLayer(
                w.staging, w.build_dir, info, bool(entry["explicit_grid"])
            )
        return w

    def shard_ranges(self) -> list[tuple[int, int]]:
        """The step ranges ``[start, stop)`` of the shards (after ``save_build``)."""
        T, n = self.n_steps, self.shard_steps
        return [(a, min(T, a + n)) for a in range(0, T, n)]

    def _shard(self, layer: str, shard: int) -> tuple[ShardedLayer, int, int]:
        sl = self._sharded.get(layer)
        if sl is None:
            raise NotFound(f"layer {layer!r} is not a declared layer of this build")
        ranges = self.shard_ranges()
        if not 0 <= shard < len(ranges):
            raise InvalidData(f"shard {shard} is not in [0, {len(ranges)})")
        a, b = ranges[shard]
        return sl, a, b

    def write_layer_shard(self, layer: str, shard: int, chunks: Iterable[npt.ArrayLike]) -> None:
        """Phase 1 of a sharded build: write the rows of shard ``shard`` of ``layer`` (chunks
        of rows in step order, exactly the shard's steps) - its Parquet parts, its part of
        ``values.bin`` and its statistics. Idempotent: a re-run overwrites the same files."""
        self.check_open()
        sl, a, b = self._shard(layer, shard)
        lw = LayerWriter(self, sl.info, sl.explicit_grid, a, b)
        try:
            for chunk in chunks:
                lw.write(chunk)
            lw.finish()
        except BaseException:
            lw.close_quietly()
            raise
        sl.save_part("stats", shard, cmin=lw.cmin, cmax=lw.cmax, csum=lw.csum, cnan=lw.cnan)

    def index_layer_shard(self, layer: str, shard: int) -> None:
        """Phase 2 of a sharded build (after phase 1 of every shard): the on-planes and row
        planes of the shard's steps, and its part of the histogram and run counts.
        Idempotent."""
        self.check_open()
        sl, a, b = self._shard(layer, shard)
        sl.merge_stats(len(self.shard_ranges()))
        grid = layer_grid(sl)
        hist, counts, ons = self._index_build().planes_range(sl, grid, a, b)
        sl.save_part("index", shard, hist=hist, counts=counts, ons=ons)

    def add_track(
        self,
        info: TrackInfo,
        values: npt.ArrayLike | None = None,
        *,
        ids: npt.ArrayLike | None = None,
        scores: npt.ArrayLike | None = None,
    ) -> TrackWriter:
        """Declare a meta track and optionally write its first (or only) rows; more rows can be
        written with the returned ``TrackWriter.write``. See ``TrackWriter`` for the data.

        Raises:
            InvalidData: bad data; Conflict: a track of that name exists.
        """
        self.check_open()
        if info.name in self._tracks:
            raise Conflict(f"track {info.name!r} was already added")
        tw = TrackWriter(self, info)
        self._tracks[info.name] = tw
        if values is not None or ids is not None or scores is not None:
            tw.write(values, ids=ids, scores=scores)
        return tw

    # -- publication

    def abort(self) -> None:
        """Discard everything written; the staging directory is removed. Idempotent."""
        if self._state == "published":
            return
        self._state = "aborted"
        for lw in self._layers.values():
            lw.close_quietly()
        for tw in self._tracks.values():
            tw.close_quietly()
        if self._tokens is not None:
            with contextlib.suppress(Exception):
                self._tokens.close()
            self._tokens = None
        remove_build_dir(self.data_root, self.staging)

    def publish(self) -> DatasetManifest:
        """Finish all inputs, build the index, and publish atomically.

        The dataset appears under ``datasets/<id>`` by one rename and gets its name by one
        symlink; on any error the staging directory is removed and nothing is visible.

        Raises:
            InvalidData: missing rows or tokens without a vocabulary (and nothing is published).
            Conflict: the name was taken meanwhile.
        """
        self.check_open()
        try:
            return self._publish()
        except BaseException:
            self.abort()
            raise

    def _publish(self) -> DatasetManifest:
        if not self._layers and not self._sharded:
            raise InvalidData("a dataset needs at least one layer (add_layer)")
        tic = time.perf_counter()
        n_shards = len(self.shard_ranges()) if self._sharded else 0
        for sl in self._sharded.values():
            sl.merge_stats(n_shards)
        for lw in self._layers.values():
            lw.finish()
        for tw in self._tracks.values():
            tw.finish()
        self.timings["finish_inputs"] = time.perf_counter() - tic
        has_tokens = self._tokens is not None
        if self._tokens is not None:
            self._tokens.close()
            self._tokens = None
            if self._tokens_written != self.n_steps:
                raise InvalidData(
                    f"{self._tokens_written} token ids written but n_steps={self.n_steps}"
                )
        if has_tokens and self._vocab is None:
            raise InvalidData("tokens were written but no vocabulary; call set_vocab(texts)")
        if self._vocab is not None and self._token_max >= len(self._vocab):
            raise InvalidData(
                f"token id {self._token_max} is outside the vocabulary of {len(self._vocab)} texts"
            )
        self._write_sequences()
        if self._vocab is not None:
            pq.write_table(
                pa.table(
                    {
                        "id": pa.array(np.arange(len(self._vocab), dtype=np.int32)),
                        "text": pa.array(self._vocab, pa.string()),
                    }
                ),
                self.staging / "vocab.parquet",
                compression="zstd",
            )
        index = self._index_build()
        layers = index.build([*self._layers.values(), *self._sharded.values()])
        self.index_sources = index.sources
        sizes: dict[str, int] = {}
        shutil.rmtree(self.build_dir, ignore_errors=True)
        for n in [*self._layers, *self._sharded]:
            ldir = self.staging / "layers" / n
            sizes[f"layers/{n}/states"] = dir_size(ldir / "states")
            sizes[f"layers/{n}/values.bin"] = dir_size(ldir / "values.bin")
            sizes[f"layers/{n}/planes.bin"] = dir_size(ldir / "planes.bin")
            sizes[f"layers/{n}/rows.bin"] = dir_size(ldir / "rows.bin")
            sizes[f"layers/{n}/intervals"] = dir_size(ldir / "intervals")
        for part in ("index.duckdb", "sequences.parquet", "tokens.parquet", "vocab.parquet"):
            if (self.staging / part).exists():
                sizes[part] = dir_size(self.staging / part)
        for tn in self._tracks:
            sizes[f"tracks/{tn}.parquet"] = dir_size(self.staging / "tracks" / f"{tn}.parquet")
        manifest = DatasetManifest(
            id=self.id,
            name=self.name,
            description=self.description,
            n_steps=self.n_steps,
            n_sequences=int(self._starts.size),
            vocab_size=len(self._vocab) if self._vocab is not None else 0,
            has_tokens=has_tokens,
            layers=layers,
            tracks=[tw.info for tw in self._tracks.values()],
            part_steps=self.part_steps,
            created_at=datetime.now(UTC),
            sizes=sizes,
            provenance=self.provenance,
        )
        (self.staging / MANIFEST).write_text(manifest.model_dump_json(indent=2))
        tic = time.perf_counter()
        fsync_tree(self.staging)
        self.timings["fsync"] = time.perf_counter() - tic
        final = self.layout.dataset(self.id)
        os.rename(self.staging, final)
        fsync_path(self.layout.datasets_dir)
        self._state = "published"
        link = self.layout.name_link(self.name)
        try:
            os.symlink(self.layout.name_target(self.id), link)
        except FileExistsError:
            self._state = "aborted"
            shutil.rmtree(final, ignore_errors=True)
            raise Conflict(
                f"a dataset named {self.name!r} was published meanwhile; choose another name"
            ) from None
        fsync_path(self.layout.names_dir)
        return manifest

    def _write_sequences(self) -> None:
        ends = np.append(self._starts[1:], self.n_steps)
        pq.write_table(
            pa.table(
                {
                    "start": pa.array(self._starts, pa.int64()),
                    "end": pa.array(ends, pa.int64()),
                    "name": pa.array(self._seq_names, pa.string()),
                }
            ),
            self.staging / "sequences.parquet",
        )

    def sequences(self) -> list[SequenceInfo]:
        """The declared sequences (for callers building a manifest-like view)."""
        ends = np.append(self._starts[1:], self.n_steps)
        return [
            SequenceInfo(index=i, name=n, start=int(s), end=int(e))
            for i, (s, e, n) in enumerate(zip(self._starts, ends, self._seq_names, strict=True))
        ]

    # -- the index

    # -- the index

    def sequence_start_words(self, b0: int, b1: int) -> npt.NDArray[np.uint64]:
        """Bit ``t`` set where a sequence (other than the first) starts, for steps [b0, b1)
        (``index.sequence_start_words`` of the sequences declared so far)."""
        return sequence_start_words(self._starts, b0, b1)

    def _index_build(self) -> IndexBuild:
        return IndexBuild(
            self.staging,
            self.n_steps,
            self._starts,
            self.sizes,
            n_shards=len(self.shard_ranges()) if self._sharded else 0,
            duckdb_threads=self.duckdb_threads,
            timings=self.timings,
        )
