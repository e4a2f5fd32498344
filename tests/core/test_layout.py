"""The data root's layout: one object names every path (docs/architecture.md)."""

from __future__ import annotations

from pathlib import Path

from hiddenscope_core.layout import Layout


def test_paths_follow_the_documented_layout(tmp_path: Path) -> None:
    lay = Layout(tmp_path)
    assert lay.dataset("abc") == tmp_path / "datasets" / "abc"
    assert lay.manifest("abc") == tmp_path / "datasets" / "abc" / "manifest.json"
    assert lay.name_link("paren") == tmp_path / "names" / "paren"
    assert lay.name_target("abc") == Path("../datasets/abc")
    assert (lay.name_link("paren").parent / lay.name_target("abc")).resolve() == lay.dataset("abc")
    assert lay.staging("abc") == tmp_path / "staging" / "abc"
    assert lay.build_state("abc") == tmp_path / "staging" / "abc" / "build"
    assert lay.upload("ingest-1") == tmp_path / "uploads" / "ingest-1"
    assert lay.work("ingest-1") == tmp_path / "uploads" / "ingest-1.work"
    assert lay.version_lock("paren") == tmp_path / "versions" / "locks" / "paren.lock"
    assert lay.superseded_marker("abc") == tmp_path / "versions" / "superseded" / "abc"
    assert lay.name_tmp("abc") == tmp_path / "versions" / "tmp" / "abc"
    assert lay.cache_dir == tmp_path / "cache"


def test_trash_names_are_fresh_and_inside_trash(tmp_path: Path) -> None:
    lay = Layout(tmp_path)
    a, b = lay.trash_for(lay.staging("abc")), lay.trash_for(lay.staging("abc"))
    assert a != b
    assert a.parent == b.parent == tmp_path / "trash"
    assert a.name.startswith("abc.")


def test_uploads_and_cache_can_live_elsewhere(tmp_path: Path) -> None:
    lay = Layout(tmp_path / "root", uploads=tmp_path / "fast", cache=tmp_path / "big")
    assert lay.upload("j") == tmp_path / "fast" / "j"
    assert lay.work("j") == tmp_path / "fast" / "j.work"
    assert lay.cache_dir == tmp_path / "big"
    assert lay.dataset("x") == tmp_path / "root" / "datasets" / "x"


def test_ensure_creates_the_rename_targets(tmp_path: Path) -> None:
    lay = Layout.of(tmp_path / "root")
    assert Layout.of(lay) is lay
    lay.ensure()
    lay.ensure()  # idempotent
    for d in (lay.datasets_dir, lay.names_dir, lay.staging_dir):
        assert d.is_dir()


def test_no_core_module_names_a_top_level_directory() -> None:
    """Only ``layout`` spells the data root's directory names: every other core module asks a
    ``Layout`` for its paths."""
    import re

    import hiddenscope_core

    pkg = Path(hiddenscope_core.__file__).parent
    names = "datasets|names|staging|trash|uploads|versions|cache|locks|superseded"
    literal = re.compile(rf"""["']({names})["']""")
    offenders = [
        f"{p.relative_to(pkg)}:{i}"
        for p in sorted(pkg.rglob("*.py"))
        if p.name != "layout.py"
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if literal.search(line)
    ]
    assert offenders == []
