"""Writing a dataset: streaming ingest into a staging directory, index build, atomic publication.

Layout and API: ``docs/architecture.md``. One concern per module:

* ``dataset`` - ``DatasetWriter``: inputs, the sharded build's API, publication.
* ``layer`` - ``LayerWriter``: one layer's rows into states, ``values.bin`` and the fused index.
* ``fused`` - ``FusedIndex``: the index built block by block while the rows arrive.
* ``index`` - ``IndexBuild``: planes and row planes from ``values.bin``, intervals, statistics,
  ``index.duckdb``.
* ``intervals`` - the on-interval phase (extraction fused with the Parquet encoding).
* ``kernels`` / ``histograms`` - the numba block kernels and the per-cell histograms.
* ``sharded`` - a sharded build's state; ``tracks`` - ``TrackWriter``; ``files`` - fsync and
  removal of a build directory; ``checks`` - input checks; ``format`` - what readers rely on;
  ``sizes`` - ``BuildSizes``, the block sizes (tuning, not format).

Memory stays bounded whatever ``T`` is: layer rows are buffered in blocks of at most
``BuildSizes.buffer_bytes``, the index is built per flushed block or in step blocks of at most
``BuildSizes.block_values`` values, and on-intervals are extracted and encoded one page at a
time (``intervals``).

Measured choices (2-vCPU reference box, D=64; numbers in ``docs/benchmarks.md``):

* Parquet states are one ``FixedSizeBinary(D * itemsize)`` column ``v`` per step holding the raw
  values' little-endian bytes (float32 or float16; the dtype and ``D`` are in the schema
  metadata), **uncompressed**, without statistics or dictionary. pyarrow's fixed-size-list
  encoder costs about 8 ns per value (~2 M steps/s at D=64); a fixed-size binary column is plain
  bytes. On float states LZ4/Snappy gain nothing (ratio 1.00-1.02) and zstd 9-22% at 25-40% less
  write speed. Written by our own writer (``parquet.states``: pages aligned for ``O_DIRECT``,
  ~12x less CPU than pyarrow's writer through the page cache) on a background thread.
* Files the build does not read back (states, ``values.bin`` when the index is fused,
  ``rows.bin``, the interval files) are written with ``O_DIRECT`` (``direct_io``): through the
  page cache each GB costs this VM class 0.3-1.7 CPU-seconds of kernel time.
* The index is built during the writes when the grid is known by the first flush
  (``fused``), else from ``values.bin`` after the last row (``index``); ``index`` says how
  ``rows.bin`` and the interval files are made and why intervals are Parquet, not DuckDB rows.
"""

from hiddenscope_core.build.dataset import DatasetWriter
from hiddenscope_core.build.files import remove_build_dir
from hiddenscope_core.build.layer import LayerWriter
from hiddenscope_core.build.sizes import BuildSizes
from hiddenscope_core.build.tracks import TrackOwner, TrackWriter

__all__ = [
    "BuildSizes",
    "DatasetWriter",
    "LayerWriter",
    "TrackOwner",
    "TrackWriter",
    "remove_build_dir",
]
