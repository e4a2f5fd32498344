"""Datasets: the catalog (layers, sizes, tracks), uploads (manifest + files, with progress) and
the ingest jobs this session started or follows."""

from __future__ import annotations

from datetime import datetime

import streamlit as st
from hiddenscope_client import ApiError, IngestJob, NotFound, UploadFile, job_failure
from hiddenscope_ui import api
from hiddenscope_ui.common import PAGES, current_view, set_view, show_api_error, show_url_problems
from hiddenscope_ui.settings import get_settings

EXAMPLE_MANIFEST = """\
name: my-lstm
description: 2-layer LSTM on my corpus
layers:
  - {name: cell_l1, source: {file: states.npy}, transform: tanh}
tokens: {source: {file: tokens.txt}}
"""


def _size(n: int | float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n}"


def _catalog() -> None:
    url = api.base_url()
    try:
        items = api.list_datasets(url)
    except ApiError as exc:
        show_api_error(exc, where="listing datasets")
        return
    if not items:
        st.info("No datasets yet: upload one below.")
        return
    rows = []
    for d in items:
        layers = ", ".join(f"{x.name} ({x.n_cells}, {x.transform})" for x in d.layers)
        tracks = ", ".join(f"{t.name} ({t.kind})" for t in d.tracks)
        rows.append(
            {
                "name": d.name,
                "steps": d.n_steps,
                "sequences": d.n_sequences,
                "layers": layers,
                "tracks": tracks or "—",
                "size": _size(sum(d.sizes.values())),
                "created": d.created_at[:19].replace("T", " "),
                "id": d.id,
            }
        )
    st.dataframe(rows, hide_index=True, width="stretch")
    names = [d.name for d in items]
    c1, c2, c3 = st.columns([3, 1, 1], vertical_alignment="bottom")
    chosen = c1.selectbox("Dataset", names, key="catalog-pick")
    if c2.button("Open in select view", type="primary"):
        set_view(current_view().with_dataset(chosen))
        if "select" in PAGES:
            st.switch_page(PAGES["select"])
    if c3.button("Delete…"):
        st.session_state["confirm-delete"] = chosen
    victim = st.session_state.get("confirm-delete")
    if victim:
        st.warning(f"Delete **{victim}**? This removes its files; open views of it will say so.")
        d1, d2, _ = st.columns([1, 1, 6])
        if d1.button("Delete", type="primary", key="really-delete"):
            st.session_state.pop("confirm-delete", None)
            try:
                api.client().delete_dataset(victim)
            except ApiError as exc:
                show_api_error(exc, where=f"deleting {victim}")
                return
            api.list_datasets.clear()
            api.dataset.clear()
            if current_view().dataset == victim:
                set_view(current_view().with_dataset(None))
            st.success(f"deleted {victim}")
            st.rerun()
        if d2.button("Keep", key="keep"):
            st.session_state.pop("confirm-delete", None)
            st.rerun()


def _upload() -> None:
    with st.expander("Upload a dataset", expanded=False):
        st.caption(
            "A manifest (YAML or JSON, see docs/ingest.md) and the files it names; an original "
            "LSTMVis project can be sent as lstm.yml plus its files, or as an archive."
        )
        mfile = st.file_uploader(
            "Manifest file", type=["yml", "yaml", "json"], key="up-manifest-file"
        )
        mtext = st.text_area(
            "…or the manifest text", EXAMPLE_MANIFEST, height=140, key="up-manifest"
        )
        files = st.file_uploader("Files", accept_multiple_files=True, key="up-files")
        if st.button("Upload", type="primary", disabled=not (files or mfile or mtext.strip())):
            manifest = mfile.getvalue().decode("utf-8", "replace") if mfile else mtext
            bar = st.progress(0.0, text="uploading…")

            def progress(sent: int, total: int) -> None:
                bar.progress(
                    min(1.0, sent / max(1, total)),
                    text=f"uploading {_size(sent)} of {_size(total)}",
                )

            try:
                job = api.client().upload_dataset(
                    manifest,
                    [UploadFile(f.name, f.size, f) for f in (files or [])],
                    on_progress=progress,
                )
            except ApiError as exc:
                bar.empty()
                show_api_error(exc, where="upload refused")
                return
            bar.progress(1.0, text="uploaded; converting…")
            _follow(job.id)
            st.rerun()


def _follow(job_id: str) -> None:
    jobs: list[str] = st.session_state.setdefault("ingest_jobs", [])
    if job_id not in jobs:
        jobs.insert(0, job_id)


@st.fragment(run_every=get_settings().poll_seconds * 2)
def _jobs() -> None:
    with st.form("follow", border=False):
        c1, c2 = st.columns([4, 1], vertical_alignment="bottom")
        jid = c1.text_input("Follow an ingest job by id", key="follow-id")
        if c2.form_submit_button("Follow") and jid.strip():
            _follow(jid.strip())
    jobs: list[str] = st.session_state.get("ingest_jobs", [])
    if not jobs:
        st.caption("No ingest jobs in this session.")
        return
    newly_done = False
    for jid in jobs[:20]:
        try:
            job = api.client().job(jid)
        except NotFound:
            st.caption(f"job `{jid}`: unknown (expired or mistyped)")
            continue
        except ApiError as exc:
            st.caption(f"job `{jid}`: {exc.message}")
            continue
        status = job.status
        done, total = job.progress.done, job.progress.total
        box = st.container(border=True)
        box.markdown(f"**{job.kind}** `{jid}` — **{status}**  ·  attempts {job.attempts}")
        if status in ("queued", "running"):
            box.progress(done / total if total else 0.0, text=f"{done}/{total or '?'}")
        elif status == "succeeded":
            seen: set[str] = st.session_state.setdefault("ingest_seen_done", set())
            if jid not in seen:
                seen.add(jid)
                newly_done = True
            ds = (job.result or {}).get("dataset") or {}
            took = _took(job)
            box.success(
                f"published **{ds.get('name', '?')}** ({int(ds.get('n_steps', 0)):,} steps){took}"
            )
        else:
            box.error(job_failure(job).message)
    if newly_done:
        api.list_datasets.clear()
        st.rerun(scope="app")


def _took(job: IngestJob) -> str:
    try:
        a = datetime.fromisoformat(str(job.started_at))
        b = datetime.fromisoformat(str(job.finished_at))
    except ValueError:
        return ""
    return f" in {(b - a).total_seconds():.1f} s"


# parameters that only make sense in a view: a link with them at the root (e.g. the original
# tool's `lstmvis.html?project=..&source=..&pos=..`) opens the select view
VIEW_PARAMS = frozenset({"project", "source", "layer", "pos", "range", "wordBrush", "sc", "cells"})


def render() -> None:
    if VIEW_PARAMS & set(st.query_params.keys()) and "select" in PAGES:
        current_view()
        st.switch_page(PAGES["select"])
    current_view()
    show_url_problems()
    st.title("Datasets")
    st.caption(f"API: {api.base_url()}")
    _catalog()
    _upload()
    st.subheader("Ingest jobs")
    _jobs()


render()
