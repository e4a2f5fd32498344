"""What the ingest tests share: the stack's handle (:class:`IngestStack`, built by the
``ingest_stack`` fixture), test data in every accepted format (an LSTMVis project among them), and
upload and job helpers."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import httpx
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from hiddenscope_core.reader import Catalog, Dataset
from hiddenscope_core.transforms import transform_values
from hiddenscope_service.processes import ManagedProcess
from hiddenscope_service.testing import RedisServer
from safetensors.numpy import save as st_save

from tests.services.helpers import wait_job

MAX_UPLOAD_BYTES = 8 * 2**20
"""The stack's upload and file size limit (``max_upload_bytes``, ``max_file_bytes``)."""


@dataclass
class IngestStack:
    api: ManagedProcess
    worker: ManagedProcess
    data_root: Path
    allowed_root: Path
    env: dict[str, str]
    redis: RedisServer

    @property
    def url(self) -> str:
        assert self.api.url is not None
        return self.api.url

    def logs(self) -> str:
        return f"--- worker ---\n{self.worker.log()}\n--- api ---\n{self.api.log()}"


def states(T: int, D: int, seed: int = 0) -> npt.NDArray[np.float32]:
    return np.random.default_rng(seed).normal(size=(T, D)).astype(np.float32)


def npy_bytes(a: npt.NDArray[Any]) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def npz_bytes(compressed: bool = True, **arrays: npt.NDArray[Any]) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)  # type: ignore[operator]
    return buf.getvalue()


def safetensors_bytes(**arrays: npt.NDArray[Any]) -> bytes:
    return st_save(dict(arrays))


def h5_bytes(tmp: Path, **datasets: npt.NDArray[Any]) -> bytes:
    path = tmp / f"h5-{len(list(tmp.iterdir()))}.h5"
    with h5py.File(path, "w") as f:
        for key, a in datasets.items():
            f.create_dataset(key, data=a)
    return path.read_bytes()


def parquet_bytes(**columns: npt.NDArray[Any]) -> bytes:
    table = pa.table({k: _arrow_col(v) for k, v in columns.items()})
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=100)
    return buf.getvalue()


def arrow_bytes(**columns: npt.NDArray[Any]) -> bytes:
    table = pa.table({k: _arrow_col(v) for k, v in columns.items()})
    sink = io.BytesIO()
    with pa.ipc.new_file(sink, table.schema) as w:
        for batch in table.to_batches(max_chunksize=77):
            w.write_batch(batch)
    return sink.getvalue()


def _arrow_col(a: npt.NDArray[Any]) -> pa.Array:
    if a.ndim == 1:
        return pa.array(a)
    return pa.FixedSizeListArray.from_arrays(pa.array(a.reshape(-1)), a.shape[1])


def tar_gz_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def zip_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def post_upload(
    client: httpx.Client,
    manifest: dict[str, Any] | str,
    files: dict[str, bytes],
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    text = manifest if isinstance(manifest, str) else json.dumps(manifest)
    return client.post(
        "/v1/datasets",
        data={"manifest": text},
        files=[("files", (name, data)) for name, data in files.items()],
        headers=headers,
    )


def ingest_ok(
    client: httpx.Client, manifest: dict[str, Any] | str, files: dict[str, bytes]
) -> dict[str, Any]:
    r = post_upload(client, manifest, files)
    assert r.status_code == 202, r.text
    assert r.headers["location"].startswith("/v1/jobs/ingest-")
    job = wait_job(client, r.headers["location"])
    assert job["status"] == "succeeded", job
    return job


def ingest_fails(
    client: httpx.Client, manifest: dict[str, Any] | str, files: dict[str, bytes]
) -> dict[str, Any]:
    """The problem body, whether the upload was refused at once or the job failed."""
    r = post_upload(client, manifest, files)
    if r.status_code != 202:
        assert r.headers["content-type"].startswith("application/problem+json"), r.text
        return dict(r.json())
    job = wait_job(client, r.headers["location"])
    assert job["status"] == "failed", job
    return dict(job["error"])


def open_published(data_root: Path, name: str) -> Dataset:
    return Catalog(data_root).get(name)


def assert_layer(ds: Dataset, layer: str, raw: npt.NDArray[Any], transform: str = "none") -> None:
    got = ds.window(layer, 0, ds.n_steps)
    want = transform_values(raw.astype(np.float32), transform)  # type: ignore[arg-type]
    np.testing.assert_array_equal(got, want)


def lstmvis_project(
    T: int = 400, D: int = 6
) -> tuple[dict[str, bytes], dict[str, npt.NDArray[Any]]]:
    """A small LSTMVis project in the original layout (ids from 1 in the .dict, as the original)."""
    rng = np.random.default_rng(5)
    arrays = {
        "states1": states(T, D, seed=30) * 2,
        "output2": np.tanh(states(T, D, seed=31)).astype(np.float32),
        "word_ids": rng.integers(1, 8, size=T).astype(np.int64),
        "pos": rng.integers(1, 4, size=T).astype(np.int64),
        "loss": rng.random(T).astype(np.float32),
        "preds": rng.integers(1, 8, size=(T, 5)).astype(np.int64),
        "scores": rng.random((T, 5)).astype(np.float32),
        "freq": rng.random(8).astype(np.float32),  # per-vocabulary table (index: word_sequence)
    }

    def h5(**ds: npt.NDArray[Any]) -> bytes:
        buf = io.BytesIO()
        with h5py.File(buf, "w") as f:
            for k, v in ds.items():
                f.create_dataset(k, data=v)
        return buf.getvalue()

    words = ["<unk>", "the", "cat", "sat", "on", "mat", " ", "."]
    config = {
        "name": "children books",
        "description": "a tiny LSTMVis project",
        "files": {
            "states": "states.hdf5", "train": "train.hdf5", "words": "train.dict",
            "pos": "pos.h5", "pos_dict": "pos.dict", "topk": "topk.h5", "loss": "loss.h5",
        },
        "word_sequence": {"file": "train", "path": "word_ids", "dict_file": "words"},
        "states": {
            "file": "states",
            "types": [
                {"type": "state", "layer": 1, "path": "states1"},
                {"type": "output", "layer": 2, "path": "output2", "transform": "none"},
            ],
        },
        "meta": {
            "part_of_speech": {"file": "pos", "path": "pos", "dict": "pos_dict",
                               "vis": {"type": "discrete", "range": "dict"}},
            "loss": {"file": "loss", "path": "loss", "vis": {"type": "scalar", "range": [0, 1]}},
            "predictions": {"file": "topk", "path": "preds", "weights_path": "scores",
                            "dict": "words", "type": "wordvec", "vis": {"type": "wordvec"}},
            "frequency": {"file": "loss", "path": "freq", "index": "word_sequence",
                          "vis": {"type": "scalar"}},
        },
        "etc": {"regex_search": False},
    }  # fmt: skip
    dict_lines = "".join(f"{w} {i}\n" for i, w in enumerate(words) if i > 0)
    files = {
        "lstm.yml": yaml.safe_dump(config).encode(),
        "states.hdf5": h5(states1=arrays["states1"], output2=arrays["output2"]),
        "train.hdf5": h5(word_ids=arrays["word_ids"]),
        "train.dict": dict_lines.encode(),
        "pos.h5": h5(pos=arrays["pos"]),
        "pos.dict": b"NN 1\nVB 2\nDT 3\n",
        "topk.h5": h5(preds=arrays["preds"], scores=arrays["scores"]),
        "loss.h5": h5(loss=arrays["loss"], freq=arrays["freq"]),
    }
    return files, arrays
