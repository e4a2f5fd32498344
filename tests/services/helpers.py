"""What the service test packages share (each package adds its own ``helpers.py``)."""

from __future__ import annotations

import time
from typing import Any

import httpx


def wait_job(client: httpx.Client, location: str, timeout: float = 120) -> dict[str, Any]:
    """Poll a job (``GET location?wait=10``) until it is terminal; returns its body. Fails the
    test if it is still running after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        r = client.get(location, params={"wait": 10})
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        if body["status"] in ("succeeded", "failed", "cancelled"):
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"job {location} still {body['status']} after {timeout}s")
