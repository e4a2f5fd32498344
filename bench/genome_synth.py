"""A synthetic genome-scale dataset, streamed straight into the core ``DatasetWriter``.

The shape of the paper's genomics case (2.3 × 10⁹ base pairs) without the data:

* **tokens** are bases ``A C G T N`` (GC content ~41 %; every chromosome starts and ends with a
  run of ``N``, like telomere gaps);
* **sequences** are chromosomes ``chr1 .. chrK`` with lengths falling like the human ones
  (``chr1`` about 3.6 × the last), summing to ``n_steps``;
* **binding sites** are BED-like intervals ``[start, end) label`` (labels ``CTCF``, ``TF_A``,
  ``TF_B``; 8-30 bp; one every ~2 kb on average, inside a chromosome), yielded as rows and
  converted to the discrete track ``binding`` (label per step, ``-1`` = none);
* **cells** (``n_cells``, default 32): a quarter follow long on/off domains (mean runs of
  10³-10⁵ steps), half short runs (5-50 steps, :class:`hiddenscope_core.synth.LstmLikeStates`),
  and the rest are *site cells* — on over every binding site of one label and off elsewhere, with
  noise — so that selecting one site and matching finds the other sites of its label.

Everything is generated chunk by chunk (``chunk_steps``, default 2²⁰) with bounded memory,
whatever ``n_steps`` is (1e9 is fine; the disk needs ~``n_steps × n_cells × 2`` bytes for float16
states plus the index). The same seed and chunk size give the same dataset.

``python -m bench.genome_synth --steps 1000000000 --root /big/disk`` writes and publishes it
and prints the throughput; ``--bed sites.bed`` also writes the intervals as a BED file.
"""

from __future__ import annotations

import argparse
import resource
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np
import numpy.typing as npt
from hiddenscope_core.build import DatasetWriter
from hiddenscope_core.models import DatasetManifest, TrackInfo
from hiddenscope_core.synth import LstmLikeStates

BASES = ["A", "C", "G", "T", "N"]
N_ID = 4
SITE_LABELS = ["CTCF", "TF_A", "TF_B"]
# relative lengths of human chr1..chr22, X (GRCh38, Mb): only the shape matters
HUMAN_MB = [248, 242, 198, 190, 181, 171, 159, 145, 138, 134, 135, 133, 114, 107, 102, 90, 83,
            80, 59, 64, 47, 51, 156]  # fmt: skip
TELOMERE = 100  # N steps at each chromosome end (fewer for tiny chromosomes)


