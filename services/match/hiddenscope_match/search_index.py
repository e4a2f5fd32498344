"""Phrase search over a dataset's tokens: start steps of a token sequence, in step order.

The index is built by a Celery task (``match.build_search_index``, queue ``match``) that the API
enqueues when a dataset's info is first read or a search first needs it (the API never builds:
it answers 503 + ``Retry-After`` while the build runs). It is cached on disk under
``<cache_dir>/<dataset_id>/search-v1/`` (outside the immutable dataset directory; the id changes
if a dataset of the same name is published again); :func:`clean_caches` removes the caches of
datasets that no longer exist. It is a bigram-sorted position list:

* ``tokens.npy``  int32 ``(T,)``: the token ids (a flat copy of ``tokens.parquet``)
* ``order.npy``   uint32/int64 ``(T,)``: positions sorted stably by ``(token[t], token[t+1])``
  (``token[T]`` = -1), so equal bigrams keep step order
* ``second.npy``  int32 ``(T,)``: ``token[order + 1]``, ascending inside each first-token bucket
* ``offsets.npy`` int64 ``(V + 1,)``: where each first token's bucket starts in ``order``

A phrase ``q0 q1 .. qL-1`` is the bucket of ``q0``, binary-searched for ``q1`` (two
``searchsorted`` calls: ``O(log T)``), giving the positions of the bigram in step order; the rest
of the phrase is verified against ``tokens.npy`` with one vectorised comparison per token. The
cost is proportional to the bigram's frequency, not to ``T``. Building it is one stable argsort
of an int64 key (about ``10 * T`` bytes of RAM while building, ``12 * T`` bytes on disk).

Concurrent builders (threads or processes) serialise on an ``fcntl`` lock; the index directory
appears by an atomic rename, complete or not at all. A new version of a dataset (tracks added or
removed: the same tokens, hard-linked) links its parent's index files if they exist instead of
building them again.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow.parquet as pq
from hiddenscope_core.errors import InvalidQuery, NotFound
from hiddenscope_core.reader import Dataset

INDEX_DIR = "search-v1"


@dataclass(frozen=True)
class TokenIndex:
    tokens: npt.NDArray[np.int32]
    order: npt.NDArray[np.integer]
    second: npt.NDArray[np.int32]
    offsets: npt.NDArray[np.int64]

    @property
    def n_steps(self) -> int:
        return int(self.tokens.shape[0])

    def find(self, phrase: list[npt.NDArray[np.int64]]) -> npt.NDArray[np.int64]:
        """Start steps (ascending, int64) where token ``j`` of the phrase is one of the ids
        ``phrase[j]``, for every ``j`` (the phrase may run across sequence boundaries)."""
        if not phrase:
            return np.empty(0, np.int64)
        V = self.offsets.shape[0] - 1
        parts: list[npt.NDArray[np.int64]] = []
        for q0 in phrase[0]:
            if not 0 <= q0 < V:
                continue
            lo, hi = int(self.offsets[q0]), int(self.offsets[q0 + 1])
            if len(phrase) == 1:
                parts.append(np.asarray(self.order[lo:hi], dtype=np.int64))
                continue
            second = self.second[lo:hi]
            for q1 in phrase[1]:
                a = int(np.searchsorted(second, q1, side="left"))
                b = int(np.searchsorted(second, q1, side="right"))
                if b > a:
                    parts.append(np.asarray(self.order[lo + a : lo + b], dtype=np.int64))
        if not parts:
            return np.empty(0, np.int64)
        pos = parts[0] if len(parts) == 1 else np.concatenate(parts)
        if len(parts) > 1 or len(phrase) == 1:
            pos = np.sort(pos)
        L = len(phrase)
        if L > 2:
            pos = pos[pos + L <= self.n_steps]
            for j in range(2, L):
                ids = phrase[j]
                got = self.tokens[pos + j]
                keep = got == ids[0] if ids.size == 1 else np.isin(got, ids)
                pos = pos[keep]
        return pos


_cache: dict[str, TokenIndex] = {}
_cache_lock = threading.Lock()
_build_locks: dict[str, threading.Lock] = {}


def open_index(ds: Dataset, cache_dir: Path) -> TokenIndex | None:
    """The phrase index of ``ds`` if it has been built (``None`` if not yet). Raises
    ``NotFound`` for a dataset without tokens. Never builds: that is the worker's job
    (:func:`build_index`, Celery task ``match.build_search_index``)."""
    if not ds.manifest.has_tokens:
        raise NotFound(f"dataset {ds.name!r} has no tokens to search")
    hit = _cache.get(ds.id)
    if hit is not None:
        return hit
    final = cache_dir / ds.id / INDEX_DIR
    if not (final / "offsets.npy").exists():
        return None
    with _cache_lock:
        hit = _cache.get(ds.id)
        if hit is None:
            hit = TokenIndex(
                tokens=np.load(final / "tokens.npy", mmap_mode="r"),
                order=np.load(final / "order.npy", mmap_mode="r"),
                second=np.load(final / "second.npy", mmap_mode="r"),
                offsets=np.load(final / "offsets.npy"),
            )
            _cache[ds.id] = hit
        return hit


def index_exists(ds: Dataset, cache_dir: Path) -> bool:
    return ds.id in _cache or (cache_dir / ds.id / INDEX_DIR / "offsets.npy").exists()


def build_index(ds: Dataset, cache_dir: Path) -> bool:
    """Build the phrase index of ``ds`` under ``<cache_dir>/<id>/`` unless it exists; returns
    whether this call built it. Raises ``NotFound`` for a dataset without tokens."""
    if not ds.manifest.has_tokens:
        raise NotFound(f"dataset {ds.name!r} has no tokens to search")
    with _cache_lock:
        lock = _build_locks.setdefault(ds.id, threading.Lock())
    with lock:
        root = cache_dir / ds.id
        final = root / INDEX_DIR
        if (final / "offsets.npy").exists():
            return False
        root.mkdir(parents=True, exist_ok=True)
        with open(root / ".lock", "w") as lockfile:
            fcntl.flock(lockfile, fcntl.LOCK_EX)  # another process may be building it
            try:
                if (final / "offsets.npy").exists():
                    return False
                _build(ds, root)
                return True
            finally:
                fcntl.flock(lockfile, fcntl.LOCK_UN)


def token_index(ds: Dataset, cache_dir: Path) -> TokenIndex:
    """The phrase index of ``ds``, built here if needed (tests, tools; the API never builds)."""
    build_index(ds, cache_dir)
    index = open_index(ds, cache_dir)
    assert index is not None
    return index


def clean_caches(cache_dir: Path, live_ids: set[str], grace_seconds: float = 300.0) -> list[str]:
    """Remove ``<cache_dir>/<id>/`` of datasets that are no longer published (``id`` not in
    ``live_ids``) and untouched for ``grace_seconds`` (so a dataset published a moment ago is
    never raced). Returns the removed ids."""
    removed: list[str] = []
    if not cache_dir.is_dir():
        return removed
    now = time.time()
    for entry in os.scandir(cache_dir):
        if not entry.is_dir(follow_symlinks=False) or entry.name in live_ids:
            continue
        try:
            if now - entry.stat(follow_symlinks=False).st_mtime < grace_seconds:
                continue
        except FileNotFoundError:
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        with _cache_lock:
            _cache.pop(entry.name, None)
            _build_locks.pop(entry.name, None)
        _vocab_cache.pop(entry.name, None)
        removed.append(entry.name)
    return removed


_INDEX_FILES = ("tokens.npy", "order.npy", "second.npy", "offsets.npy")


def _link_parent_index(ds: Dataset, root: Path, tmp: Path) -> bool:
    """A new version of a dataset (tracks added or removed) shares ``tokens.parquet`` with the
    version it was made from (a hard link), so its phrase index is the parent's: link the
    parent's index files instead of sorting ``T`` keys again. False if there is no such index."""
    parent = ds.manifest.parent_id
    if not parent:
        return False
    src = root.parent / parent / INDEX_DIR
    try:
        if not (src / "offsets.npy").exists() or not os.path.samefile(
            ds.path / "tokens.parquet", ds.path.parent / parent / "tokens.parquet"
        ):
            return False
        for name in _INDEX_FILES:
            os.link(src / name, tmp / name)
    except OSError:  # the parent (or its index) went away meanwhile, or no hard links here
        for name in _INDEX_FILES:
            (tmp / name).unlink(missing_ok=True)
        return False
    return True


