"""End-to-end run of the core on a generated dataset: ingest, select, match, print a table.

``python -m hiddenscope_core.demo [--steps N] [--root DIR]``. A phrase ``( a b )`` is planted
every few hundred steps of LSTM-like noise; three cells are on over ``( a b`` and off one step
before. Selecting one planted occurrence and matching must find the others.
"""

from __future__ import annotations

import argparse
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
from hiddenscope_core.synth import LstmLikeStates, plant_phrase

VOCAB = ["<unk>", "(", "a", "b", ")", *[f"w{i}" for i in range(96)]]
PHRASE = [1, 2, 3, 4]  # ( a b )


def build_demo(root: Path, steps: int, cells: int = 32, every: int = 500) -> tuple[Path, int]:
    """Write the demo dataset under ``root``; returns its path and the first planted start."""
    rng = np.random.default_rng(7)
    values = LstmLikeStates(cells, seed=7).take(steps)
    tokens = rng.integers(5, len(VOCAB), steps).astype(np.int32)
    planted_cells = [3, 7, 11]
    starts = plant_phrase(values, planted_cells, every, length=3)
    for s in starts:
        tokens[s : s + 4] = PHRASE
    n_seq = max(1, steps // 5000)
    with DatasetWriter.create(root, "demo", n_steps=steps, description="planted ( a b )") as w:
        w.set_sequences([i * (steps // n_seq) for i in range(n_seq)])
        w.set_vocab(VOCAB)
        w.write_tokens(tokens)
        w.add_layer("cell", n_cells=cells, transform="none").write(values)
        manifest = w.publish()
    return Layout(root).dataset(manifest.id), starts[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=20_000)
    p.add_argument("--root", type=Path, default=None)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or Path(tmp)
        t0 = time.perf_counter()
        path, first = build_demo(root, args.steps)
        print(f"ingested {args.steps} steps into {path} in {time.perf_counter() - t0:.2f} s")
        ds = open_dataset(path)
        sel = select_cells(ds, SelectQuery(layer="cell", start=first, end=first + 3, threshold=0.3))
        print(f"select [{first}, {first + 3}) at threshold 0.3 -> S1 = {sel.cells}")
        t0 = time.perf_counter()
        res = match(ds, MatchQuery(layer="cell", cells=sel.cells, threshold=0.3, top_k=10))
        ms = (time.perf_counter() - t0) * 1e3
        vocab = ds.vocab()
        print(f"match: top {len(res.hits)} of the whole stream in {ms:.1f} ms")
        print(
            f"{'start':>7} {'end':>7} {'len':>4} {'seq':>4} {'I':>3} {'U':>3} {'jacc':>5}  tokens"
        )
        for h in res.hits:
            words = " ".join(vocab[i] for i in ds.tokens(max(h.start - 1, 0), h.end + 1))
            print(
                f"{h.start:7d} {h.end:7d} {h.length:4d} {h.sequence:4d} {h.intersection:3d} "
                f"{h.union:3d} {h.jaccard:5.2f}  {words}"
            )


if __name__ == "__main__":
    main()
