"""Load the demo dataset (``deploy/demo/data``: the paper's §6.1 parenthesis language) through
the gateway's ingest API (with :mod:`hiddenscope_client`), unless a dataset of that name is
already published."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import yaml
from hiddenscope_client import HiddenScopeClient, IngestJob, NotFound, UploadFile

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
    client: HiddenScopeClient, directory: Path, *, timeout: float = 300.0
) -> IngestJob:
    """Upload ``directory/manifest.yml`` and the files it names; wait for the ingest job.

    Returns the finished job. Raises the client's :class:`~hiddenscope_client.ApiError` if the
    upload is refused, :class:`~hiddenscope_client.JobFailed` if the job fails and
    :class:`~hiddenscope_client.ApiUnavailable` if it is still running after ``timeout`` s.
    """
    manifest_text = (directory / "manifest.yml").read_text()
    names = manifest_files(yaml.safe_load(manifest_text))
    with contextlib.ExitStack() as stack:
        files = [
            UploadFile(name, (directory / name).stat().st_size,
                       stack.enter_context(open(directory / name, "rb")))
            for name in names
        ]  # fmt: skip
        job = client.upload_dataset(manifest_text, files, timeout=timeout)
    return client.wait_job(job.id, timeout=timeout, poll=20)


def ensure_demo(base_url: str, directory: Path | None = None) -> tuple[str, bool]:
    """Make sure the demo dataset is published; returns ``(name, uploaded_now)``."""
    directory = directory or default_demo_dir()
    name = str(yaml.safe_load((directory / "manifest.yml").read_text())["name"])
    with HiddenScopeClient(base_url, timeout=60) as client:
        try:
            client.manifest(name)
            return name, False
        except NotFound:
            pass
        upload_dataset(client, directory)
    return name, True
