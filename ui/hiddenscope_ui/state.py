"""The whole view state and its URL encoding.

Everything a user sees is determined by :class:`ViewState`, and a :class:`ViewState` is exactly
what the URL's query string holds, so any view can be shared by copying the address.

Two vocabularies are read:

* ours (written): ``dataset, layer, compare, pos, threshold, cw, tracks, cells, range, off, hl,
  mask, map, min_length, max_length, top_k, stats, job``; arrays are ``a,b,c`` (or repeated
  keys), ``range`` is an absolute half-open step range ``a,b``, flags are ``1``/``0``.
* the original LSTMVis client's: ``project, source, pos, activation, cw, meta, sc, wordBrush,
  wordBrushZero`` with its ``..a,b,c`` array encoding. ``wordBrush`` is relative to the window,
  which starts :data:`LEFT_CONTEXT` steps before ``pos`` (as in the original); ``source`` may be
  the original's ``file::path`` (only the part after ``::`` is kept, e.g. ``states1``).

Parsing never raises: a malformed value is dropped and reported in ``ParsedState.problems``, so a
stale or hand-edited link still opens (with a message) instead of failing.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

DEFAULT_THRESHOLD = 0.3
DEFAULT_OFF = (1, 0)
DEFAULT_CW = 30.0
"""Word width in pixels (the original's ``cw``); the window holds ``PLOT_WIDTH_PX / cw`` steps."""
LEFT_CONTEXT = 3
"""Steps shown before ``pos`` (the original's ``left``)."""
PLOT_WIDTH_PX = 1200
MIN_CW = 0.0001
MAX_CW = 120.0
DEFAULT_TOP_K = 50
DEFAULT_MIN_LENGTH = 2
MAX_CELLS_IN_URL = 4096

ORIGINAL_ALIASES: dict[str, str] = {
    "project": "dataset",
    "source": "layer",
    "activation": "threshold",
    "meta": "tracks",
    "sc": "cells",
}
"""Original parameter name -> ours (``wordBrush``/``wordBrushZero`` are converted separately)."""


@dataclass(frozen=True)
class ViewState:
    """What is on screen. Steps are absolute, 0-based; ranges are half-open ``[a, b)``."""

    dataset: str | None = None
    layer: str | None = None
    compare: str | None = None
    """Select view: a second layer drawn under the first over the same window (side by side)."""
    pos: int = 0
    threshold: float = DEFAULT_THRESHOLD
    cw: float = DEFAULT_CW
    tracks: tuple[str, ...] = ()
    cells: tuple[int, ...] = ()
    """S1 when no ``range`` is brushed (e.g. opened from a match result or typed in)."""
    range: tuple[int, int] | None = None
    off: tuple[int, int] = DEFAULT_OFF
    hl: int | None = None
    """The highlighted cell of the selected-cell list."""
    mask: bool = False
    """Fade meta tracks (select view) and the word matrix's background (match view) where few
    selected cells are on, as the original's "mask" toggles."""
    map: str | None = None
    """Match view: the heatmap whose colours fill the word matrix (``count`` or a track)."""
    min_length: int = DEFAULT_MIN_LENGTH
    max_length: int | None = None
    top_k: int = DEFAULT_TOP_K
    stats: bool = False
    """Match view: ask for the candidate count and the two length histograms (slower)."""
    job: str | None = None
    """Match view: the match job whose result is shown."""

    @property
    def span(self) -> int:
        """Steps in the select view's window."""
        return max(5, round(PLOT_WIDTH_PX / self.cw))

    def window(self, n_steps: int | None = None) -> tuple[int, int]:
        """The select view's window ``[start, end)``: ``LEFT_CONTEXT`` steps before ``pos``,
        ``span`` steps long, clipped to ``[0, n_steps)``."""
        span = self.span
        start = max(0, self.pos - LEFT_CONTEXT)
        if n_steps is not None:
            span = min(span, n_steps)
            start = min(start, max(0, n_steps - span))
        return start, start + span

    def with_layer(self, layer: str | None) -> ViewState:
        """Switching layers clears the selection, as in the original."""
        if layer == self.layer:
            return self
        compare = None if layer == self.compare else self.compare
        return replace(self, layer=layer, compare=compare, range=None, cells=(), hl=None, job=None)

    def with_dataset(self, dataset: str | None) -> ViewState:
        if dataset == self.dataset:
            return self
        return ViewState(
            dataset=dataset, threshold=self.threshold, cw=self.cw, off=self.off, mask=self.mask
        )


@dataclass
class ParsedState:
    state: ViewState
    problems: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------- parsing


def _as_list(value: str | Sequence[str]) -> list[str]:
    """Array values: ``..a,b,c`` (original), ``a,b,c`` or repeated keys; empty items dropped."""
    raw = [value] if isinstance(value, str) else list(value)
    out: list[str] = []
    for item in raw:
        item = item.strip()
        if item.startswith(".."):
            item = item[2:]
        out.extend(p.strip() for p in item.split(",") if p.strip())
    return out


def _last(value: str | Sequence[str]) -> str:
    if isinstance(value, str):
        return value.strip()
    return value[-1].strip() if value else ""


def _int(text: str) -> int:
    # accept "12.0" (the original wrote numbers through parseFloat)
    f = float(text)
    if not math.isfinite(f) or f != int(f):
        raise ValueError(f"not an integer: {text!r}")
    return int(f)


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,200}$")
_JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,200}$")
"""Job ids are ``secrets.token_urlsafe``: they may start with ``-`` or ``_``."""
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


