"""pair_labels: people's decisions on synthetic pairs, made on `fine-tune-dag annotate --pairs`.

The page writes them straight to the warehouse, outside any run, so the asset is external: `pair_labels_sensor`
records a materialization whenever the decisions change, and the dataset, which depends on it, is rebuilt by the
same automation that follows note changes.
"""

import dagster as dg

pair_labels = dg.AssetSpec(
    "pair_labels",
    group_name="dataset",
    kinds={"duckdb"},
    description="Accept, edit and reject decisions on Q&A pairs (fine-tune-dag annotate --pairs); the dataset "
    "applies the latest decision on each pair.",
)
