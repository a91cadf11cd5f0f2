"""Where notes are read from and where generated files go."""

from pathlib import Path

import dagster as dg

from fine_tune_dag.core.store.layout import DataLayout


class ProjectPaths(dg.ConfigurableResource):
    """The notes folder is only ever read; everything generated lives under `data_dir` (see `DataLayout`)."""

    notes_dir: str = "data/notes"
    data_dir: str = "data"

    @property
    def layout(self) -> DataLayout:
        return DataLayout(Path(self.notes_dir), Path(self.data_dir))

    @property
    def notes(self) -> Path:
        return self.layout.notes

    @property
    def data(self) -> Path:
        return self.layout.data

    @property
    def models(self) -> Path:
        return self.layout.models

    @property
    def adapters(self) -> Path:
        return self.layout.adapters

    @property
    def reports(self) -> Path:
        return self.layout.reports

    @property
    def exports(self) -> Path:
        return self.layout.exports
