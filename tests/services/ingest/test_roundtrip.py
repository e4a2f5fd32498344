"""Round trips per format over real HTTP, a real Celery worker and the core reader: the values,
tokens and tracks read back are exactly those uploaded."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
from safetensors.numpy import save as st_save

from tests.services.helpers import wait_job
from tests.services.ingest.helpers import (
    IngestStack,
    arrow_bytes,
    assert_layer,
    h5_bytes,
    ingest_ok,
    lstmvis_project,
    npy_bytes,
    npz_bytes,
    open_published,
    parquet_bytes,
    states,
    tar_gz_bytes,
    zip_bytes,
)


def test_npy_with_tokens_vocab_sequences_and_tracks(
    client: httpx.Client, ingest_stack: IngestStack
) -> None:
    T, D = 700, 12
    x = states(T, D, seed=1)
    h = states(T, 5, seed=2).astype(np.float16)
    rng = np.random.default_rng(3)
    tok = rng.integers(0, 20, size=T).astype(np.int64)
    pos = rng.integers(0, 3, size=T).astype(np.int32)
    loss = rng.random(T).astype(np.float32)
    preds = rng.integers(0, 20, size=(T, 4)).astype(np.int32)
    scores = rng.random((T, 4)).astype(np.float32)
    manifest = {
        "name": "rt-npy",
        "description": "npy round trip",
        "layers": [
            {"name": "cell_l1", "source": {"file": "c.npy"}, "transform": "tanh", "kind": "cell"},
            {"name": "hidden_l1", "source": {"file": "h.npy"}, "dtype": "float16"},
        ],
        "tokens": {"source": {"file": "tok.npy"}},
        "vocab": {"texts": [f"w{i}" for i in range(20)]},
        "sequences": {"starts": [0, 100, 350], "names": ["a", "b", "c"]},
        "tracks": [
            {"name": "pos", "kind": "discrete", "source": {"file": "pos.npy"},
             "labels": ["NN", "VB", "DT"]},
            {"name": "loss", "kind": "scalar", "source": {"file": "loss.npy"}},
            {"name": "top", "kind": "topk", "source": {"file": "preds.npy"},
             "scores": {"file": "scores.npy"}},
        ],
    }  # fmt: skip
    files = {
        "c.npy": npy_bytes(x),
        "h.npy": npy_bytes(h),
        "tok.npy": npy_bytes(tok),
        "pos.npy": npy_bytes(pos),
        "loss.npy": npy_bytes(loss),
        "preds.npy": npy_bytes(preds),
        "scores.npy": npy_bytes(scores),
    }
    job = ingest_ok(client, manifest, files)
    assert job["progress"]["done"] == job["progress"]["total"] > 0
    assert job["attempts"] == 1
    ds = open_published(ingest_stack.data_root, "rt-npy")
    assert ds.n_steps == T
    assert_layer(ds, "cell_l1", x, "tanh")
    np.testing.assert_array_equal(ds.window("hidden_l1", 0, T), h.astype(np.float32))
    assert ds.layer("cell_l1").transform == "tanh"
    assert ds.layer("hidden_l1").dtype == "float16"
    np.testing.assert_array_equal(ds.tokens(0, T), tok)
    assert ds.vocab() == [f"w{i}" for i in range(20)]
    assert list(ds.sequence_starts()) == [0, 100, 350]
    assert list(ds.sequence_names()) == ["a", "b", "c"]
    np.testing.assert_array_equal(ds.track("pos", 0, T)["label"], pos)
    np.testing.assert_array_equal(ds.track("loss", 0, T)["value"], loss)
    top = ds.track("top", 0, T)
    np.testing.assert_array_equal(top["ids"], preds)
    np.testing.assert_array_equal(top["scores"], scores)
    assert ds.manifest.provenance["job_id"] == job["id"]

    # the catalog over HTTP
    listed = client.get("/v1/datasets").json()["datasets"]
    assert "rt-npy" in [d["name"] for d in listed]
    by_name = client.get("/v1/datasets/rt-npy").json()
    by_id = client.get(f"/v1/datasets/{by_name['id']}").json()
    assert by_name == by_id
    assert job["result"]["dataset"]["id"] == by_name["id"]
    assert job["links"]["dataset"] == f"/v1/datasets/{by_name['id']}"


def test_npz_safetensors_hdf5_parquet_arrow(
    client: httpx.Client, ingest_stack: IngestStack, tmp_path: Path
) -> None:
    T = 333
    a, b, c, d, e = (states(T, n, seed=10 + n) for n in (3, 4, 5, 6, 7))
    bf = states(T, 3, seed=99)
    bf_bits = (bf.view(np.uint32) >> 16).astype(np.uint16)  # exact bfloat16 values
    bf_exact = (bf_bits.astype(np.uint32) << 16).view(np.float32)
    st = st_save({"layer.a": a, "other": np.zeros(3, np.float32)})
    # a BF16 tensor written by hand (numpy has no bfloat16)
    header = {"bf": {"dtype": "BF16", "shape": [T, 3], "data_offsets": [0, bf_bits.nbytes]}}
    hjson = json.dumps(header).encode()
    st_bf = len(hjson).to_bytes(8, "little") + hjson + bf_bits.tobytes()
    manifest = {
        "name": "rt-many",
        "layers": [
            {"name": "npz", "source": {"file": "s.npz", "key": "cells"}},
            {"name": "npz-stored", "source": {"file": "plain.npz", "key": "x"}},
            {"name": "st", "source": {"file": "s.safetensors", "key": "layer.a"}},
            {"name": "bf16", "source": {"file": "bf.safetensors"}},
            {"name": "h5", "source": {"file": "s.h5", "key": "/group/states1"}},
            {"name": "pq", "source": {"file": "s.parquet", "key": "v"}},
            {"name": "arrow", "source": {"file": "s.arrow", "key": "v"}},
        ],
    }
    files = {
        "s.npz": npz_bytes(cells=b, junk=np.zeros(4)),
        "plain.npz": npz_bytes(compressed=False, x=a),
        "s.safetensors": st,
        "bf.safetensors": st_bf,
        "s.h5": h5_bytes(tmp_path, **{"group/states1": c}),
        "s.parquet": parquet_bytes(v=d),
        "s.arrow": arrow_bytes(v=e),
    }
    ingest_ok(client, manifest, files)
    ds = open_published(ingest_stack.data_root, "rt-many")
    assert_layer(ds, "npz", b)
    assert_layer(ds, "npz-stored", a)
    assert_layer(ds, "st", a)
    assert_layer(ds, "bf16", bf_exact)
    assert_layer(ds, "h5", c)
    assert_layer(ds, "pq", d)
    assert_layer(ds, "arrow", e)


def test_ragged_layers_token_text_and_conll(
    client: httpx.Client, ingest_stack: IngestStack
) -> None:
    lengths = [3, 5, 2]
    N, L, D = 3, 5, 4
    padded = np.full((N, L, D), 99.0, np.float32)
    parts = []
    for i, n in enumerate(lengths):
        part = states(n, D, seed=20 + i)
        padded[i, :n] = part
        parts.append(part)
    flat = np.concatenate(parts)
    T = flat.shape[0]
    conll = (
        "-DOCSTART- -X- O O\n\n"
        "The DT B-NP O\ncat NN I-NP O\nsat VBD B-VP O\n\n"
        "A DT B-NP O\ndog NN I-NP O\nran VBD B-VP O\nfast RB B-ADVP O\nhome NN B-NP B-LOC\n\n"
        "# comment\nOK UH O O\nbye UH O O\n"
    )
    manifest = {
        "name": "rt-conll",
        "layers": [{"name": "cell_l1", "source": {"file": "padded.npy"}}],
        "sequences": {"lengths": lengths},
        "conll": {"file": "train.conll", "word_column": 0, "columns": {"pos": 1, "ner": 3}},
    }
    ingest_ok(client, manifest, {"padded.npy": npy_bytes(padded), "train.conll": conll.encode()})
    ds = open_published(ingest_stack.data_root, "rt-conll")
    assert ds.n_steps == T == 10
    assert_layer(ds, "cell_l1", flat)
    assert list(ds.sequence_starts()) == [0, 3, 8]
    vocab = ds.vocab()
    words = [vocab[i] for i in ds.tokens(0, T)]
    assert words == ["The", "cat", "sat", "A", "dog", "ran", "fast", "home", "OK", "bye"]
    pos = ds.track("pos", 0, T)["label"]
    labels = ds.manifest.track("pos").labels
    assert labels is not None
    assert [labels[i] for i in pos] == [
        "DT",
        "NN",
        "VBD",
        "DT",
        "NN",
        "VBD",
        "RB",
        "NN",
        "UH",
        "UH",
    ]

    # plain token file: one per line, blank line = new sequence, vocabulary given as a file
    x = states(5, 2, seed=7)
    manifest2 = {
        "name": "rt-tokens",
        "layers": [{"name": "l", "source": {"file": "x.npy"}}],
        "tokens": {"source": {"file": "tokens.txt"}},
        "vocab": {"source": {"file": "vocab.txt"}},
    }
    files2 = {
        "x.npy": npy_bytes(x),
        "tokens.txt": b"b\na\n\nc\nb\na\n",
        "vocab.txt": b"a\nb\nc\n",
    }
    ingest_ok(client, manifest2, files2)
    ds2 = open_published(ingest_stack.data_root, "rt-tokens")
    assert list(ds2.tokens(0, 5)) == [1, 0, 2, 1, 0]
    assert ds2.vocab() == ["a", "b", "c"]
    assert list(ds2.sequence_starts()) == [0, 2]


def _check_lstmvis(ds, arrays: dict[str, np.ndarray]) -> None:  # type: ignore[no-untyped-def]
    T = ds.n_steps
    assert {x.name for x in ds.manifest.layers} == {"cell_l1", "hidden_l2"}
    assert ds.layer("cell_l1").transform == "tanh"
    assert ds.layer("cell_l1").kind == "cell"
    assert ds.layer("hidden_l2").transform == "none"
    assert_layer(ds, "cell_l1", arrays["states1"], "tanh")
    assert_layer(ds, "hidden_l2", arrays["output2"], "none")
    np.testing.assert_array_equal(ds.tokens(0, T), arrays["word_ids"])
    vocab = ds.vocab()
    assert vocab[1:] == ["the", "cat", "sat", "on", "mat", " ", "."]
    pos = ds.track("part_of_speech", 0, T)["label"]
    np.testing.assert_array_equal(pos, arrays["pos"])
    assert ds.manifest.track("part_of_speech").labels[1:] == ["NN", "VB", "DT"]
    np.testing.assert_array_equal(ds.track("loss", 0, T)["value"], arrays["loss"])
    top = ds.track("predictions", 0, T)
    np.testing.assert_array_equal(top["ids"], arrays["preds"])
    np.testing.assert_array_equal(top["scores"], arrays["scores"])
    freq = ds.track("frequency", 0, T)["value"]
    np.testing.assert_array_equal(freq, arrays["freq"][arrays["word_ids"]])


def test_lstmvis_project_as_files_and_as_archive(
    client: httpx.Client, ingest_stack: IngestStack
) -> None:
    files, arrays = lstmvis_project()
    ingest_ok(client, {"name": "lv-files", "lstmvis": {}}, files)
    _check_lstmvis(open_published(ingest_stack.data_root, "lv-files"), arrays)

    archive = tar_gz_bytes({f"proj/{k}": v for k, v in files.items()})
    ingest_ok(
        client,
        "name: lv-tgz\narchive: proj.tar.gz\nlstmvis: {dir: proj}\n",  # a YAML manifest
        {"proj.tar.gz": archive},
    )
    ds = open_published(ingest_stack.data_root, "lv-tgz")
    _check_lstmvis(ds, arrays)
    assert ds.manifest.description == "a tiny LSTMVis project"

    archive_zip = zip_bytes(files)
    ingest_ok(client, {"name": "lv-zip", "archive": "p.zip", "lstmvis": {}}, {"p.zip": archive_zip})
    _check_lstmvis(open_published(ingest_stack.data_root, "lv-zip"), arrays)


def test_server_side_path(client: httpx.Client, ingest_stack: IngestStack) -> None:
    files, arrays = lstmvis_project(T=120)
    proj = ingest_stack.allowed_root / "lv-proj"
    proj.mkdir()
    for name, data in files.items():
        (proj / name).write_bytes(data)
    body = {"manifest": {"name": "lv-path", "lstmvis": {}}, "path": str(proj)}
    r = client.post("/v1/datasets", json=body)
    assert r.status_code == 202, r.text
    job = wait_job(client, r.headers["location"])
    assert job["status"] == "succeeded", job
    _check_lstmvis(open_published(ingest_stack.data_root, "lv-path"), arrays)
    assert (proj / "lstm.yml").exists()  # server-side inputs are never removed


def test_delete_dataset(client: httpx.Client, ingest_stack: IngestStack) -> None:
    ingest_ok(
        client,
        {"name": "to-delete", "layers": [{"name": "l", "source": {"file": "x.npy"}}]},
        {"x.npy": npy_bytes(states(10, 2))},
    )
    ds_id = client.get("/v1/datasets/to-delete").json()["id"]
    assert client.delete("/v1/datasets/to-delete").status_code == 204
    for ref in ("to-delete", ds_id):
        r = client.get(f"/v1/datasets/{ref}")
        assert r.status_code == 404
        assert r.headers["content-type"] == "application/problem+json"
    assert client.delete(f"/v1/datasets/{ds_id}").status_code == 404
    assert not (ingest_stack.data_root / "datasets" / ds_id).exists()