def parse_query_params(params: Mapping[str, str | Sequence[str]]) -> ParsedState:
    """Read a query string (``st.query_params.to_dict()`` or ``{key: [values]}``) into a state.

    Our names win over the original's when both are present. Never raises.
    """
    problems: list[str] = []
    values: dict[str, str | Sequence[str]] = {}
    for key, value in params.items():
        ours = ORIGINAL_ALIASES.get(key, key)
        if ours in values and ours != key:
            continue  # ours given as well: keep ours
        values[ours] = value

    kw: dict[str, Any] = {}

    def bad(key: str, value: object, why: str) -> None:
        problems.append(f"ignored URL parameter {key}={_last(_flat(value))!r}: {why}")

    for key in ("dataset", "layer", "compare", "map", "job"):
        if key in values:
            text = _last(values[key])
            if key in ("layer", "compare") and "::" in text:
                text = text.split("::", 1)[1]  # original "states::states1"
            if text == "":
                continue
            if (_JOB_ID if key == "job" else _NAME).match(text):
                kw[key] = text
            else:
                bad(key, values[key], "not a valid name")

    for key, least in (("pos", 0), ("min_length", 1), ("max_length", 1), ("top_k", 1), ("hl", 0)):
        if key in values:
            try:
                v = _int(_last(values[key]))
                if v < least:
                    raise ValueError(f"must be >= {least}")
                kw[key] = v
            except ValueError as exc:
                bad(key, values[key], str(exc))
    if "top_k" in kw:
        kw["top_k"] = min(kw["top_k"], 1000)

    limits: tuple[tuple[str, float, float], ...] = (
        ("threshold", -1e12, 1e12),
        ("cw", MIN_CW, MAX_CW),
    )
    for key, lo, hi in limits:
        if key in values:
            try:
                f = float(_last(values[key]))
                if not math.isfinite(f) or not lo <= f <= hi:
                    raise ValueError(f"must be a number in [{lo:g}, {hi:g}]")
                kw[key] = f
            except ValueError as exc:
                bad(key, values[key], str(exc))

    for key in ("mask", "stats"):
        if key in values:
            text = _last(values[key]).lower()
            if text in _TRUE | _FALSE:
                kw[key] = text in _TRUE
            else:
                bad(key, values[key], "expected 1 or 0")

    if "tracks" in values:
        names = _as_list(values["tracks"])
        good = tuple(dict.fromkeys(n for n in names if _NAME.match(n)))
        if len(good) != len(names):
            bad("tracks", values["tracks"], "some track names are invalid")
        kw["tracks"] = good

    if "cells" in values:
        try:
            cells = sorted({_int(x) for x in _as_list(values["cells"])})
            if any(c < 0 for c in cells):
                raise ValueError("cell ids must be >= 0")
            if len(cells) > MAX_CELLS_IN_URL:
                raise ValueError(f"more than {MAX_CELLS_IN_URL} cells")
            kw["cells"] = tuple(cells)
        except ValueError as exc:
            bad("cells", values["cells"], str(exc))

    def pair(key: str) -> tuple[int, int] | None:
        try:
            items = [_int(x) for x in _as_list(values[key])]
        except ValueError as exc:
            bad(key, values[key], str(exc))
            return None
        if len(items) != 2:
            bad(key, values[key], "expected two integers a,b")
            return None
        return items[0], items[1]

    if "off" in values:
        off = pair("off")
        if off is not None:
            if min(off) < 0:
                bad("off", values["off"], "off extents must be >= 0")
            else:
                kw["off"] = off
    elif "wordBrushZero" in values:
        off = pair("wordBrushZero")
        if off is not None:
            # the original's left handle can reach index -1 (= no left extent)
            kw["off"] = (max(0, off[0]), max(0, off[1]))

    if "range" in values:
        rng = pair("range")
        if rng is not None:
            if rng[0] < 0 or rng[1] <= rng[0]:
                bad("range", values["range"], "need 0 <= a < b")
            else:
                kw["range"] = rng
    elif "wordBrush" in values:
        rel = pair("wordBrush")
        if rel is not None:
            base = max(0, kw.get("pos", 0) - LEFT_CONTEXT)
            a, b = base + rel[0], base + rel[1]
            if a < 0 or b <= a:
                bad("wordBrush", values["wordBrush"], "need a < b inside the window")
            else:
                kw["range"] = (a, b)

    if "max_length" in kw and kw["max_length"] < kw.get("min_length", DEFAULT_MIN_LENGTH):
        bad("max_length", values["max_length"], "smaller than min_length")
        del kw["max_length"]

    known = {f.name for f in fields(ViewState)} | {"wordBrush", "wordBrushZero"}
    for key in values:
        if key not in known:
            problems.append(f"ignored unknown URL parameter {key!r}")
    return ParsedState(ViewState(**kw), problems)


