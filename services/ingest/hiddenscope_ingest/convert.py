"""Conversion: stream a checked :class:`~hiddenscope_ingest.plan.Plan` into the core's
``DatasetWriter`` chunk by chunk (memory bounded by ``chunk_bytes``, not by T) and publish it
atomically. On any error the writer's staging directory is removed; nothing is published.

Layers are written as a sharded build: every (layer, shard of ``shard_steps`` steps) is one
task of phase ``write`` (Parquet parts, ``values.bin``, statistics) and then of phase
``index`` (on-planes); ``run_shards`` decides who runs them - this process in turn (the
default) or, in the service, every worker that helps (:mod:`hiddenscope_ingest.shards`).
Tokens, tracks, the on-intervals and the publication stay with the job's own worker."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from hiddenscope_core.build import DatasetWriter, TrackWriter
from hiddenscope_core.models import DatasetManifest, TrackInfo

from hiddenscope_ingest.errors import InvalidData
from hiddenscope_ingest.loaders.base import ArraySource, iter_chunks, rows_per_chunk
from hiddenscope_ingest.loaders.text_files import Labels
from hiddenscope_ingest.plan import Plan, TrackPlan

Progress = Callable[[int, int], None]
"""``progress(done, total)`` in steps over all arrays; may raise to stop (e.g. cancellation)."""

LayerTask = tuple[str, int]
"""A unit of a sharded layer build: ``(layer name, shard index)``."""
Work = Callable[[str, LayerTask], int]
"""``work(phase, task)`` runs one task and returns the steps it covered."""
RunShards = Callable[[DatasetWriter, str, list[LayerTask], Work, Callable[[int], None]], None]
"""``run_shards(writer, phase, tasks, work, tick)`` runs every task of a phase (``write``,
then ``index``), calling ``tick(steps)`` as tasks finish; it returns when all are done."""
PHASES = ("write", "index")


def run_here(
    writer: DatasetWriter, phase: str, tasks: list[LayerTask], work: Work,
    tick: Callable[[int], None],
) -> None:  # fmt: skip
    """The default ``run_shards``: every task in this process, in turn."""
    for task in tasks:
        tick(work(phase, task))


def shard_work(
    plan: Plan, writer: DatasetWriter, phase: str, task: LayerTask, chunk_bytes: int
) -> int:
    """Run one task of a sharded layer build (in the job's worker or a helper); returns the
    number of steps it covered. Idempotent (the core's shard writes overwrite)."""
    name, shard = task
    a, b = writer.shard_ranges()[shard]
    if phase == "index":
        writer.index_layer_shard(name, shard)
        return b - a
    layer = next((lp for lp in plan.layers if lp.spec.name == name), None)
    if layer is None:
        raise InvalidData(f"layer {name!r} is not in the manifest")
    spec = layer.spec
    rows = rows_per_chunk(layer.source.shape, 8, chunk_bytes)

    def chunks() -> Iterator[npt.NDArray[Any]]:
        for start, chunk in iter_chunks(layer.source, rows, a, b):
            values = np.asarray(chunk).astype(spec.dtype, copy=False)
            if plan.manifest.nan_policy == "reject":
                _check_finite(values, f"layer {spec.name}", start)
            yield values

    writer.write_layer_shard(name, shard, chunks())
    return b - a


def total_units(plan: Plan) -> int:
    """Progress units: steps of the tokens and of every track, and twice every layer's (its
    shards are written, then indexed)."""
    n_arrays = 2 * len(plan.layers) + len(plan.tracks) + (1 if plan.tokens is not None else 0)
    return plan.n_steps * max(1, n_arrays)


def _check_ids(
    ids: npt.NDArray[Any], size: int, defined: npt.NDArray[np.bool_] | None, what: str, at: int
) -> None:
    bad = (ids < 0) | (ids >= size)
    if defined is not None and not bad.any():
        bad = ~defined[ids]
    if bad.any():
        pos = np.flatnonzero(bad.reshape(len(ids), -1).any(axis=1))[0]
        value = ids[pos]
        raise InvalidData(
            f"{what}: id {value.tolist()} at step {at + int(pos)} is not in the dictionary "
            f"({size} entries)"
        )


def _check_finite(chunk: npt.NDArray[Any], what: str, at: int) -> None:
    finite = np.isfinite(chunk)
    if not finite.all():
        row = int(np.flatnonzero(~finite.all(axis=tuple(range(1, chunk.ndim))))[0])
        raise InvalidData(
            f"{what}: non-finite value (NaN or inf) at step {at + row}; clean the data or send "
            "nan_policy: allow (NaN counts as off)"
        )


def _track_chunks(
    track: TrackPlan, source: ArraySource, rows: int, n_steps: int, tokens: ArraySource | None
) -> Iterator[tuple[int, npt.NDArray[Any]]]:
    """The track's rows in step order, with ``index_by_tokens`` resolved (value at step t is
    ``source[token_id[t]]``; the per-token table is read once, it is vocabulary-sized)."""
    if not track.index_by_tokens:
        yield from iter_chunks(source, rows)
        return
    assert tokens is not None
    table = np.asarray(source.read(0, source.shape[0]))
    for start in range(0, n_steps, rows):
        stop = min(n_steps, start + rows)
        tok = np.asarray(tokens.read(start, stop), dtype=np.int64)
        if tok.size and int(tok.max()) >= len(table):
            raise InvalidData(
                f"track {track.info.name}: the per-token table has {len(table)} rows, but token "
                f"id {int(tok.max())} occurs"
            )
        yield start, table[tok]


def convert(
    plan: Plan,
    data_root: Path,
    *,
    on_created: Callable[[DatasetWriter], None] | None = None,
    chunk_bytes: int = 64 * 2**20,
    progress: Progress | None = None,
    provenance: dict[str, Any] | None = None,
    shard_steps: int = 1 << 21,
    part_steps: int | None = None,
    run_shards: RunShards = run_here,
) -> DatasetManifest:
    """Write ``plan`` as a dataset under ``data_root`` and publish it; the layers in shards of
    ``shard_steps`` steps run by ``run_shards``.

    Raises the core's ``Conflict`` (409) when the name is taken at publication, 4xx errors for
    bad data, whatever ``progress`` raised (a cancellation); never leaves staging behind."""
    m = plan.manifest
    T = plan.n_steps
    total = total_units(plan)
    done = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(done, total)

    writer = DatasetWriter.create(
        data_root,
        m.name,
        n_steps=T,
        description=m.description,
        provenance={**m.provenance, **(provenance or {})},
        part_steps=part_steps,
    )
    try:
        if on_created is not None:
            on_created(writer)
        if plan.sequence_starts is not None:
            writer.set_sequences(plan.sequence_starts, names=plan.sequence_names)
        elif plan.sequence_names is not None:
            writer.set_sequences(np.zeros(1, dtype=np.int64), names=plan.sequence_names)
        if plan.vocab is not None:
            writer.set_vocab(plan.vocab.texts)
        if plan.tokens is not None:
            assert plan.vocab is not None
            rows = rows_per_chunk(plan.tokens.shape, 8, chunk_bytes)
            for start, chunk in iter_chunks(plan.tokens, rows):
                ids = np.asarray(chunk, dtype=np.int64)
                _check_ids(ids, len(plan.vocab.texts), plan.vocab.defined, "tokens", start)
                writer.write_tokens(ids.astype(np.int32))
                tick(len(ids))
        for layer in plan.layers:
            spec = layer.spec
            writer.declare_layer(
                spec.name,
                n_cells=layer.n_cells,
                dtype=spec.dtype,
                transform=spec.transform,
                thresholds=spec.thresholds,
                kind=spec.kind,
            )
        if plan.layers:
            ranges = writer.save_build(shard_steps)
            tasks = [(lp.spec.name, i) for lp in plan.layers for i in range(len(ranges))]
            for phase in PHASES:
                run_shards(
                    writer, phase, tasks,
                    lambda ph, task: shard_work(plan, writer, ph, task, chunk_bytes), tick,
                )  # fmt: skip
        for track in plan.tracks:
            write_track(
                writer.add_track, track, n_steps=T, tokens=plan.tokens, vocab=plan.vocab,
                nan_policy=m.nan_policy, chunk_bytes=chunk_bytes, tick=tick,
            )  # fmt: skip
        if progress is not None:
            progress(done, total)
        return writer.publish()
    except BaseException:
        writer.abort()
        raise


def write_track(
    add_track: Callable[[TrackInfo], TrackWriter],
    track: TrackPlan,
    *,
    n_steps: int,
    tokens: ArraySource | None,
    vocab: Labels | None,
    nan_policy: str,
    chunk_bytes: int,
    tick: Callable[[int], None],
) -> None:
    """Check and stream one planned track into the ``TrackWriter`` that ``add_track(info)``
    returns (at ingest, or into a new version of a published dataset): label and top-K ids
    within their dictionaries, finite scores (and values under ``nan_policy: reject``), a label
    list made of the numbers when none was given."""
    info = track.info
    what = f"track {info.name}"
    rows = rows_per_chunk(track.source.shape, 8, chunk_bytes)

    def chunks(source: ArraySource) -> Iterator[tuple[int, npt.NDArray[Any]]]:
        return _track_chunks(track, source, rows, n_steps, tokens)

    if info.kind == "discrete" and not info.labels:
        # no label dictionary: the labels are the numbers themselves ("0", "1", ...)
        top = -1
        for _start, chunk in chunks(track.source):
            if chunk.size:
                if int(chunk.min()) < 0:
                    raise InvalidData(f"{what}: label ids must be >= 0 without a label list")
                top = max(top, int(chunk.max()))
        if top >= 1_000_000:
            raise InvalidData(f"{what}: label ids up to {top}; give a label list (labels)")
        info = info.model_copy(update={"labels": [str(i) for i in range(top + 1)]})
    tw = add_track(info)
    if info.kind == "topk":
        assert track.scores is not None
        for (start, ids), (_s, scores) in zip(
            chunks(track.source), chunks(track.scores), strict=True
        ):
            if vocab is not None:
                _check_ids(ids, len(vocab.texts), None, f"{what} predictions", start)
            _check_finite(np.asarray(scores, dtype=np.float64), f"{what} scores", start)
            tw.write(ids=ids.astype(np.int64), scores=scores.astype(np.float32))
            tick(len(ids))
        return
    for start, chunk in chunks(track.source):
        if info.kind == "discrete":
            assert info.labels is not None
            _check_ids(chunk, len(info.labels), track.label_defined, what, start)
            tw.write(chunk.astype(np.int64))
        else:
            values = np.asarray(chunk, dtype=np.float32)
            if nan_policy == "reject":
                _check_finite(values, what, start)
            tw.write(values)
        tick(len(chunk))
