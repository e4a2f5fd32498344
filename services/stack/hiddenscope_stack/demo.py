"""Load the demo dataset (``deploy/demo/data``: the paper's §6.1 parenthesis language) through
the gateway's ingest API, unless a dataset of that name is already published."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from hiddenscope_stack.runner import repo_root


def default_demo_dir() -> Path:
    return repo_root() / "deploy" / "demo" / "data"


def manifest_files(manifest: dict[str, Any]) -> list[str]:
    """The file names a (non-archive) ingest manifest refers to."""
    files: list[str] = []

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "file" and isinstance(value, str):
                    files.append(value)
                else:
                    visit(value)
        elif isinstance(node, list):
            for x in node:
                visit(x)

    visit(manifest)
    return sorted(set(files))


def upload_dataset(
    client: httpx.Client, directory: Path, *, timeout: float = 300.0
) -> dict[str, Any]:
    """Upload ``directory/manifest.yml`` and the files it names; wait for the ingest job.

    Returns the finished job resource. Raises ``RuntimeError`` if the job fails or times out,
    ``httpx.HTTPStatusError`` if the upload is refused.
    """
    manifest_text = (directory / "manifest.yml").read_text()
    names = manifest_files(yaml.safe_load(manifest_text))
    with contextlib.ExitStack() as stack:
        parts: list[tuple[str, Any]] = [("manifest", (None, manifest_text))]
        for name in names:
            fh = stack.enter_context(open(directory / name, "rb"))
            parts.append(("files", (name, fh, "application/octet-stream")))
        r = client.post("/v1/datasets", files=parts, timeout=timeout)
    r.raise_for_status()
    location = r.headers["location"]
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(location, params={"wait": 20}, timeout=40).raise_for_status().json()
        if job["status"] == "succeeded":
            return dict(job)
        if job["status"] in ("failed", "cancelled"):
            raise RuntimeError(f"ingest job {job['id']} {job['status']}: {job.get('error')}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"ingest job {job['id']} still {job['status']} after {timeout} s")


def ensure_demo(base_url: str, directory: Path | None = None) -> tuple[str, bool]:
    """Make sure the demo dataset is published; returns ``(name, uploaded_now)``."""
    directory = directory or default_demo_dir()
    name = str(yaml.safe_load((directory / "manifest.yml").read_text())["name"])
    with httpx.Client(base_url=base_url, timeout=60) as client:
        r = client.get(f"/v1/datasets/{name}")
        if r.status_code == 200:
            return name, False
        if r.status_code != 404:
            r.raise_for_status()
        upload_dataset(client, directory)
    return name, True