@dataclass(frozen=True)
class GenomeSpec:
    n_steps: int
    n_cells: int = 32
    n_chromosomes: int = 23
    seed: int = 0
    chunk_steps: int = 1 << 20
    site_every: float = 2000.0  # mean steps between binding sites
    dtype: str = "float16"

    def chromosomes(self) -> tuple[npt.NDArray[np.int64], list[str]]:
        """Start steps (first 0) and names of the chromosomes, lengths summing to ``n_steps``."""
        k = max(1, min(self.n_chromosomes, self.n_steps // 64))
        weights = np.array([HUMAN_MB[i % len(HUMAN_MB)] for i in range(k)], dtype=np.float64)
        lengths = np.maximum(1, np.floor(weights / weights.sum() * self.n_steps)).astype(np.int64)
        lengths[0] += self.n_steps - int(lengths.sum())
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        names = [f"chr{i + 1}" if i < 22 else ("chrX" if i == 22 else f"chrU{i}") for i in range(k)]
        return starts, names

    @property
    def site_cells(self) -> list[int]:
        """Cells on over binding sites: the last ``n_cells - n_long - n_short`` ones."""
        return list(range(self._n_long + self._n_short, self.n_cells))

    @property
    def _n_long(self) -> int:
        return self.n_cells // 4

    @property
    def _n_short(self) -> int:
        return max(1, self.n_cells // 2) if self.n_cells > 2 else 0


@dataclass
class Chunk:
    """Steps ``[start, start + n)`` of the genome."""

    start: int
    tokens: npt.NDArray[np.int8]
    states: npt.NDArray[np.floating]
    labels: npt.NDArray[np.int8]  # binding-site label per step, -1 = none
    sites: list[tuple[str, int, int, str]]  # BED rows (chrom, start, end, label), chrom offsets


class GenomeGenerator:
    """Yields :class:`Chunk` s of a :class:`GenomeSpec` in step order, in bounded memory."""

    def __init__(self, spec: GenomeSpec) -> None:
        self.spec = spec
        self.starts, self.names = spec.chromosomes()
        self.ends = np.append(self.starts[1:], spec.n_steps)
        self._rng = np.random.default_rng(spec.seed)
        n_long, n_short = spec._n_long, spec._n_short
        self._long = (
            LstmLikeStates(n_long, seed=spec.seed + 1, mean_run=(1e3, 1e5)) if n_long else None
        )
        self._short = (
            LstmLikeStates(n_short, seed=spec.seed + 2, mean_run=(5.0, 50.0)) if n_short else None
        )
        self._site_label_of_cell = np.arange(len(spec.site_cells)) % len(SITE_LABELS)
        self._next_site = int(self._rng.geometric(1.0 / spec.site_every))
        self._carry_label = -1  # a site running over the chunk boundary
        self._carry_left = 0

    def _tokens(self, t0: int, n: int) -> npt.NDArray[np.int8]:
        # GC 41 %: A .295 C .205 G .205 T .295
        u = self._rng.random(n)
        tokens = np.searchsorted(np.array([0.295, 0.5, 0.705]), u).astype(np.int8)
        # N runs at both ends of every chromosome overlapping the chunk
        lo = np.searchsorted(self.ends, t0, side="right")
        hi = np.searchsorted(self.starts, t0 + n, side="left")
        for c in range(lo, hi):
            s, e = int(self.starts[c]), int(self.ends[c])
            tel = min(TELOMERE, (e - s) // 8)
            for a, b in ((s, s + tel), (e - tel, e)):
                a, b = max(a, t0), min(b, t0 + n)
                if a < b:
                    tokens[a - t0 : b - t0] = N_ID
        return tokens

    def _sites(
        self, t0: int, n: int
    ) -> tuple[npt.NDArray[np.int8], list[tuple[str, int, int, str]]]:
        labels = np.full(n, -1, np.int8)
        rows: list[tuple[str, int, int, str]] = []
        if self._carry_left:
            k = min(self._carry_left, n)
            labels[:k] = self._carry_label
            self._carry_left -= k
        end = t0 + n
        while self._next_site < end:
            s = self._next_site
            length = int(self._rng.integers(8, 31))
            label = int(self._rng.integers(0, len(SITE_LABELS)))
            c = int(np.searchsorted(self.starts, s, side="right")) - 1
            cs, ce = int(self.starts[c]), int(self.ends[c])
            tel = min(TELOMERE, (ce - cs) // 8)
            e = s + length
            if s >= cs + tel and e <= ce - tel:  # inside the chromosome, off its N runs
                rows.append((self.names[c], s - cs, e - cs, SITE_LABELS[label]))
                labels[s - t0 : min(e, end) - t0] = label
                if e > end:
                    self._carry_label, self._carry_left = label, e - end
            self._next_site = e + 1 + int(self._rng.geometric(1.0 / self.spec.site_every))
        return labels, rows

    def _states(self, n: int, labels: npt.NDArray[np.int8]) -> npt.NDArray[np.floating]:
        spec = self.spec
        out = np.empty((n, spec.n_cells), np.float32)
        col = 0
        for gen in (self._long, self._short):
            if gen is not None:
                out[:, col : col + gen.n_cells] = gen.take(n)
                col += gen.n_cells
        for j, cell in enumerate(spec.site_cells):
            on = labels == self._site_label_of_cell[j]
            noise = self._rng.normal(0.0, 0.08, n)
            out[:, cell] = np.clip(np.where(on, 0.8, -0.6) + noise, -1.0, 1.0)
        return out.astype(spec.dtype) if spec.dtype != "float32" else out

    def chunks(self) -> Iterator[Chunk]:
        spec = self.spec
        for t0 in range(0, spec.n_steps, spec.chunk_steps):
            n = min(spec.chunk_steps, spec.n_steps - t0)
            tokens = self._tokens(t0, n)
            labels, rows = self._sites(t0, n)
            yield Chunk(t0, tokens, self._states(n, labels), labels, rows)


def write_genome(
    spec: GenomeSpec,
    root: Path,
    name: str = "genome-synth",
    bed: TextIO | None = None,
) -> DatasetManifest:
    """Generate the genome of ``spec`` into a published dataset under ``root``; optionally
    write the binding sites as BED rows to ``bed``. Memory is bounded by ``chunk_steps``."""
    gen = GenomeGenerator(spec)
    with DatasetWriter.create(
        root,
        name,
        n_steps=spec.n_steps,
        description=f"synthetic genome: {len(gen.names)} chromosomes, {spec.n_cells} cells",
        provenance={"generator": "bench.genome_synth", "seed": spec.seed},
    ) as w:
        w.set_sequences(gen.starts, gen.names)
        w.set_vocab(BASES)
        layer = w.add_layer("conv", n_cells=spec.n_cells, dtype=spec.dtype, kind="activation")  # type: ignore[arg-type]
        track = w.add_track(
            TrackInfo(
                name="binding",
                kind="discrete",
                labels=SITE_LABELS,
                description="binding sites (BED-like intervals); -1 = none",
            )
        )
        for chunk in gen.chunks():
            w.write_tokens(chunk.tokens)
            layer.write(chunk.states)
            track.write(chunk.labels)
            if bed is not None:
                bed.writelines(f"{c}\t{s}\t{e}\t{label}\n" for c, s, e, label in chunk.sites)
        return w.publish()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=float, default=1e7, help="base pairs (e.g. 1e9)")
    p.add_argument("--cells", type=int, default=32)
    p.add_argument("--chunk-steps", type=int, default=1 << 20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--root", type=Path, default=None, help="data root to publish into")
    p.add_argument("--generate-only", action="store_true",
                   help="generate every chunk but write nothing (the generator's own speed and "
                   "memory, at sizes whose dataset would not fit the disk)")  # fmt: skip
    p.add_argument("--name", default="genome-synth")
    p.add_argument("--bed", type=Path, default=None, help="also write the sites as BED")
    args = p.parse_args()
    spec = GenomeSpec(
        n_steps=int(args.steps), n_cells=args.cells, seed=args.seed, chunk_steps=args.chunk_steps
    )
    t0 = time.perf_counter()
    if args.generate_only:
        n = n_sites = on = 0
        for chunk in GenomeGenerator(spec).chunks():
            n += len(chunk.tokens)
            n_sites += len(chunk.sites)
            on += int((chunk.labels >= 0).sum())
        dt = time.perf_counter() - t0
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"generated {n:,} steps x {spec.n_cells} cells, {n_sites:,} sites ({on / n:.2%} of "
            f"steps in a site) in {dt:.1f} s ({n / dt / 1e6:.2f} M steps/s), peak RSS {rss:.0f} MB"
        )
        return
    if args.root is None:
        p.error("--root is required unless --generate-only")
    if args.bed is not None:
        with open(args.bed, "w") as bed:
            manifest = write_genome(spec, args.root, args.name, bed)
    else:
        manifest = write_genome(spec, args.root, args.name)
    dt = time.perf_counter() - t0
    print(
        f"published {manifest.name} ({manifest.id}): {manifest.n_steps:,} steps, "
        f"{manifest.n_sequences} chromosomes, {spec.n_cells} cells in {dt:.1f} s "
        f"({manifest.n_steps / dt / 1e6:.2f} M steps/s)"
    )


if __name__ == "__main__":
    main()
