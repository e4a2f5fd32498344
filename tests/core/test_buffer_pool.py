"""The process's pool of block buffers (``direct_io.BufferPool``): a finished build's buffers
are reused by the next one, never while a user still holds them, and the pool stays bounded."""

from __future__ import annotations

import gc
import threading
from pathlib import Path

import numpy as np
from hiddenscope_core.direct_io import ALIGN, POOL, BufferPool

from tests.core.helpers import make_states, write_dataset


def test_a_given_buffer_is_reused_aligned_and_with_any_shape() -> None:
    pool = BufferPool(1 << 20)
    a = pool.take((3, 1000), np.float32)
    assert a.shape == (3, 1000)
    assert a.dtype == np.float32
    assert a.flags.c_contiguous
    assert a.ctypes.data % ALIGN == 0
    addr = a.ctypes.data
    pool.give(a)
    assert pool.kept_bytes == 3 * 1000 * 4 + ALIGN
    b = pool.take((1000, 3), np.float32)  # the same number of bytes: the same memory
    assert b.ctypes.data == addr
    assert b.shape == (1000, 3)
    assert pool.kept_bytes == 0
    c = pool.take((1000, 3), np.float32)  # the pool is empty again: new memory
    assert c.ctypes.data != addr


def test_two_takes_never_share_memory() -> None:
    pool = BufferPool(1 << 20)
    a = pool.take(4096, np.uint8)
    b = pool.take(4096, np.uint8)
    a[:] = 1
    b[:] = 2
    assert (a == 1).all()
    assert (b == 2).all()


def test_foreign_arrays_double_gives_and_the_limit() -> None:
    pool = BufferPool(2 * (8192 + ALIGN))
    pool.give(np.empty(8192, np.uint8))  # not made by the pool: ignored
    pool.give(None)
    assert pool.kept_bytes == 0
    a, b, c = (pool.take(8192, np.uint8) for _ in range(3))
    pool.give(a)
    pool.give(a)  # a second give of the same array is ignored
    assert pool.kept_bytes == 8192 + ALIGN
    pool.give(b)
    pool.give(c)  # over the limit: left to the garbage collector
    assert pool.kept_bytes == 2 * (8192 + ALIGN)
    pool.clear()
    assert pool.kept_bytes == 0


def test_a_buffer_dropped_without_give_is_forgotten() -> None:
    pool = BufferPool(1 << 20)
    a = pool.take(8192, np.uint8)
    key = id(a)
    del a
    gc.collect()
    assert key not in pool._out


def test_concurrent_takes_and_gives() -> None:
    pool = BufferPool(64 << 20)
    errors: list[str] = []

    def work(k: int) -> None:
        for i in range(200):
            a = pool.take(16384, np.uint8)
            a[:] = k
            if not (a == k).all():  # another thread wrote into our buffer
                errors.append(f"thread {k}, round {i}")
            pool.give(a)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert 0 < pool.kept_bytes <= 4 * (16384 + ALIGN)


def test_builds_return_their_buffers_and_reuse_them(tmp_path: Path) -> None:
    """A finished build leaves its block buffers in the process pool and the next build takes
    them (the datasets are still right: the storage tests check them in depth)."""
    x = make_states(3000, 70, seed=4, nan_frac=0.02)
    POOL.clear()
    write_dataset(tmp_path, "a", x, transform="none", thresholds=[0.0, 0.5])
    kept = POOL.kept_bytes
    assert kept > 0
    write_dataset(tmp_path, "b", x, transform="none", thresholds=[0.0, 0.5])
    assert POOL.kept_bytes == kept  # taken again and given back, nothing new kept
