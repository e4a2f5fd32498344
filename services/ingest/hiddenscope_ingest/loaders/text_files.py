"""Text inputs: token files (one token per line), vocabularies (one token per line, line i = id
i), the original LSTMVis ``.dict`` files (``token id`` per line) and CoNLL columns.

Token and CoNLL files are converted in one streaming pass into int32 id files in a work
directory (memory-mapped afterwards), so memory stays bounded by the vocabulary, not by T."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from hiddenscope_ingest.errors import InvalidData, TooLarge
from hiddenscope_ingest.loaders.base import Limits, NumpySource

_DICT_LINE = re.compile(r"^(.*?)[ \t]+(-?\d+)[ \t]*$")
_FLUSH = 1 << 16


def _lines(path: Path, name: str) -> Iterator[tuple[int, str]]:
    try:
        with open(path, encoding="utf-8", newline="") as f:
            for no, line in enumerate(f, start=1):
                yield no, line.rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise InvalidData(f"{name}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


@dataclass
class Labels:
    """A dictionary id → text; ``defined[i]`` says whether id i was given."""

    texts: list[str]
    defined: npt.NDArray[np.bool_]


def read_dict_file(path: Path, name: str, limits: Limits) -> Labels:
    """An LSTMVis ``.dict`` file: ``token id`` per line (whitespace separated; a line starting
    with a space maps the token " "). Ids must be >= 0; gaps become empty strings."""
    pairs: dict[int, str] = {}
    for no, line in _lines(path, name):
        if not line.strip():
            continue
        m = _DICT_LINE.match(line)
        if m is None:
            raise InvalidData(f"{name}: line {no} is not 'token id': {line[:80]!r}")
        token, idx = m.group(1), int(m.group(2))
        if token == "" and line.startswith((" ", "\t")):
            token = " "
        if idx < 0 or idx >= limits.max_vocab_size:
            raise InvalidData(f"{name}: line {no}: id {idx} out of range")
        if idx in pairs and pairs[idx] != token:
            raise InvalidData(f"{name}: line {no}: id {idx} is given twice")
        pairs[idx] = token
    if not pairs:
        raise InvalidData(f"{name}: the dictionary is empty")
    size = max(pairs) + 1
    texts = [""] * size
    defined = np.zeros(size, dtype=bool)
    for idx, token in pairs.items():
        texts[idx] = token
        defined[idx] = True
    return Labels(texts, defined)


def read_lines_vocab(path: Path, name: str, limits: Limits) -> Labels:
    """One token per line; line i (0-based) is id i."""
    texts: list[str] = []
    for _no, line in _lines(path, name):
        texts.append(line)
        if len(texts) > limits.max_vocab_size:
            raise TooLarge(f"{name}: more than {limits.max_vocab_size} entries")
    if not texts:
        raise InvalidData(f"{name}: the vocabulary is empty")
    return Labels(texts, np.ones(len(texts), dtype=bool))


class _IdWriter:
    """Appends int32 ids to a raw file in ``work_dir``; ``source()`` memory-maps the result."""

    def __init__(self, path: Path, name: str) -> None:
        self.path = path
        self.name = name
        self.f = open(path, "wb")  # noqa: SIM115 - closed in finish()
        self.buf: list[int] = []
        self.n = 0

    def add(self, value: int) -> None:
        self.buf.append(value)
        if len(self.buf) >= _FLUSH:
            self.flush()

    def flush(self) -> None:
        if self.buf:
            self.f.write(np.asarray(self.buf, dtype=np.int32).tobytes())
            self.n += len(self.buf)
            self.buf.clear()

    def finish(self) -> NumpySource:
        self.flush()
        self.f.close()
        if self.n == 0:
            raise InvalidData(f"{self.name}: no tokens")
        return NumpySource(
            self.name, np.memmap(self.path, dtype=np.int32, mode="r", shape=(self.n,))
        )


@dataclass
class TokenText:
    ids: NumpySource
    vocab: Labels
    sequence_starts: list[int]
    tracks: dict[str, tuple[NumpySource, list[str]]] = field(default_factory=dict)


class _Vocab:
    def __init__(self, given: Labels | None, name: str, limits: Limits) -> None:
        self.name = name
        self.limits = limits
        self.fixed = given is not None
        self.texts: list[str] = list(given.texts) if given else []
        self.index: dict[str, int] = {}
        if given is not None:
            for i, t in enumerate(given.texts):
                if given.defined[i]:
                    self.index.setdefault(t, i)

    def id(self, token: str, where: str) -> int:
        idx = self.index.get(token)
        if idx is not None:
            return idx
        if self.fixed:
            raise InvalidData(
                f"{self.name}: {where}: token {token[:40]!r} is not in the vocabulary"
            )
        if len(self.texts) >= self.limits.max_vocab_size:
            raise TooLarge(f"{self.name}: more than {self.limits.max_vocab_size} distinct tokens")
        self.index[token] = len(self.texts)
        self.texts.append(token)
        return self.index[token]

    def labels(self) -> Labels:
        return Labels(self.texts, np.ones(len(self.texts), dtype=bool))


def read_token_file(
    path: Path, name: str, vocab: Labels | None, work_dir: Path, limits: Limits
) -> TokenText:
    """One token per line; a blank line ends a sequence. Without ``vocab`` the vocabulary is
    built in order of first appearance; with it, unknown tokens are an error."""
    voc = _Vocab(vocab, name, limits)
    out = _IdWriter(work_dir / "tokens.i32", name)
    starts: list[int] = [0]
    for no, line in _lines(path, name):
        if line == "":
            if out.n + len(out.buf) > starts[-1]:
                starts.append(out.n + len(out.buf))
            continue
        out.add(voc.id(line, f"line {no}"))
    ids = out.finish()
    if starts[-1] == ids.shape[0]:
        starts.pop()
    return TokenText(ids, voc.labels(), starts)


def read_conll(
    path: Path,
    name: str,
    word_column: int,
    columns: dict[str, int],
    vocab: Labels | None,
    work_dir: Path,
    limits: Limits,
) -> TokenText:
    """CoNLL columns: tokens from ``word_column``, a discrete track per entry of ``columns``;
    blank lines and ``-DOCSTART-`` end sentences (sequences); ``#`` lines and CoNLL-U multiword
    (``1-2``) / empty-node (``8.1``) lines are skipped."""
    voc = _Vocab(vocab, name, limits)
    out = _IdWriter(work_dir / "conll-words.i32", name)
    tracks = {
        t: (_IdWriter(work_dir / f"conll-{t}.i32", name), _Vocab(None, name, limits))
        for t in columns
    }
    need = max([word_column, *columns.values()]) + 1
    starts: list[int] = [0]
    n = 0
    for no, line in _lines(path, name):
        stripped = line.strip()
        if stripped == "" or stripped.startswith("-DOCSTART-"):
            if n > starts[-1]:
                starts.append(n)
            continue
        if stripped.startswith("#"):
            continue
        cols = stripped.split("\t") if "\t" in stripped else stripped.split()
        if re.match(r"^\d+[-.]\d+$", cols[0]):
            continue
        if len(cols) < need:
            raise InvalidData(f"{name}: line {no} has {len(cols)} columns, expected >= {need}")
        out.add(voc.id(cols[word_column], f"line {no}"))
        for t, col in columns.items():
            writer, labels = tracks[t]
            writer.add(labels.id(cols[col], f"line {no}"))
        n += 1
    ids = out.finish()
    if starts[-1] == n:
        starts.pop()
    result = TokenText(ids, voc.labels(), starts)
    for t, (writer, labels) in tracks.items():
        result.tracks[t] = (writer.finish(), labels.texts)
    return result
