"""retrieval_index: search over the passages of every note that trains, rebuilt as notes change."""

import dagster as dg

from fine_tune_dag.assets.chunking import passages
from fine_tune_dag.assets.common import as_metadata, reports_peak_memory, stage_failures
from fine_tune_dag.assets.config import RetrievalConfig
from fine_tune_dag.assets.partitions import notes_partitions
from fine_tune_dag.core.common.errors import StageError
from fine_tune_dag.core.retrieval.index import build_index
from fine_tune_dag.core.store.notes import note_passages, trainable_notes
from fine_tune_dag.resources.paths import ProjectPaths
from fine_tune_dag.resources.warehouse import WarehouseResource


@dg.asset(deps=[passages], group_name="retrieval", kinds={"python"}, code_version="retrieval-1")
@reports_peak_memory
def retrieval_index(
    context: dg.AssetExecutionContext, config: RetrievalConfig, paths: ProjectPaths, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """The notes that train now (as in dataset_splits), so evaluation retrieves from what the adapter learned;
    only notes whose content changed are tokenized or embedded again."""
    db = warehouse.get()
    note_ids, _, _ = trainable_notes(db, context.instance.get_dynamic_partitions(notes_partitions.name))
    with stage_failures():
        try:
            build = build_index(note_passages(db, note_ids), paths.layout.index, config.settings())
        except ValueError as error:  # no passages yet, or settings that cannot build an index
            raise StageError(str(error)) from error
    return dg.MaterializeResult(
        metadata=as_metadata(
            {
                "dagster/row_count": build.passages,
                "passages": build.passages,
                "notes": build.notes,
                "notes_reindexed": build.notes_reindexed,
                "notes_reused": build.notes_reused,
                "notes_removed": build.notes_removed,
                "method": build.method,
                "index": build.folder,
            }
        )
    )
