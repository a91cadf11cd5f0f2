import dagster as dg

from fine_tune_dag.core.store.warehouse import Warehouse


class WarehouseResource(dg.ConfigurableResource):
    """The DuckDB file holding every tabular asset, the LLM cache and the adapter registry."""

    path: str = "data/warehouse.duckdb"

    def get(self) -> Warehouse:
        return Warehouse(self.path)
