"""The pre-202 check runs in a resource-limited child: running out of memory or time there is a
422 for the upload, and the API process is unaffected."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hiddenscope_ingest.loaders.base import Limits
from hiddenscope_ingest.sandbox import check_in_sandbox
from hiddenscope_service.problems import ProblemError


def _job(root: Path, **extra: object) -> dict[str, object]:
    manifest = {
        "name": "sandboxed",
        "layers": [{"name": "l", "source": {"file": "x.npy"}}],
        "tokens": {"source": {"file": "tok.txt"}},
    }
    return {
        "manifest": manifest,
        "root": str(root),
        "limits": dataclasses.asdict(Limits()),
        "scratch": str(root / "scratch"),
        "deep_text": True,
        "memory_bytes": 2**30,
        "cpu_seconds": 30,
        **extra,
    }


@pytest.fixture
def upload(tmp_path: Path) -> Path:
    import numpy as np

    n = 300_000
    np.save(tmp_path / "x.npy", np.zeros((n, 1), np.float32))
    # every token distinct: the vocabulary grows with the file (tens of MB of Python objects)
    (tmp_path / "tok.txt").write_text("".join(f"token-{i:09d}\n" for i in range(n)))
    return tmp_path


def test_check_passes_within_limits(upload: Path) -> None:
    check_in_sandbox(_job(upload), timeout=120)
    assert not (upload / "scratch").exists()


def test_out_of_memory_is_422(upload: Path) -> None:
    with pytest.raises(ProblemError) as err:
        check_in_sandbox(_job(upload, memory_bytes=8 * 2**20), timeout=120)
    assert err.value.status == 422
    assert "limits" in err.value.detail
    assert not (upload / "scratch").exists()


def test_out_of_time_is_422(upload: Path) -> None:
    with pytest.raises(ProblemError) as err:
        check_in_sandbox(_job(upload), timeout=0.01)
    assert err.value.status == 422
