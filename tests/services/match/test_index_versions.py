"""A new version of a dataset (tracks added: the same tokens, hard-linked) reuses its parent's
phrase index by hard links instead of building it again, and finds the same positions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from hiddenscope_core.models import TrackInfo
from hiddenscope_core.reader import Catalog
from hiddenscope_core.versions import add_tracks
from hiddenscope_core.writer import DatasetWriter
from hiddenscope_match.search_index import INDEX_DIR, build_index, open_index, phrase_ids


def test_a_new_version_links_its_parents_index(tmp_path: Path) -> None:
    root, cache = tmp_path / "data", tmp_path / "cache"
    T = 400
    tokens = np.random.default_rng(1).integers(0, 5, T)
    w = DatasetWriter.create(root, "v", n_steps=T)
    w.set_vocab(["a", "b", "c", "d", "e"])
    w.write_tokens(tokens)
    w.add_layer("l", n_cells=2).write(np.zeros((T, 2), np.float32))
    w.publish()
    v1 = Catalog(root).get("v")
    assert build_index(v1, cache)
    v2m = add_tracks(root, "v", [(TrackInfo(name="s", kind="scalar"), {"values": np.ones(T)})])
    v2 = Catalog(root).get("v")
    assert v2.id == v2m.id
    assert build_index(v2, cache)
    for name in ("tokens.npy", "order.npy", "second.npy", "offsets.npy"):
        a = (cache / v1.id / INDEX_DIR / name).stat()
        b = (cache / v2.id / INDEX_DIR / name).stat()
        assert a.st_ino == b.st_ino, name
    i1, i2 = open_index(v1, cache), open_index(v2, cache)
    assert i1 is not None
    assert i2 is not None
    phrase = phrase_ids(v2, ["a", "b"])
    want = np.flatnonzero((tokens[:-1] == 0) & (tokens[1:] == 1))
    np.testing.assert_array_equal(i2.find(phrase), want)
    np.testing.assert_array_equal(i1.find(phrase), want)
