"""The published datasets: a thin adapter over the core's :class:`~hiddenscope_core.reader.Catalog`
(list, get, delete) with the two questions only the ingest service asks."""

from __future__ import annotations

import os

from hiddenscope_core.errors import NotFound
from hiddenscope_core.layout import Layout
from hiddenscope_core.models import DatasetManifest
from hiddenscope_core.reader import Catalog


class DatasetCatalog:
    """The published datasets of the data root ``layout`` describes."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.core = Catalog(layout.root)

    def list(self) -> list[DatasetManifest]:
        """Published datasets, sorted by name."""
        return self.core.list()

    def get(self, name_or_id: str) -> DatasetManifest:
        """By name or id. Raises :class:`NotFound` (404)."""
        return self.core.get(name_or_id).manifest

    def delete(self, name_or_id: str) -> None:
        """Unpublish and remove. Raises :class:`NotFound` (404)."""
        self.core.delete(name_or_id)

    def name_taken(self, name: str) -> bool:
        return os.path.lexists(self.layout.name_link(name))

    def find_by_job(self, name: str, job_id: str) -> DatasetManifest | None:
        """The dataset ``name`` if job ``job_id`` published it (an earlier attempt of a re-run)."""
        try:
            m = self.get(name)
        except NotFound:
            return None
        return m if m.provenance.get("job_id") == job_id else None
