import dagster as dg
from pydantic import Field

from fine_tune_dag.core.store.warehouse import Warehouse
from fine_tune_dag.resources.paths import ProjectPaths


class WarehouseResource(dg.ConfigurableResource):
    """The tables of every asset, the LLM cache and the adapter registry: by default a DuckDB file where the
    data layout says; with `url`, a PostgreSQL database that many processes and machines write at once."""

    paths: dg.ResourceDependency[ProjectPaths]
    url: str = Field(
        default="",
        description="postgresql://user@host:5432/database (EnvVar('FINE_TUNE_DAG_WAREHOUSE_URL'); the password from "
        "PGPASSWORD); empty: the DuckDB file in the data folder",
    )

    def get(self) -> Warehouse:
        return Warehouse(self.url or self.paths.layout.warehouse)
