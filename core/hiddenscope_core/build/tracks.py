"""``TrackWriter``: the rows of one meta track (discrete labels, scalars or top-k predictions)
into ``tracks/<name>.parquet`` of a staging directory, for a new dataset (``DatasetWriter``)
or a new version of a published one (``versions.VersionWriter``).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

from hiddenscope_core.build.checks import as_int_array
from hiddenscope_core.build.format import AUX_ROW_GROUP
from hiddenscope_core.errors import InvalidData
from hiddenscope_core.models import TrackInfo


class TrackOwner(Protocol):
    """What a ``TrackWriter`` needs of the writer it belongs to (a ``DatasetWriter``, or a
    ``versions.VersionWriter`` adding tracks to a published dataset)."""

    @property
    def staging(self) -> Path: ...
    @property
    def n_steps(self) -> int: ...
    def check_open(self) -> None: ...


class TrackWriter:
    """Receives the rows of one meta track in step order.

    ``discrete``: ``values`` int label indices into ``info.labels`` (``-1`` = no label);
    ``scalar``: ``values`` floats (NaN = missing); ``topk``: ``ids`` int ``(n, K)`` and
    ``scores`` float ``(n, K)``.
    """

    def __init__(self, owner: TrackOwner, info: TrackInfo) -> None:
        self._owner = owner
        self.info = info
        self.rows_written = 0
        if info.kind == "discrete":
            if not info.labels:
                raise InvalidData(
                    f"discrete track {info.name!r} needs its label list (labels=[...])"
                )
            self._schema = pa.schema([pa.field("label", pa.int32(), False)])
        elif info.kind == "scalar":
            self._schema = pa.schema([pa.field("value", pa.float32(), False)])
        else:
            if info.k is None or info.k < 1:
                raise InvalidData(f"topk track {info.name!r} needs k >= 1 (predictions per step)")
            self._schema = pa.schema(
                [
                    pa.field("ids", pa.list_(pa.field("item", pa.int32(), False), info.k), False),
                    pa.field(
                        "scores", pa.list_(pa.field("item", pa.float32(), False), info.k), False
                    ),
                ]
            )
        path = owner.staging / "tracks" / f"{info.name}.parquet"
        path.parent.mkdir(exist_ok=True)
        self._writer = pq.ParquetWriter(path, self._schema, compression="zstd")
        self.closed = False

    def write(
        self,
        values: npt.ArrayLike | None = None,
        *,
        ids: npt.ArrayLike | None = None,
        scores: npt.ArrayLike | None = None,
    ) -> None:
        """Append rows. Raises ``InvalidData`` for a wrong shape, dtype, label index or size."""
        self._owner.check_open()
        info = self.info
        name = info.name
        table: pa.Table
        if info.kind in ("discrete", "scalar"):
            if values is None or ids is not None or scores is not None:
                raise InvalidData(f"{info.kind} track {name!r}: pass values=..., not ids/scores")
            arr = np.asarray(values)
            if arr.ndim != 1:
                raise InvalidData(f"track {name!r}: values must be 1-D, got shape {arr.shape}")
            if info.kind == "discrete":
                labels = as_int_array(arr, f"discrete track {name!r} values")
                n_labels = len(info.labels or [])
                if labels.size and (labels.min() < -1 or labels.max() >= n_labels):
                    raise InvalidData(
                        f"discrete track {name!r}: label indices must be in [-1, {n_labels}) "
                        f"(-1 = none), got [{labels.min()}, {labels.max()}]"
                    )
                table = pa.table({"label": labels.astype(np.int32)}, schema=self._schema)
            else:
                if arr.dtype.kind not in "fiu":
                    raise InvalidData(f"scalar track {name!r}: values must be numbers")
                table = pa.table({"value": arr.astype(np.float32)}, schema=self._schema)
            n = arr.shape[0]
        else:
            if ids is None or scores is None or values is not None:
                raise InvalidData(f"topk track {name!r}: pass ids=... and scores=...")
            k = info.k or 0
            id_arr = as_int_array(ids, f"topk track {name!r} ids")
            sc_arr = np.asarray(scores)
            if id_arr.ndim != 2 or id_arr.shape[1] != k or sc_arr.shape != id_arr.shape:
                raise InvalidData(
                    f"topk track {name!r}: ids and scores must both have shape (n, {k}), got "
                    f"{id_arr.shape} and {sc_arr.shape}"
                )
            if sc_arr.dtype.kind not in "fiu":
                raise InvalidData(f"topk track {name!r}: scores must be numbers")
            n = id_arr.shape[0]
            table = pa.table(
                {
                    "ids": pa.FixedSizeListArray.from_arrays(
                        pa.array(id_arr.astype(np.int32).reshape(-1)), k
                    ),
                    "scores": pa.FixedSizeListArray.from_arrays(
                        pa.array(sc_arr.astype(np.float32).reshape(-1)), k
                    ),
                },
                schema=self._schema,
            )
        if self.rows_written + n > self._owner.n_steps:
            raise InvalidData(
                f"track {name!r}: {self.rows_written + n} rows written but n_steps="
                f"{self._owner.n_steps}; write exactly one row per step"
            )
        self._writer.write_table(table, AUX_ROW_GROUP)
        self.rows_written += n

    def finish(self) -> None:
        if self.closed:
            return
        if self.rows_written != self._owner.n_steps:
            raise InvalidData(
                f"track {self.info.name!r} has {self.rows_written} rows but n_steps="
                f"{self._owner.n_steps}"
            )
        self._writer.close()
        self.closed = True

    def close_quietly(self) -> None:
        if not self.closed:
            self.closed = True
            with contextlib.suppress(Exception):
                self._writer.close()
