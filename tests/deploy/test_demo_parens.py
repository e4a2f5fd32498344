"""The demo dataset reproduces the LSTMVis paper's §6.1 finding (core only, no services).

Selecting a ``(4`` range — the step where the nesting level rises to 4 and the digit after it —
at threshold 0.3 (off one step before, the defaults) on the second layer's cell states
(``cell_l2``, transform tanh, as in the paper's Fig. 7) and matching finds, in the top 50, ranges
that lie (almost) entirely at nesting level 4, far above the base rate of level 4 in the stream.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from hiddenscope_core.build import DatasetWriter
from hiddenscope_core.match import match
from hiddenscope_core.models import MatchQuery, SelectQuery, TrackInfo
from hiddenscope_core.reader import Dataset, open_dataset
from hiddenscope_core.select import select_cells

DEMO = Path(__file__).resolve().parents[2] / "deploy" / "demo" / "data"
LAYERS = ["cell_l1", "hidden_l1", "cell_l2", "hidden_l2"]
OPEN, FOUR = 0, 6  # token ids of "(" and "4" (vocab.txt)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    """The shipped files written with the core's DatasetWriter, as the ingest service would."""
    manifest = yaml.safe_load((DEMO / "manifest.yml").read_text())
    tokens = np.load(DEMO / "tokens.npy")
    root = tmp_path_factory.mktemp("demo")
    with DatasetWriter.create(root, manifest["name"], n_steps=int(tokens.size)) as w:
        w.set_vocab((DEMO / "vocab.txt").read_text().splitlines())
        w.write_tokens(tokens)
        for spec in manifest["layers"]:
            values = np.load(DEMO / spec["source"]["file"])
            w.add_layer(
                spec["name"],
                n_cells=values.shape[1],
                dtype=spec["dtype"],
                transform=spec["transform"],
                kind=spec["kind"],
            ).write(values)
        (track,) = manifest["tracks"]
        w.add_track(
            TrackInfo(name=track["name"], kind="discrete", labels=track["labels"]),
            np.load(DEMO / track["source"]["file"]),
        )
        published = w.publish()
    return open_dataset(root / "datasets" / published.id)


def test_shipped_files_are_small_and_consistent() -> None:
    total = sum(p.stat().st_size for p in DEMO.iterdir())
    assert total < 10 * 2**20, f"demo data is {total} bytes; keep it under 10 MB"
    tokens, levels = np.load(DEMO / "tokens.npy"), np.load(DEMO / "nesting.npy")
    assert tokens.shape == levels.shape == (20_000,)
    for name in LAYERS:
        states = np.load(DEMO / f"{name}.npy")
        assert states.dtype == np.float16
        assert states.shape[0] == tokens.size
    # the language: digits equal the level, parentheses balanced within depth 0..4
    digits = tokens >= 2
    assert np.array_equal(tokens[digits] - 2, levels[digits])
    assert levels.min() == 0
    assert levels.max() == 4


def test_selecting_open_four_matches_level_four(demo: Dataset) -> None:
    tokens = demo.tokens(0, demo.n_steps)
    levels = demo.track("nesting", 0, demo.n_steps)["label"]
    base_rate = float(np.mean(levels == 4))
    # the first "( 4" where "(" enters level 4
    a = next(
        t
        for t in range(1, demo.n_steps - 1)
        if tokens[t] == OPEN and tokens[t + 1] == FOUR and levels[t] == 4
    )
    sel = select_cells(demo, SelectQuery(layer="cell_l2", start=a, end=a + 2, threshold=0.3))
    assert sel.cells, "no cell of cell_l2 is on over '( 4' and off before it"
    res = match(demo, MatchQuery(layer="cell_l2", cells=sel.cells, threshold=0.3, top_k=50))
    assert len(res.hits) == 50
    at_four = [float(np.mean(levels[h.start : h.end] == 4)) for h in res.hits]
    fraction = float(np.mean([f >= 0.9 for f in at_four]))
    print(
        f"\nselect '( 4' at [{a}, {a + 2}) on cell_l2 -> S1 = {sel.cells}; top 50 matches: "
        f"{fraction:.0%} lie (>= 90 % of their steps) at nesting level 4; "
        f"base rate of level 4: {base_rate:.1%}"
    )
    assert base_rate < 0.2
    assert fraction >= 0.8
    assert fraction >= 4 * base_rate
