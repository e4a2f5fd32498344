"""``bench/genome_synth.py`` at small T: chromosomes, bases, binding-site track and site cells
are consistent, generation is chunk-size independent where it must be, and matching one
binding site's cells finds other sites of the same label."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from hiddenscope_core.match import match
from hiddenscope_core.models import MatchQuery, SelectQuery
from hiddenscope_core.reader import open_dataset
from hiddenscope_core.select import select_cells

from bench.genome_synth import SITE_LABELS, GenomeGenerator, GenomeSpec, write_genome


def test_chromosomes_partition_the_steps() -> None:
    starts, names = GenomeSpec(n_steps=1_000_003).chromosomes()
    assert starts[0] == 0
    assert np.all(np.diff(starts) > 0)
    assert starts[-1] < 1_000_003
    assert names[0] == "chr1"
    assert names[-1] == "chrX"
    assert len(names) == 23


def test_chunks_are_bounded_and_aligned() -> None:
    spec = GenomeSpec(n_steps=50_000, n_cells=12, chunk_steps=4096)
    total = 0
    for chunk in GenomeGenerator(spec).chunks():
        n = chunk.tokens.size
        assert n <= 4096
        assert chunk.states.shape == (n, 12)
        assert chunk.labels.shape == (n,)
        assert chunk.states.dtype == np.float16
        total += n
    assert total == 50_000


def test_written_dataset_and_site_matching(tmp_path: Path) -> None:
    spec = GenomeSpec(n_steps=60_000, n_cells=16, chunk_steps=8192, site_every=500, seed=3)
    bed = io.StringIO()
    manifest = write_genome(spec, tmp_path, "g", bed)
    ds = open_dataset(tmp_path / "datasets" / manifest.id)
    assert ds.n_steps == 60_000
    assert manifest.n_sequences == 23
    assert ds.vocab() == ["A", "C", "G", "T", "N"]
    labels = ds.track("binding", 0, ds.n_steps)["label"]
    rows = [line.split("\t") for line in bed.getvalue().splitlines()]
    assert rows
    assert all(r[3] in SITE_LABELS for r in rows)
    # BED rows (chromosome offsets) and the track agree
    starts = dict(zip(ds.sequence_names(), ds.sequence_starts(), strict=True))
    covered = sum(int(e) - int(s) for _, s, e, _ in rows)
    assert covered == int(np.sum(labels >= 0))
    chrom, s, e, label = rows[len(rows) // 2]
    a, b = int(starts[chrom]) + int(s), int(starts[chrom]) + int(e)
    assert np.all(labels[a:b] == SITE_LABELS.index(label.strip()))
    tokens = ds.tokens(0, ds.n_steps)
    assert tokens[0] == 4  # chromosomes start with N
    # the site cells of that label are on over the site; matching them finds other sites
    sel = select_cells(ds, SelectQuery(layer="conv", start=a, end=b, threshold=0.3))
    assert set(sel.cells) & set(spec.site_cells)
    res = match(ds, MatchQuery(layer="conv", cells=sel.cells, threshold=0.3, top_k=20))
    on_site = [np.mean(labels[h.start : h.end] == labels[a]) for h in res.hits]
    assert np.mean([f >= 0.9 for f in on_site]) >= 0.8
