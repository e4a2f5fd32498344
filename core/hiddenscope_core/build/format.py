"""What a dataset's files look like to their readers: row groups, histogram bins, quantile
columns, the states' schema metadata and where a layer's interval files are.

``reader`` reads what the build writes with these; they are fixed by the format (changing one
changes the files), unlike the build's tuning (``sizes.BuildSizes``).
"""

from __future__ import annotations

PART_STEPS = 1 << 20
"""Steps per Parquet part file of states (the default of ``DatasetWriter.create``'s
``part_steps``; the manifest records a dataset's own)."""
ROW_GROUP_STEPS = 1024
"""Steps per Parquet row group of states (a window read decodes only these)."""
AUX_ROW_GROUP = 1 << 16
"""Rows per row group of tokens and tracks."""
HIST_BINS = 4096
"""Bins of the per-cell histogram behind the quantiles (between the layer min and max)."""
QUANTILES = (0.01, 0.05, 0.25, 0.50, 0.75, 0.95, 0.99)
QUANTILE_COLUMNS = ("q01", "q05", "q25", "q50", "q75", "q95", "q99")
"""The ``cell_stats`` columns of ``QUANTILES``."""
STATES_META_DTYPE = b"hiddenscope.dtype"
"""Parquet schema metadata key of the states' value dtype (``float32`` | ``float16``)."""
STATES_META_CELLS = b"hiddenscope.n_cells"
"""Parquet schema metadata key of ``D`` (values per step)."""
DUCKDB_MEMORY_LIMIT = "1GB"
"""DuckDB's memory limit while ``index.duckdb`` is written."""


def interval_glob(layer: str) -> str:
    """The interval files of a layer, relative to the dataset directory."""
    return f"layers/{layer}/intervals/part-*.parquet"
