import dagster as dg

from fine_tune_dag.core.store.warehouse import Warehouse
from fine_tune_dag.resources.paths import ProjectPaths


class WarehouseResource(dg.ConfigurableResource):
    """The DuckDB file holding every tabular asset, the LLM cache and the adapter registry; where it lives is
    the data layout's to say."""

    paths: dg.ResourceDependency[ProjectPaths]

    def get(self) -> Warehouse:
        return Warehouse(self.paths.layout.warehouse)
