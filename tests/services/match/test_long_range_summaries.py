"""Long-range summaries through HTTP (SPEC §6): a meta track per bin
(``GET …/tracks/{track}/summary``) and the on-count of given cells per bin
(``GET …/layers/{layer}/on-count/summary``), against the brute-force reference of
``tests/core/reference.py``, aligned with the layer summary's bins; bad input is a 4xx problem."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from hiddenscope_core.build import DatasetWriter
from hiddenscope_core.models import TrackInfo
from hiddenscope_match.app import create_app
from hiddenscope_match.settings import MatchSettings
from hiddenscope_service.testing import RedisServer

from tests.core.reference import ref_bin_edges, ref_on_count_summary, ref_track_summary
from tests.services.match.helpers import VOCAB, MatchStack

PROBLEM = "application/problem+json"
RANGES = [(0, 3000, 7), (3, 250, 100), (10, 13, 50), (999, 2001, 3), (2999, 3000, 5)]


def _nan(xs: list[float | None]) -> list[float]:
    return [np.nan if x is None else x for x in xs]


# ------------------------------------------------------------------------------ tracks


def test_track_summary_of_every_kind_matches_the_reference(
    client: httpx.Client, match_stack: MatchStack
) -> None:
    text = match_stack.data.text
    for a, b, bins in RANGES:
        params = {"start": a, "end": b, "bins": bins}
        edges = ref_bin_edges(a, b, bins)
        # the same bins as the layer summary of the range
        layer = client.get("/v1/datasets/text/layers/cell/summary", params=params).json()
        assert layer["bin_starts"] == edges
        r = client.get("/v1/datasets/text/tracks/pos/summary", params=params)
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["name"], body["kind"], body["start"], body["end"]) == ("pos", "discrete", a, b)
        assert body["bin_starts"] == edges
        assert body["bins"] == len(edges) - 1
        assert body["labels"] == ["N", "V", "D"]
        ref = ref_track_summary("discrete", text["labels"], edges, 3)
        assert body["label_counts"] == ref.label_counts
        assert body["unlabelled"] == ref.unlabelled
        assert body["mins"] is None
        assert body["mode_ids"] is None

        body = client.get("/v1/datasets/text/tracks/score/summary", params=params).json()
        ref = ref_track_summary("scalar", text["scalar"], edges)
        assert body["kind"] == "scalar"
        assert body["counts"] == ref.counts
        np.testing.assert_array_equal(_nan(body["mins"]), _nan(ref.mins))
        np.testing.assert_array_equal(_nan(body["maxs"]), _nan(ref.maxs))
        np.testing.assert_allclose(_nan(body["means"]), _nan(ref.means), rtol=1e-12)
        assert body["label_counts"] is None

        body = client.get("/v1/datasets/text/tracks/pred/summary", params=params).json()
        ref = ref_track_summary("topk", text["topk_ids"], edges)
        assert body["kind"] == "topk"
        assert body["mode_ids"] == ref.mode_ids
        assert body["mode_counts"] == ref.mode_counts
        assert body["mode_texts"] == [VOCAB[i] for i in ref.mode_ids]
    # the NaN at step 7 is missing; a bin of only NaN is null with count 0
    body = client.get(
        "/v1/datasets/text/tracks/score/summary", params={"start": 7, "end": 9, "bins": 2}
    ).json()
    assert body["counts"] == [0, 1]
    assert body["mins"][0] is None
    assert body["means"][1] == pytest.approx(float(text["scalar"][8]))
    # defaults: the whole dataset, 500 bins
    body = client.get("/v1/datasets/text/tracks/pos/summary").json()
    assert (body["start"], body["end"], body["bins"]) == (0, 3000, 500)
    assert sum(map(sum, body["label_counts"])) + sum(body["unlabelled"]) == 3000


def test_track_summary_refuses_bad_input(client: httpx.Client) -> None:
    base = "/v1/datasets/text/tracks/pos/summary"
    cases = [
        (base, {"start": 10, "end": 5}, 422, "not inside"),
        (base, {"end": 3001}, 422, "not inside"),
        (base, {"start": -1}, 422, "start"),
        (base, {"bins": 0}, 422, "bins"),
        (base, {"bins": 10_001}, 422, "bins is at most"),
        (base, {"bins": "x"}, 422, "bins"),
        ("/v1/datasets/text/tracks/nope/summary", {}, 404, "unknown track 'nope'"),
        ("/v1/datasets/gone/tracks/pos/summary", {}, 404, "gone"),
    ]
    for path, params, status, words in cases:
        r = client.get(path, params=params)
        assert r.status_code == status, (path, params, r.text)
        assert r.headers["content-type"].startswith(PROBLEM), (path, params)
        assert words in str(r.json()), (path, params, r.text)


def _small_dataset(root: Path) -> None:
    w = DatasetWriter.create(root, "small", n_steps=1000)
    w.add_layer("l", n_cells=8, dtype="float32", transform="none", thresholds=[0.5]).write(
        np.random.default_rng(0).normal(0, 1, (1000, 8)).astype(np.float32)
    )
    w.add_track(
        TrackInfo(name="many", kind="discrete", labels=[str(i) for i in range(99)]),
        np.arange(1000) % 99,
    )
    w.publish()


def test_summary_caps(tmp_path: Path, redis_server: RedisServer) -> None:
    root = tmp_path / "data"
    _small_dataset(root)
    settings = MatchSettings(
        data_root=root,
        redis_url=redis_server.url,
        max_track_summary_steps=500,
        max_summary_values=1000,
        max_window_values=5000,
    )
    with TestClient(create_app(settings)) as c:
        # tracks: steps over the cap, and bins x label counts over max_window_values
        r = c.get("/v1/datasets/small/tracks/many/summary", params={"bins": 10})
        assert r.status_code == 422
        assert "over the cap of 500 steps" in r.json()["detail"]
        params = {"start": 0, "end": 500, "bins": 100}
        r = c.get("/v1/datasets/small/tracks/many/summary", params=params)
        assert r.status_code == 422
        assert "100 bins x 100 label counts is over the cap of 5000" in r.json()["detail"]
        r = c.get("/v1/datasets/small/tracks/many/summary", params={**params, "bins": 40})
        assert r.status_code == 200, r.text
        # on-counts: values read off the grid; plane words (64 steps each) on it
        base = "/v1/datasets/small/layers/l/on-count/summary"
        r = c.get(base, params={"cells": "0,1", "threshold": 0.25})
        assert r.status_code == 422
        assert "over the cap of 1000" in r.json()["detail"]
        assert "use a threshold of the grid" in r.json()["detail"]
        r = c.get(base, params={"cells": "0,1", "threshold": 0.5})
        assert r.status_code == 200, r.text
        assert r.json()["threshold_on_grid"] is True
        r = c.get(base, params={"cells": "0,1", "threshold": 0.25, "end": 500})
        assert r.status_code == 200, r.text
        assert r.json()["threshold_on_grid"] is False


# ------------------------------------------------------------------------------ on-counts


def test_on_count_summary_matches_the_reference(
    client: httpx.Client, match_stack: MatchStack
) -> None:
    rng = np.random.default_rng(5)
    for name, spec in match_stack.data.specs.items():
        info = client.get(f"/v1/datasets/{name}/info", params={"cell_stats": False}).json()
        grids = {x["info"]["name"]: x["info"]["thresholds"] for x in info["layers"]}
        T = spec.n_steps
        for layer in spec.layers:
            grid = grids[layer.name]
            D = layer.raw.shape[1]
            for theta in [*grid[:2], 0.3, 0.2998046875, -0.0, 0.77]:
                cells = sorted({int(c) for c in rng.integers(0, D, int(rng.integers(1, D + 1)))})
                a = int(rng.integers(0, T - 1))
                b = int(rng.integers(a + 1, T + 1))
                bins = int(rng.choice([1, 7, 300, 10_000]))
                params = {
                    "cells": ",".join(map(str, cells[::-1])),
                    "threshold": theta,
                    "start": a,
                    "end": b,
                    "bins": bins,
                }
                r = client.get(
                    f"/v1/datasets/{name}/layers/{layer.name}/on-count/summary", params=params
                )
                assert r.status_code == 200, r.text
                body = r.json()
                edges = ref_bin_edges(a, b, bins)
                ref = ref_on_count_summary(layer.raw, layer.transform, cells, theta, edges)  # type: ignore[arg-type]
                where = (name, layer.name, theta, a, b, bins)
                assert body["bin_starts"] == edges, where
                assert body["cells"] == cells
                assert body["threshold_on_grid"] == (theta in grid), where
                assert body["mins"] == ref.mins, where
                assert body["maxs"] == ref.maxs, where
                np.testing.assert_allclose(body["means"], ref.means, rtol=1e-12)
    # defaults: the whole dataset, 500 bins, θ = 0.3
    body = client.get(
        "/v1/datasets/text/layers/cell/on-count/summary", params={"cells": "3"}
    ).json()
    assert (body["start"], body["end"], body["bins"], body["threshold"]) == (0, 3000, 500, 0.3)
    assert max(body["maxs"]) <= 1


def test_on_count_summary_refuses_bad_input(client: httpx.Client) -> None:
    base = "/v1/datasets/text/layers/cell/on-count/summary"
    cases = [
        (base, {}, 422, "cells"),
        (base, {"cells": "16"}, 422, "outside layer"),
        (base, {"cells": "1,x"}, 422, "comma-separated"),
        (base, {"cells": "1", "threshold": "nan"}, 422, "finite"),
        (base, {"cells": "1", "threshold": "high"}, 422, "threshold"),
        (base, {"cells": "1", "start": 10, "end": 5}, 422, "not inside"),
        (base, {"cells": "1", "end": 3001}, 422, "not inside"),
        (base, {"cells": "1", "bins": 0}, 422, "bins"),
        (base, {"cells": "1", "bins": 10_001}, 422, "bins is at most"),
        ("/v1/datasets/text/layers/nope/on-count/summary", {"cells": "1"}, 404, "unknown layer"),
        ("/v1/datasets/gone/layers/cell/on-count/summary", {"cells": "1"}, 404, "gone"),
    ]
    for path, params, status, words in cases:
        r = client.get(path, params=params)
        assert r.status_code == status, (path, params, r.text)
        assert r.headers["content-type"].startswith(PROBLEM), (path, params)
        assert words in str(r.json()), (path, params, r.text)
