"""Where notes are read from and where generated files go."""

from pathlib import Path

import dagster as dg


class ProjectPaths(dg.ConfigurableResource):
    """The notes folder is only ever read; everything generated lives under `data_dir`."""

    notes_dir: str = "data/notes"
    data_dir: str = "data"

    @property
    def notes(self) -> Path:
        return Path(self.notes_dir)

    @property
    def data(self) -> Path:
        return Path(self.data_dir)

    @property
    def models(self) -> Path:
        return Path(self.data_dir) / "models"

    @property
    def adapters(self) -> Path:
        return Path(self.data_dir) / "adapters"

    @property
    def reports(self) -> Path:
        return Path(self.data_dir) / "reports"

    @property
    def exports(self) -> Path:
        return Path(self.data_dir) / "exports"