def _build(ds: Dataset, root: Path) -> None:
    tmp = root / f"{INDEX_DIR}.tmp-{os.getpid()}-{threading.get_ident()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if _link_parent_index(ds, root, tmp):
            os.replace(tmp, root / INDEX_DIR)
            return
        table = pq.read_table(ds.path / "tokens.parquet", columns=["token_id"])
        tokens = table.column(0).to_numpy().astype(np.int32)
        del table
        T = tokens.shape[0]
        V = int(max(ds.manifest.vocab_size, int(tokens.max()) + 1 if T else 0))
        np.save(tmp / "tokens.npy", tokens)
        key = tokens.astype(np.int64) * (V + 1)
        key[:-1] += tokens[1:].astype(np.int64) + 1  # token[T] = -1 → +0
        order = np.argsort(key, kind="stable")
        del key
        order = order.astype(np.uint32) if T < 2**32 else order
        np.save(tmp / "order.npy", order)
        nxt = np.empty(T, np.int32)
        nxt[:-1] = tokens[1:]
        nxt[-1:] = -1
        np.save(tmp / "second.npy", nxt[order])
        del nxt, order
        counts = np.bincount(tokens, minlength=V)
        offsets = np.zeros(V + 1, np.int64)
        np.cumsum(counts, out=offsets[1:])
        np.save(tmp / "offsets.npy", offsets)
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, root / INDEX_DIR)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def phrase_ids(ds: Dataset, phrase: list[str]) -> list[npt.NDArray[np.int64]]:
    """Vocabulary ids of each token text (a text may have several ids; none → empty)."""
    by_text = _vocab_index(ds)
    return [np.asarray(by_text.get(tok, []), dtype=np.int64) for tok in phrase]


_vocab_cache: dict[str, dict[str, list[int]]] = {}


def _vocab_index(ds: Dataset) -> dict[str, list[int]]:
    hit = _vocab_cache.get(ds.id)
    if hit is None:
        hit = {}
        for i, text in enumerate(ds.vocab()):
            hit.setdefault(text, []).append(i)
        _vocab_cache[ds.id] = hit
    return hit


def parse_ids(text: str) -> list[npt.NDArray[np.int64]]:
    """``"12 7 9"`` → one id per token. Raises ``InvalidQuery``."""
    try:
        return [np.asarray([int(x)], dtype=np.int64) for x in text.split()]
    except ValueError:
        raise InvalidQuery("ids must be whitespace-separated integers") from None
