"""Import of the original LSTMVis project layout (``lstm.yml`` + HDF5 + ``.dict`` files).

The project is translated into an ordinary :class:`IngestManifest` whose sources point into the
project directory, so the same safe loaders and the same conversion run on it. Meaning kept from
the original: its server thresholded ``tanh`` of the stored values, so every layer gets
``transform: tanh`` unless its ``states.types`` entry says ``transform: none``; word ids and the
``word_sequence.dict_file`` give tokens and vocabulary; ``meta`` entries become tracks
(``vis.type: discrete`` with an optional ``dict`` → discrete, ``scalar`` → scalar, a
``weights_path`` (top-K predictions and scores) → topk; ``index: word_sequence`` looks values up
per token id).
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Any

import yaml
from pydantic import ValidationError

from hiddenscope_ingest.errors import InvalidManifest
from hiddenscope_ingest.loaders import resolve_file
from hiddenscope_ingest.manifest import IngestManifest

_MAX_CONFIG_BYTES = 1 << 20


def _sanitize(text: str) -> str:
    name = re.sub(r"[^a-z0-9._-]+", "_", text.lower()).strip("._-") or "x"
    return name[:64]


def lstmvis_to_manifest(manifest: IngestManifest, root: Path) -> IngestManifest:
    """The arrays manifest equivalent to ``manifest.lstmvis`` (paths relative to ``root``).

    Raises :class:`InvalidManifest` (422) for a config that is unreadable or incomplete."""
    assert manifest.lstmvis is not None
    base = PurePosixPath(manifest.lstmvis.dir)
    cfg_rel = str(base / manifest.lstmvis.config)
    cfg_path = resolve_file(root, cfg_rel)
    if cfg_path.stat().st_size > _MAX_CONFIG_BYTES:
        raise InvalidManifest(f"{cfg_rel}: the config is larger than 1 MiB")
    try:
        cfg = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise InvalidManifest(f"{cfg_rel}: not valid YAML ({exc})") from None
    if not isinstance(cfg, dict):
        raise InvalidManifest(f"{cfg_rel}: the config must be a mapping")
    files = cfg.get("files") or {}
    if not isinstance(files, dict):
        raise InvalidManifest(f"{cfg_rel}: 'files' must map names to files")

    def file_of(ref: Any, what: str) -> str:
        if not isinstance(ref, str) or ref not in files:
            raise InvalidManifest(f"{cfg_rel}: {what} names {ref!r}, which is not under 'files'")
        target = files[ref]
        if not isinstance(target, str):
            raise InvalidManifest(f"{cfg_rel}: files.{ref} must be a file name")
        return str(base / target) if str(base) != "." else target

    def src(ref: Any, path: Any, what: str) -> dict[str, Any]:
        if not isinstance(path, str) or not path:
            raise InvalidManifest(f"{cfg_rel}: {what} needs a 'path' (the HDF5 dataset)")
        return {"file": file_of(ref, what), "key": path, "format": "hdf5"}

    states = cfg.get("states")
    if not isinstance(states, dict) or not isinstance(states.get("types"), list):
        raise InvalidManifest(f"{cfg_rel}: 'states.types' must list the state sources")
    layers: list[dict[str, Any]] = []
    used: set[str] = set()
    for i, entry in enumerate(states["types"]):
        if not isinstance(entry, dict):
            raise InvalidManifest(f"{cfg_rel}: states.types[{i}] must be a mapping")
        typ = str(entry.get("type", "state"))
        kind = {"state": "cell", "output": "hidden"}.get(typ, _sanitize(typ))
        name = _sanitize(f"{kind}_l{entry.get('layer', i + 1)}")
        if name in used:
            name = _sanitize(f"{name}_{entry.get('path', i)}")
        used.add(name)
        transform = str(entry.get("transform", "tanh")).lower()
        if transform not in ("tanh", "none"):
            raise InvalidManifest(f"{cfg_rel}: states.types[{i}].transform must be tanh or none")
        layers.append(
            {
                "name": name,
                "source": src(entry.get("file", states.get("file")), entry.get("path"),
                              f"states.types[{i}]"),
                "transform": transform,
                "kind": kind,
            }
        )  # fmt: skip

    out: dict[str, Any] = {
        "name": manifest.name,
        "description": manifest.description or str(cfg.get("description") or cfg.get("name") or ""),
        "layers": layers,
        "nan_policy": manifest.nan_policy,
        "provenance": {
            **manifest.provenance,
            "format": "lstmvis",
            "lstmvis_name": str(cfg.get("name", "")),
        },
    }
    ws = cfg.get("word_sequence")
    if isinstance(ws, dict):
        out["tokens"] = {"source": src(ws.get("file"), ws.get("path"), "word_sequence")}
        if ws.get("dict_file") is not None:
            out["vocab"] = {"source": {"file": file_of(ws["dict_file"], "word_sequence.dict_file"),
                                       "format": "dict"}}  # fmt: skip
    tracks: list[dict[str, Any]] = []
    for mname, meta in (cfg.get("meta") or {}).items():
        if not isinstance(meta, dict):
            raise InvalidManifest(f"{cfg_rel}: meta.{mname} must be a mapping")
        vis = meta.get("vis") or {}
        vtype = str(vis.get("type", "discrete")) if isinstance(vis, dict) else "discrete"
        track: dict[str, Any] = {
            "name": _sanitize(str(mname)),
            "source": src(meta.get("file"), meta.get("path"), f"meta.{mname}"),
            "description": f"LSTMVis meta {mname}",
        }
        index = meta.get("index", "self")
        if index not in ("self", None):
            if index != "word_sequence":
                raise InvalidManifest(f"{cfg_rel}: meta.{mname}.index {index!r} is not supported")
            track["index_by_tokens"] = True
        if meta.get("weights_path") is not None or vtype == "wordvec":
            if meta.get("weights_path") is None:
                raise InvalidManifest(f"{cfg_rel}: meta.{mname} (wordvec) needs 'weights_path'")
            track["kind"] = "topk"
            track["scores"] = src(meta.get("file"), meta["weights_path"], f"meta.{mname}")
        elif vtype == "scalar":
            track["kind"] = "scalar"
        else:
            track["kind"] = "discrete"
            if meta.get("dict") is not None:
                track["labels_source"] = {
                    "file": file_of(meta["dict"], f"meta.{mname}.dict"),
                    "format": "dict",
                }
        tracks.append(track)
    out["tracks"] = tracks + [t.model_dump(exclude_none=True) for t in manifest.tracks]
    try:
        return IngestManifest.model_validate(out)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise InvalidManifest(
            f"{cfg_rel}: {'.'.join(str(x) for x in first['loc'])}: {first['msg']}"
        ) from None
