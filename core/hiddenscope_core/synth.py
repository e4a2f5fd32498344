"""Synthetic LSTM-like states for benchmarks, demos and tests.

Cells switch on and off in runs of mixed length. Cells come in groups of 8 that share a latent
on/off process; each cell follows its group most of the time and a private process otherwise
(so cells are correlated but not identical). Values are ``±0.55`` plus a slow drift and noise,
clipped to ``[-1, 1]``, so that thresholds near the levels flicker the way real cell states do.

Generation is chunked and seeded: ``generate_chunks`` yields ``(n, D)`` blocks of any total
length in bounded memory; the same seed and ``chunk_steps`` give the same stream.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numba as nb
import numpy as np
import numpy.typing as npt

GROUP = 8


@dataclass
class _Markov:
    """Alternating on/off runs with geometric lengths of a given mean, per stream."""

    mean: npt.NDArray[np.float64]  # (k,)
    rng: np.random.Generator
    state: npt.NDArray[np.bool_] = field(init=False)
    left: npt.NDArray[np.int64] = field(init=False)

    def __post_init__(self) -> None:
        k = self.mean.size
        self.state = self.rng.random(k) < 0.5
        self.left = self.rng.geometric(1.0 / self.mean).astype(np.int64)

    def take(self, n: int) -> npt.NDArray[np.bool_]:
        """The next ``n`` steps as an ``(n, k)`` bool array."""
        k = self.mean.size
        out = np.empty((n, k), dtype=np.bool_)
        for j in range(k):
            p = 1.0 / self.mean[j]
            first = min(int(self.left[j]), n)
            lengths = [np.array([first], dtype=np.int64)]
            total = first
            while total < n:
                batch = self.rng.geometric(p, size=int((n - total) * p * 1.2) + 16)
                lengths.append(batch)
                total += int(batch.sum())
            runs = np.concatenate(lengths)
            state = bool(self.state[j])
            states = np.zeros(runs.size, dtype=np.bool_)
            states[0::2] = state
            states[1::2] = not state
            out[:, j] = np.repeat(states, runs)[:n]
            self.left[j] = total - n
            self.state[j] = states[-1]
            if self.left[j] == 0:
                # the last run ended exactly at n: the next one starts with the other state
                self.state[j] = not states[-1]
                self.left[j] = int(self.rng.geometric(p))
        return out


@nb.njit(cache=True, nogil=True)
def _values_kernel(
    on: npt.NDArray[np.bool_],
    drift: npt.NDArray[np.float64],
    bias: npt.NDArray[np.float64],
    noise: float,
    rng_state: npt.NDArray[np.uint64],
    out: npt.NDArray[np.float32],
) -> None:
    """``out[t, c] = clip(±0.55 + 0.2 drift + bias + uniform noise of std ``noise``)``; the
    noise comes from a per-cell xorshift64* stream (fast, reproducible)."""
    n, D = on.shape
    scale = noise * 3.4641016151377544  # uniform on [-a/2, a/2] has std a / sqrt(12)
    xs = rng_state.copy()
    for t in range(n):
        for c in range(D):
            x = xs[c]
            x ^= x >> np.uint64(12)
            x ^= x << np.uint64(25)
            x ^= x >> np.uint64(27)
            xs[c] = x
            r = (x * np.uint64(2685821657736338717)) >> np.uint64(11)
            u = r * (1.0 / 9007199254740992.0) - 0.5
            v = (0.55 if on[t, c] else -0.55) + 0.2 * drift[t >> 6, c] + bias[c] + scale * u
            out[t, c] = min(1.0, max(-1.0, v))
    rng_state[:] = xs


class LstmLikeStates:
    """A seeded stream of ``(T, D)`` LSTM-like states; see the module docstring."""

    def __init__(
        self,
        n_cells: int,
        *,
        seed: int = 0,
        mean_run: tuple[float, float] = (5.0, 50.0),
        noise: float = 0.08,
        dtype: npt.DTypeLike = np.float32,
    ) -> None:
        self.n_cells = n_cells
        self.dtype = np.dtype(dtype)
        self.noise = noise
        self._rng = np.random.default_rng(seed)
        n_groups = -(-n_cells // GROUP)
        lo, hi = np.log(mean_run[0]), np.log(mean_run[1])
        self._group = _Markov(np.exp(self._rng.uniform(lo, hi, n_groups)), self._rng)
        self._private = _Markov(np.exp(self._rng.uniform(lo, hi, n_cells)), self._rng)
        # whether a cell follows its group: a slow on/off process, ~75 % following
        self._follow = _Markov(np.full(n_cells, 200.0), self._rng)
        self._follow_bias = self._rng.random(n_cells) < 0.5
        self._drift = np.zeros(n_cells)
        self._bias = self._rng.normal(0.0, 0.05, n_cells)
        self._noise_state = self._rng.integers(1, 2**63, n_cells, dtype=np.uint64)

    def take(self, n: int) -> npt.NDArray[np.floating]:
        """The next ``n`` steps, ``(n, D)``."""
        D = self.n_cells
        group_on = self._group.take(n)[:, np.arange(D) // GROUP]
        private_on = self._private.take(n)
        follow = self._follow.take(n) | self._follow_bias
        on = np.where(follow, group_on, private_on)
        # slow drift: a random walk sampled every 64 steps, squashed
        blocks = -(-n // 64)
        walk = self._drift + np.cumsum(self._rng.normal(0.0, 0.05, (blocks, D)), axis=0)
        self._drift = walk[-1] * 0.9
        out = np.empty((n, D), dtype=np.float32)
        _values_kernel(on, np.tanh(walk), self._bias, self.noise, self._noise_state, out)
        return out if self.dtype == np.float32 else out.astype(self.dtype)


def generate_chunks(
    n_steps: int,
    n_cells: int,
    *,
    chunk_steps: int = 1 << 20,
    seed: int = 0,
    dtype: npt.DTypeLike = np.float32,
    mean_run: tuple[float, float] = (5.0, 50.0),
) -> Iterator[npt.NDArray[np.floating]]:
    """Yield ``(n, n_cells)`` chunks totalling ``n_steps`` rows."""
    gen = LstmLikeStates(n_cells, seed=seed, dtype=dtype, mean_run=mean_run)
    done = 0
    while done < n_steps:
        n = min(chunk_steps, n_steps - done)
        yield gen.take(n)
        done += n


def plant_phrase(
    values: npt.NDArray[np.floating],
    cells: list[int],
    every: int,
    length: int,
    *,
    on_value: float = 0.9,
    off_value: float = -0.9,
    offset: int = 0,
) -> list[int]:
    """Plant a pattern in ``values`` (in place): every ``every`` steps from ``offset``, the
    ``cells`` are set to ``on_value`` for ``length`` steps and to ``off_value`` one step before
    and one after. Returns the planted start steps."""
    T = values.shape[0]
    starts = []
    for s in range(offset + 1, T - length - 1, every):
        values[s - 1, cells] = off_value
        values[s : s + length, cells] = on_value
        values[s + length, cells] = off_value
        starts.append(s)
    return starts