def _flat(value: object) -> str | Sequence[str]:
    if isinstance(value, str):
        return value
    if isinstance(value, Iterable):
        return [str(v) for v in value]
    return str(value)


# ---------------------------------------------------------------------------------- writing


def _num(f: float) -> str:
    text = f"{f:.6g}"
    return text


def to_query_params(state: ViewState) -> dict[str, str]:
    """Our URL encoding of a state; defaults are left out to keep links short."""
    out: dict[str, str] = {}
    if state.dataset:
        out["dataset"] = state.dataset
    if state.layer:
        out["layer"] = state.layer
    if state.compare:
        out["compare"] = state.compare
    if state.pos:
        out["pos"] = str(state.pos)
    if state.threshold != DEFAULT_THRESHOLD:
        out["threshold"] = _num(state.threshold)
    if state.cw != DEFAULT_CW:
        out["cw"] = _num(state.cw)
    if state.tracks:
        out["tracks"] = ",".join(state.tracks)
    if state.cells:
        out["cells"] = ",".join(str(c) for c in state.cells)
    if state.range is not None:
        out["range"] = f"{state.range[0]},{state.range[1]}"
    if state.off != DEFAULT_OFF:
        out["off"] = f"{state.off[0]},{state.off[1]}"
    if state.hl is not None:
        out["hl"] = str(state.hl)
    if state.mask:
        out["mask"] = "1"
    if state.map:
        out["map"] = state.map
    if state.min_length != DEFAULT_MIN_LENGTH:
        out["min_length"] = str(state.min_length)
    if state.max_length is not None:
        out["max_length"] = str(state.max_length)
    if state.top_k != DEFAULT_TOP_K:
        out["top_k"] = str(state.top_k)
    if state.stats:
        out["stats"] = "1"
    if state.job:
        out["job"] = state.job
    return out


def to_original_query_params(state: ViewState) -> dict[str, str]:
    """The original LSTMVis client's encoding of the same state (for links into old tooling)."""
    out: dict[str, str] = {}
    if state.dataset:
        out["project"] = state.dataset
    if state.layer:
        out["source"] = state.layer
    out["pos"] = str(state.pos)
    out["activation"] = _num(state.threshold)
    out["cw"] = _num(state.cw)
    if state.tracks:
        out["meta"] = ".." + ",".join(state.tracks)
    if state.cells:
        out["sc"] = ".." + ",".join(str(c) for c in state.cells)
    if state.range is not None:
        base = max(0, state.pos - LEFT_CONTEXT)
        out["wordBrush"] = f"..{state.range[0] - base},{state.range[1] - base}"
    out["wordBrushZero"] = f"..{state.off[0]},{state.off[1]}"
    return out


# ---------------------------------------------------------------------------------- jumps


@dataclass(frozen=True)
class SequenceRef:
    index: int
    name: str
    start: int
    end: int


def parse_jump(text: str, sequences: Sequence[SequenceRef], n_steps: int) -> int:
    """A jump target: ``1234`` (a step), ``name:offset`` or ``#index:offset`` (an offset inside
    a sequence; ``1,234`` and ``1_234`` digit groups are accepted).

    Raises:
        ValueError: with a message fit for the user.
    """
    text = text.strip()
    if not text:
        raise ValueError("type a step (e.g. 1200) or sequence:offset (e.g. chr1:5000)")

    def number(s: str) -> int:
        s = s.replace(",", "").replace("_", "").strip()
        if not re.fullmatch(r"\d+", s):
            raise ValueError(f"{s!r} is not a non-negative whole number")
        return int(s)

    if ":" in text:
        name, offset_text = text.rsplit(":", 1)
        name = name.strip()
        offset = number(offset_text)
        seq: SequenceRef | None = None
        if name.startswith("#") and name[1:].isdigit():
            idx = int(name[1:])
            seq = next((s for s in sequences if s.index == idx), None)
        else:
            seq = next((s for s in sequences if s.name == name), None)
        if seq is None:
            known = ", ".join(s.name for s in sequences[:8])
            more = " …" if len(sequences) > 8 else ""
            raise ValueError(f"no sequence named {name!r} (sequences: {known}{more})")
        if offset >= seq.end - seq.start:
            raise ValueError(f"{name} has {seq.end - seq.start} steps; offset {offset} is past it")
        return seq.start + offset
    step = number(text)
    if step >= n_steps:
        raise ValueError(f"step {step} is past the end (the dataset has {n_steps} steps)")
    return step
