"""Load the compiled kernels before the first real query.

The numba kernels are compiled once and cached on disk (``cache=True``), but every new process
still loads each of them on its first call: about two seconds for the match path. A worker
calls :func:`warm_up` at start (before its pool forks, so the children inherit the loaded
kernels) and its first query is then as fast as any other (apart from the page cache).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from hiddenscope_core.build import DatasetWriter
from hiddenscope_core.layout import Layout
from hiddenscope_core.match import match
from hiddenscope_core.models import MatchQuery, SelectQuery
from hiddenscope_core.reader import open_dataset
from hiddenscope_core.select import select_cells

_T, _D = 4096, 8


def warm_up() -> float:
    """Build a tiny dataset (float32 and float16 layers) in a temporary directory and run a
    window, a select and matches on and off the grid over it, with one and two threads.
    Returns the seconds it took."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    x = np.clip(np.cumsum(rng.normal(0, 0.2, (_T, _D)), axis=0) / 8, -1, 1).astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="hiddenscope-warmup-") as tmp:
        w = DatasetWriter.create(tmp, "warmup", n_steps=_T)
        w.set_sequences([0, _T // 2])
        for dtype in ("float32", "float16"):
            lw = w.add_layer(f"l{dtype}", n_cells=_D, dtype=dtype, thresholds=[0.0, 0.3])
            lw.write(x)
        ds = open_dataset(Layout(Path(tmp)).dataset(w.publish().id))
        for dtype in ("float32", "float16"):
            layer = f"l{dtype}"
            ds.window(layer, 10, 50)
            select_cells(ds, SelectQuery(layer=layer, start=100, end=104, threshold=0.3))
            for theta in (0.3, 0.2):  # on and off the grid
                q = MatchQuery(layer=layer, cells=[0, 1, 2], threshold=theta, top_k=5)
                for workers in (1, 2):
                    match(ds, q, workers=workers)
                match(ds, q.model_copy(update={"stats": True}), workers=1)
    return time.perf_counter() - t0
