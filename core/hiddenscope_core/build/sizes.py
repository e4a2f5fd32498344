"""The build's block and chunk sizes: tuning that bounds memory and sets the work per block,
not part of the files' format (``format``).

Production uses the defaults; tests pass small ones (``DatasetWriter.create(..., sizes=...)``)
so that a few thousand steps cross every kind of block, chunk and file boundary.
"""

from __future__ import annotations

from dataclasses import dataclass

from hiddenscope_core.build.intervals import PART_ROWS, ROW_GROUP_ROWS

# raw rows buffered per layer before a flush: 64 MB makes values.bin's per-cell writes 1 MB
# at D = 64 (0.04 CPU-s per GB written with O_DIRECT here, 0.17 at 256 KB: benchmarks.md)
BUFFER_BYTES = 64 << 20
BLOCK_VALUES = 1 << 22  # values (steps x cells) per index-build block (planes stay in cache)
INTERVAL_CHUNK_LOG2 = 24


@dataclass(frozen=True)
class BuildSizes:
    """Sizes of a build's blocks (all in rows, steps or values; powers of two where said).

    Attributes:
        buffer_bytes: raw rows buffered per layer before a flush (bytes; the flush is rounded
            to a power of two of steps that divides the part size).
        block_values: values (steps x cells) per block when the index is built from
            ``values.bin`` (the block's planes stay in cache).
        interval_chunk_log2: run starts are counted per ``2^interval_chunk_log2`` steps of each
            (threshold, cell), which the interval phase checks the extracted runs against
            (at least 6).
        interval_row_group: rows per row group of the interval files.
        interval_part_rows: rows per interval part file (a multiple of ``interval_row_group``
            after rounding down).
    """

    buffer_bytes: int = BUFFER_BYTES
    block_values: int = BLOCK_VALUES
    interval_chunk_log2: int = INTERVAL_CHUNK_LOG2
    interval_row_group: int = ROW_GROUP_ROWS
    interval_part_rows: int = PART_ROWS

    def __post_init__(self) -> None:
        if min(self.buffer_bytes, self.block_values, self.interval_row_group) < 1:
            raise ValueError("buffer_bytes, block_values and interval_row_group must be >= 1")
        if self.interval_chunk_log2 < 6:
            raise ValueError("interval_chunk_log2 must be >= 6 (a chunk holds whole words)")
        if self.interval_part_rows < self.interval_row_group:
            raise ValueError("interval_part_rows must be >= interval_row_group")
