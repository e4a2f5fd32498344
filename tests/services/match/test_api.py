"""Info, windows (JSON and Arrow), select, phrase search, result pages with context, cancel,
health, and concurrency (20 match jobs and 50 window requests at once)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
from hiddenscope_core.transforms import transform_values

from tests.core.reference import ref_select
from tests.services.helpers import wait_job
from tests.services.match.helpers import VOCAB, MatchStack


def test_healthz(client: httpx.Client) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "redis": True}


def test_info(client: httpx.Client, match_stack: MatchStack) -> None:
    text = match_stack.data.text
    for ref in ("text", text["id"]):
        r = client.get(f"/v1/datasets/{ref}/info")
        assert r.status_code == 200, r.text
        info = r.json()
        assert info["id"] == text["id"]
        assert info["name"] == "text"
        assert info["n_steps"] == 3000
        assert info["n_sequences"] == 4
        assert [s["name"] for s in info["sequences"]] == text["names"]
        assert "next_sequences_token" not in info or info["next_sequences_token"] is None
        (layer,) = info["layers"]
        assert layer["info"]["name"] == "cell"
        assert layer["info"]["n_cells"] == 16
        assert layer["info"]["thresholds"]
        stats = layer["cell_stats"]
        assert stats["cell"] == list(range(16))
        v = transform_values(text["values"], "tanh")
        np.testing.assert_allclose(stats["max"], np.nanmax(v, axis=0), rtol=1e-6)
        assert {t["name"] for t in info["tracks"]} == {"pos", "score", "pred"}
    # sequences paged
    r = client.get("/v1/datasets/text/info", params={"sequences_page_size": 3, "cell_stats": False})
    first = r.json()
    assert [s["index"] for s in first["sequences"]] == [0, 1, 2]
    assert first["layers"][0]["cell_stats"] is None
    r = client.get(
        "/v1/datasets/text/info",
        params={"sequences_page_size": 3, "sequences_page_token": first["next_sequences_token"]},
    )
    assert [s["name"] for s in r.json()["sequences"]] == ["doc-d"]
    assert r.json().get("next_sequences_token") is None


def test_states_window_json_and_arrow(client: httpx.Client, match_stack: MatchStack) -> None:
    text = match_stack.data.text
    v = transform_values(text["values"], "tanh")
    r = client.get("/v1/datasets/text/layers/cell/states", params={"start": 0, "end": 20})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["cells"] == list(range(16))
    assert body["sequence"] == 0
    # each number is the shortest decimal that reads back as the same float32
    got = np.array([[np.nan if x is None else x for x in row] for row in body["values"]])
    np.testing.assert_array_equal(got.astype(np.float32), v[0:20])
    assert body["values"][5][3] is None  # NaN → null
    # cells (duplicates removed, sorted), by sequence name + offset
    r = client.get(
        "/v1/datasets/text/layers/cell/states",
        params={"sequence": "doc-b", "offset": 10, "length": 5, "cells": "7,2,7"},
    )
    body = r.json()
    assert (body["start"], body["end"], body["cells"], body["sequence"]) == (1010, 1015, [2, 7], 1)
    np.testing.assert_array_equal(
        np.array(body["values"], dtype=np.float32), v[1010:1015][:, [2, 7]]
    )
    # Arrow IPC
    r = client.get(
        "/v1/datasets/text/layers/cell/states",
        params={"start": 990, "end": 1500, "cells": "0,15"},
        headers={"Accept": "application/vnd.apache.arrow.stream"},
    )
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/vnd.apache.arrow.stream"
    table = pa.ipc.open_stream(r.content).read_all()
    assert table.column("step").to_pylist() == list(range(990, 1500))
    arr = table.column("values").combine_chunks().flatten().to_numpy().reshape(-1, 2)
    np.testing.assert_array_equal(arr, v[990:1500][:, [0, 15]])
    assert table.schema.metadata[b"cells"] == b"[0, 15]"


def test_tokens_and_tracks(client: httpx.Client, match_stack: MatchStack) -> None:
    text = match_stack.data.text
    r = client.get("/v1/datasets/text/tokens", params={"start": 95, "end": 110})
    assert r.status_code == 200
    assert r.json()["ids"] == text["tokens"][95:110].tolist()
    assert r.json()["texts"] == [VOCAB[i] for i in text["tokens"][95:110]]
    r = client.get("/v1/datasets/text/tokens", params={"sequence": "doc-d"})
    assert (r.json()["start"], r.json()["end"]) == (2500, 3000)
    r = client.get("/v1/datasets/text/tracks/pos", params={"start": 0, "end": 10})
    assert r.json()["label"] == text["labels"][:10].tolist()
    assert r.json()["labels"] == ["N", "V", "D"]
    r = client.get("/v1/datasets/text/tracks/score", params={"start": 0, "end": 10})
    assert r.json()["value"][7] is None
    assert r.json()["value"][0] == float(text["scalar"][0])
    r = client.get("/v1/datasets/text/tracks/pred", params={"start": 3, "end": 5})
    assert r.json()["ids"] == text["topk_ids"][3:5].tolist()


def test_select(client: httpx.Client, match_stack: MatchStack) -> None:
    spec = match_stack.data.specs["rand-0"]
    layer = spec.layer("main")
    lo, _hi = spec.bounds()[1]
    for zl, zr, theta in ((1, 0, 0.3), (0, 2, 0.2998046875), (3, 1, 0.5)):
        body = {"layer": "main", "start": lo, "end": lo + 2, "threshold": theta,
                "left_off": zl, "right_off": zr}  # fmt: skip
        r = client.post("/v1/datasets/rand-0/select", json=body)
        assert r.status_code == 200, r.text
        ref = ref_select(layer.raw, layer.transform, spec.starts, start=lo, end=lo + 2,  # type: ignore[arg-type]
                         threshold=theta, left_off=zl, right_off=zr)  # fmt: skip
        assert r.json()["cells"] == ref.cells
        assert r.json()["counts"] == ref.counts


def test_search(client: httpx.Client, match_stack: MatchStack) -> None:
    tokens = match_stack.data.text["tokens"]

    def brute(ids: list[int]) -> list[int]:
        n = len(ids)
        return [t for t in range(len(tokens) - n + 1) if tokens[t : t + n].tolist() == ids]

    r = client.get("/v1/datasets/text/search", params={"q": "the cat sat on", "limit": 100})
    assert r.status_code == 200, r.text
    want = brute([0, 1, 2, 3])
    assert 100 in want
    assert 1998 in want
    assert r.json()["positions"] == want
    assert r.json()["total"] == len(want)
    r = client.get(
        "/v1/datasets/text/search", params={"q": "the cat sat on", "within_sequence": True}
    )
    assert 1998 not in r.json()["positions"]
    assert 100 in r.json()["positions"]
    for phrase in ("the", "cat sat", "a dog ran", "mat . and the"):
        ids = [VOCAB.index(w) for w in phrase.split()]
        want = brute(ids)
        got: list[int] = []
        params: dict[str, Any] = {"q": phrase, "limit": 50}
        while True:
            page = client.get("/v1/datasets/text/search", params=params).json()
            got += page["positions"]
            if page.get("next_from_step") is None:
                break
            params["from_step"] = page["next_from_step"]
        assert got == want, phrase
    r = client.get("/v1/datasets/text/search", params={"ids": "0 1"})
    assert r.json()["positions"][:100] == brute([0, 1])[:100]
    r = client.get("/v1/datasets/text/search", params={"q": "unicorn cat"})
    assert r.status_code == 200
    assert r.json()["total"] == 0
    assert list((match_stack.data.root / "cache" / match_stack.data.text["id"]).iterdir())


def test_result_pages_with_context(client: httpx.Client, match_stack: MatchStack) -> None:
    text = match_stack.data.text
    body = {"layer": "cell", "cells": [1, 4], "threshold": 0.3, "top_k": 25,
            "context": {"left": 3, "right": 2, "tracks": ["pos"], "counts": True}}  # fmt: skip
    r = client.post("/v1/datasets/text/matches", json=body, params={"wait": 30, "page_size": 10})
    assert r.status_code == 200, r.text
    job = r.json()
    res = job["result"]
    assert res["n_hits"] == 25
    assert len(res["hits"]) == 10
    on = transform_values(text["values"], "tanh")[:, [1, 4]].astype(np.float64) >= 0.3
    starts = [*text["starts"], 3000]
    for h in res["hits"]:
        seq_lo, seq_hi = starts[h["sequence"]], starts[h["sequence"] + 1]
        a, b = max(seq_lo, h["start"] - 3), min(seq_hi, h["end"] + 2)
        ctx = h["context"]
        assert (ctx["start"], ctx["end"]) == (a, b)
        assert ctx["token_ids"] == text["tokens"][a:b].tolist()
        assert ctx["tokens"] == [VOCAB[i] for i in text["tokens"][a:b]]
        assert ctx["tracks"]["pos"]["label"] == text["labels"][a:b].tolist()
        assert ctx["counts"] == on[a:b].sum(axis=1).tolist()
    # the other pages, and other context on request
    seen = [h["start"] for h in res["hits"]]
    token = res["next_page_token"]
    while token:
        page = client.get(
            job["links"]["self"],
            params={
                "page_size": 10,
                "page_token": token,
                "context_left": 1,
                "context_tokens": False,
            },
        ).json()["result"]
        assert all(h["context"]["tokens"] is None for h in page["hits"])
        assert all(h["context"]["start"] == max(0, h["start"] - 1) for h in page["hits"])
        seen += [h["start"] for h in page["hits"]]
        token = page.get("next_page_token")
    full = client.get(job["links"]["self"]).json()["result"]["hits"]
    assert seen == [h["start"] for h in full]
    assert len(seen) == 25
    assert [h["rank"] for h in full] == list(range(25))


def test_match_from_range(client: httpx.Client, match_stack: MatchStack) -> None:
    spec = match_stack.data.specs["rand-1"]
    layer = spec.layer("main")
    for lo, hi in spec.bounds():
        for a in range(lo, hi - 1):
            ref = ref_select(layer.raw, layer.transform, spec.starts, start=a, end=a + 2)  # type: ignore[arg-type]
            if ref.cells:
                break
        else:
            continue
        break
    body = {"layer": "main", "range": [a, a + 2]}
    r = client.post("/v1/datasets/rand-1/matches", json=body, params={"wait": 30})
    assert r.status_code == 200, r.text
    assert r.json()["result"]["query"]["cells"] == ref.cells
    assert r.json()["result"]["selected_from_range"] == [a, a + 2]


def test_idempotency_and_cancel(client: httpx.Client) -> None:
    body = {"layer": "main", "cells": [0, 1], "top_k": 5}
    key = {"Idempotency-Key": "k-" + np.random.default_rng().bytes(6).hex()}
    r1 = client.post("/v1/datasets/rand-0/matches", json=body, headers=key)
    r2 = client.post("/v1/datasets/rand-0/matches", json=body, headers=key)
    assert r1.status_code == r2.status_code == 202
    assert r1.json()["id"] == r2.json()["id"]
    r3 = client.post("/v1/datasets/rand-0/matches", json={**body, "top_k": 6}, headers=key)
    assert r3.status_code == 422
    job = wait_job(client, r1.headers["location"])
    assert job["status"] == "succeeded"
    r = client.post(job["links"]["self"] + "/cancel")
    assert r.status_code == 409  # finished already
    assert r.headers["content-type"].startswith("application/problem+json")


def test_cancel_a_queued_or_running_job(client: httpx.Client, match_stack: MatchStack) -> None:
    # a long queue of tiny shards: cancel lands while shards are still waiting
    body = {"layer": "cell", "cells": [0, 1, 2], "top_k": 5}
    tiny = match_stack.url("tiny")
    r = client.post(f"{tiny}/v1/datasets/text/matches", json=body)
    assert r.status_code == 202
    r = client.post(f"{tiny}{r.headers['location']}/cancel")
    assert r.status_code == 202, r.text
    job = wait_job(client, r.headers["location"])
    assert job["status"] in ("cancelled", "succeeded")  # it may have finished first
    if job["status"] == "cancelled":
        assert job["cancel_requested"]
        assert job["result"] is None


def test_concurrency(match_stack: MatchStack) -> None:
    """20 match jobs and 50 window requests at once: all succeed."""
    url = match_stack.url("small")

    def one_match(i: int) -> dict[str, Any]:
        with httpx.Client(base_url=url, timeout=120) as c:
            body = {"layer": "cell", "cells": [i % 16, (i * 7) % 16], "top_k": 10}
            r = c.post("/v1/datasets/text/matches", json=body)
            assert r.status_code == 202, r.text
            return wait_job(c, r.headers["location"])

    def one_window(i: int) -> int:
        with httpx.Client(base_url=url, timeout=120) as c:
            if i % 3 == 0:
                r = c.get("/v1/datasets/text/tokens", params={"start": i * 10, "end": i * 10 + 500})
            else:
                r = c.get(
                    "/v1/datasets/text/layers/cell/states",
                    params={"start": i * 20, "end": i * 20 + 200},
                )
            return r.status_code

    with ThreadPoolExecutor(70) as pool:
        matches = [pool.submit(one_match, i) for i in range(20)]
        windows = [pool.submit(one_window, i) for i in range(50)]
        assert [f.result() for f in windows] == [200] * 50
        jobs = [f.result() for f in matches]
    assert [j["status"] for j in jobs] == ["succeeded"] * 20, match_stack.logs()
