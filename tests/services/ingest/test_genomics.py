"""FASTA genomes (tokens = bases, one sequence per record) and BED interval tracks: round trips
over HTTP and the worker, the overlap rule, coordinate errors, and bounded memory."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import httpx
import numpy as np
import pytest
from hiddenscope_ingest.errors import InvalidData
from hiddenscope_ingest.loaders.base import Limits
from hiddenscope_ingest.loaders.genomics import read_bed, read_fasta

from tests.services.ingest.helpers import (
    IngestStack,
    assert_layer,
    ingest_fails,
    ingest_ok,
    npy_bytes,
    open_published,
    states,
)

FASTA = (
    ">chr1 the first one\nACGTN\nacgtr\n"  # soft-masked bases fold to upper case; R is IUPAC
    ";a comment line\n"
    ">chr2\nGGGCCC\n\n"
    ">chrM\r\nTTA\r\n"
)
BASES = "ACGTNACGTRGGGCCCTTA"


def test_fasta_and_bed_round_trip(client: httpx.Client, ingest_stack: IngestStack) -> None:
    T = len(BASES)
    x = states(T, 6, seed=40)
    bed = (
        "track name=genes\n"
        "# comment\n"
        "chr1\t0\t4\tgeneA\t0\t+\n"
        "chr1\t2\t7\tgeneB\n"  # overlaps geneA: the later line wins on steps 2, 3
        "chr2\t1\t3\n"  # no name column: the track's name
        "chrM\t0\t3\t.\n"  # '.' = no name
        "chr2\t5\t6\tgeneA\n"
    )
    manifest = {
        "name": "rt-genome",
        "layers": [{"name": "cell_l1", "source": {"file": "x.npy"}}],
        "fasta": {"file": "genome.fa"},
        "bed": [{"name": "genes", "file": "genes.bed", "background": "none"}],
    }
    files = {"x.npy": npy_bytes(x), "genome.fa": FASTA.encode(), "genes.bed": bed.encode()}
    ingest_ok(client, manifest, files)
    ds = open_published(ingest_stack.data_root, "rt-genome")
    assert ds.n_steps == T
    assert_layer(ds, "cell_l1", x)
    vocab = ds.vocab()
    assert vocab[:5] == ["A", "C", "G", "T", "N"]
    assert "".join(vocab[i] for i in ds.tokens(0, T)) == BASES
    assert list(ds.sequence_names()) == ["chr1", "chr2", "chrM"]
    assert list(ds.sequence_starts()) == [0, 10, 16]
    info = next(t for t in ds.manifest.tracks if t.name == "genes")
    assert info.labels is not None
    got = [info.labels[i] for i in ds.track("genes", 0, T)["label"]]
    want = [
        *["geneA", "geneA", "geneB", "geneB", "geneB", "geneB", "geneB", "none", "none", "none"],
        *["none", "genes", "genes", "none", "none", "geneA"],
        *["genes", "genes", "genes"],
    ]
    assert got == want


def test_bed_with_named_sequences_and_errors(
    client: httpx.Client, ingest_stack: IngestStack
) -> None:
    T = 12
    x = {"x.npy": npy_bytes(states(T, 3, seed=41))}
    base = {
        "layers": [{"name": "l", "source": {"file": "x.npy"}}],
        "sequences": {"starts": [0, 5], "names": ["s1", "s2"]},
    }
    bed = "s2\t0\t2\tp\nunknown\t0\t1\tq\ns1\t4\t5\tp\n"
    problem = ingest_fails(
        client,
        {**base, "name": "bed-unknown", "bed": [{"name": "peaks", "file": "p.bed"}]},
        {**x, "p.bed": bed.encode()},
    )
    assert problem["status"] == 422
    assert "unknown" in problem["detail"]
    assert "line 2" in problem["detail"]
    ingest_ok(
        client,
        {**base, "name": "bed-skip", "bed": [{"name": "peaks", "file": "p.bed",
                                             "skip_unknown": True}]},
        {**x, "p.bed": bed.encode()},
    )  # fmt: skip
    ds = open_published(ingest_stack.data_root, "bed-skip")
    labels = ds.track("peaks", 0, T)["label"].tolist()
    assert labels == [0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0]
    for bad, words in (
        ("s1\t3\t6\n", "past"),
        ("s1\t-1\t2\n", "start <= end"),
        ("s1\t3\t2\n", "start <= end"),
        ("s1\tx\t2\n", "integers"),
        ("s1 1\n", "chrom start end"),
    ):
        problem = ingest_fails(
            client,
            {**base, "name": "bed-bad", "bed": [{"name": "peaks", "file": "p.bed"}]},
            {**x, "p.bed": bad.encode()},
        )
        assert problem["status"] == 422, problem
        assert words in problem["detail"], problem


def test_fasta_errors(client: httpx.Client) -> None:
    x = {"x.npy": npy_bytes(states(4, 2, seed=42))}
    layer = {"layers": [{"name": "l", "source": {"file": "x.npy"}}]}
    for fasta, words in (
        ("ACGT\n", "before the first"),
        (">a\n>b\nACGT\n", "empty"),
        (">a\nAC\n>a\nGT\n", "twice"),
        (">a\nAC1T\n", "'1'"),
        (">a\nACGTA\n", "5 bases"),
    ):
        problem = ingest_fails(
            client, {**layer, "name": "fa-bad", "fasta": {"file": "g.fa"}},
            {**x, "g.fa": fasta.encode()},
        )  # fmt: skip
        assert problem["status"] == 422, problem
        assert words in problem["detail"], problem
    problem = ingest_fails(
        client,
        {**layer, "name": "fa-bad", "fasta": {"file": "g.fa"}, "vocab": {"texts": ["A"]}},
        {**x, "g.fa": b">a\nACGT\n"},
    )
    assert problem["status"] == 422
    assert "fasta" in problem["detail"].lower()


def test_fasta_is_streamed_in_bounded_memory(tmp_path: Path) -> None:
    n_lines, width = 40_000, 60  # 2.4 Mbases in one record
    rng = np.random.default_rng(0)
    line = "".join(rng.choice(list("ACGT"), size=width))
    path = tmp_path / "big.fa"
    path.write_text(">chrBig\n" + (line + "\n") * n_lines + ">chrSmall\nNNNN\n")
    tracemalloc.start()
    try:
        fa = read_fasta(path, "big", tmp_path, Limits())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    n = n_lines * width
    assert fa.ids.shape == (n + 4,)
    assert fa.sequence_starts == [0, n]
    assert fa.sequence_names == ["chrBig", "chrSmall"]
    assert peak < 1 << 20, peak  # one line at a time, not the 2.4 Mbase chromosome (9.6 MB ids)
    assert "".join(fa.vocab[i] for i in fa.ids.read(0, width)) == line


def test_bed_overlaps_last_line_wins(tmp_path: Path) -> None:
    path = tmp_path / "a.bed"
    path.write_text("c\t0\t10\tx\nc\t3\t5\ty\nc\t4\t8\tx\nd\t0\t0\tz\n")
    got = read_bed(
        path, "a", "t", np.array([0, 10]), ["c", "d"], 12, tmp_path, Limits(), background="-"
    )
    assert got.texts == ["-", "x", "y", "z"]
    assert got.n_intervals == 4
    assert got.labels.read(0, 12).tolist() == [1, 1, 1, 2, 1, 1, 1, 1, 1, 1, 0, 0]
    with pytest.raises(InvalidData, match="past"):
        read_bed(path, "a", "t", np.array([0, 9]), ["c", "d"], 12, tmp_path, Limits())


def test_text_and_archive_errors_are_immediate(client: httpx.Client) -> None:
    """Small text files and archives are checked before the 202 (in the sandboxed check)."""
    from tests.services.ingest.helpers import post_upload, tar_gz_bytes

    x = {"x.npy": npy_bytes(states(4, 2, seed=43))}
    layer = {"layers": [{"name": "l", "source": {"file": "x.npy"}}]}
    r = post_upload(
        client, {**layer, "name": "fa-now", "fasta": {"file": "g.fa"}}, {**x, "g.fa": b">a\nAC1T\n"}
    )
    assert r.status_code == 422, r.text
    assert "'1'" in r.json()["detail"]
    archive = tar_gz_bytes({"x.npy": x["x.npy"], "tok.txt": b"a\nb\n"})  # 2 tokens, T=4
    tokens = {"source": {"file": "tok.txt"}}
    manifest = {**layer, "name": "tar-now", "archive": "p.tar.gz", "tokens": tokens}
    r = post_upload(client, manifest, {"p.tar.gz": archive})
    assert r.status_code == 422, r.text
    assert "2 tokens" in r.json()["detail"]
