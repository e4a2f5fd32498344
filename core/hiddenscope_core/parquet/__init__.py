"""Parquet files written by hand where pyarrow's writer was the build's largest cost.

* ``thrift`` - the compact protocol and the format's enums (page headers, footers).
* ``delta`` - DELTA_BINARY_PACKED pages in numba (the interval columns' encoding).
* ``intervals`` - ``IntervalParquetWriter``: the on-interval table, and its footer.
* ``states`` - ``StatesParquetWriter``: a layer's hidden-state rows, pages written with
  ``O_DIRECT``.

Every file reads back in pyarrow and DuckDB exactly like pyarrow's own (``tests/core/
test_parquet_*.py``). The index build's interval phase (``build.intervals``) uses ``delta`` and
``intervals``' footer through their public names.
"""
