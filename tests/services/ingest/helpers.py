"""Test data in every accepted format, and upload helpers."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import h5py
import httpx
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq
from hiddenscope_core.reader import Catalog, Dataset
from hiddenscope_core.transforms import transform_values
from safetensors.numpy import save as st_save

from tests.services.ingest.conftest import wait_job


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
